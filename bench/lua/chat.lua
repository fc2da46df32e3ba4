-- POST /v1/chat/completions for wrk.
-- Arguments (after `--`): AUTH_VALUE MODE
--   AUTH_VALUE  the whole Authorization header value, e.g. "Bearer mtr_..."
--   MODE        json   non-streaming chat completion
--               stream "stream": true with x-fake-chunks: 20 (an SSE stream of 20 content chunks)
--               mix    seven json requests, then one stream, and again (the memory soak)
-- done() prints one JSON line starting with BENCH_RESULT for bench/run.py to parse.

local json_body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in one short sentence."}]}'
local stream_body = '{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Say hello in one short sentence."}]}'

local requests_ = {}
local n = 0

function init(args)
   local auth = args[1] or "Bearer sk-bench-key"
   local mode = args[2] or "json"
   local base = {
      ["Authorization"] = auth,
      ["Content-Type"] = "application/json",
      ["Accept"] = "application/json",
   }
   local stream_headers = {}
   for k, v in pairs(base) do stream_headers[k] = v end
   stream_headers["Accept"] = "text/event-stream"
   stream_headers["x-fake-chunks"] = "20"
   local path = wrk.path
   if path == "" or path == "/" then path = "" end
   path = path:gsub("/$", "") .. "/v1/chat/completions"
   local json_req = wrk.format("POST", path, base, json_body)
   local stream_req = wrk.format("POST", path, stream_headers, stream_body)
   if mode == "json" then
      requests_ = {json_req}
   elseif mode == "stream" then
      requests_ = {stream_req}
   elseif mode == "mix" then
      requests_ = {json_req, json_req, json_req, json_req, json_req, json_req, json_req, stream_req}
   else
      error("unknown mode " .. mode)
   end
end

function request()
   n = n + 1
   return requests_[(n - 1) % #requests_ + 1]
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"rps":%.3f,' ..
      '"p50_ms":%.4f,"p90_ms":%.4f,"p99_ms":%.4f,"mean_ms":%.4f,"max_ms":%.4f,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
      summary.requests, summary.duration, summary.bytes,
      summary.requests / (summary.duration / 1e6),
      latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
      latency.mean / 1000, latency.max / 1000,
      e.connect, e.read, e.write, e.status, e.timeout))
end
