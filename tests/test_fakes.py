"""The fake provider upstreams (metrion_cli/fakes.py), driven by the official openai SDK."""

import asyncio
import base64
import gzip
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

try:
    import httpx
except ImportError:  # the SDKs in this environment use the httpx2 fork
    import httpx2 as httpx

from metrion_cli.fakes import Behaviour, FakeUpstream, run_fakes

KEY = "sk-test-abcd1234"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello to the fake"}]
# words + 3 per message, as the fake counts prompt tokens
PROMPT_TOKENS = (2 + 3) + (5 + 3)
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def fake():
    with FakeUpstream("openai") as f:
        thread = f._thread
        assert thread is not None and thread.is_alive()
        yield f
    assert not thread.is_alive()


@pytest.fixture
def client(fake):
    with openai.OpenAI(api_key=KEY, base_url=fake.url + "/v1", max_retries=0) as c:
        yield c


def header(sent, name):
    return next((v for n, v in sent.headers if n == name), None)


# ---- chat completions ----


def test_chat_non_stream(fake, client):
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from the"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "gpt-4o-mini-2024-07-18"
    usage = completion.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (PROMPT_TOKENS, 3, PROMPT_TOKENS + 3)
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details.reasoning_tokens == 0

    received, sent = fake.received[-1], fake.sent[-1]
    assert received.method == "POST" and received.path == "/v1/chat/completions"
    assert received.header("Authorization") == f"Bearer {KEY}"
    assert received.body == raw.http_response.request.content
    assert sent.status == 200 and sent.body == raw.http_response.content
    assert sent.usage == json.loads(sent.body)["usage"] == usage.model_dump(exclude_none=True)
    assert sent.model == "gpt-4o-mini-2024-07-18"
    assert sent.request_id.startswith("req_") and completion._request_id == sent.request_id
    assert len(sent.chunk_times) == 1
    assert raw.headers["openai-version"] == "2020-10-01"
    assert int(raw.headers["openai-processing-ms"]) >= 1
    assert raw.headers["content-length"] == str(len(sent.body))
    assert raw.headers["content-type"] == "application/json"
    # providers.md key order
    assert list(json.loads(sent.body)) == [
        "id", "object", "created", "model", "choices", "usage", "service_tier", "system_fingerprint"]


def test_request_ids_are_unique_and_model_names_pass_through(fake, client):
    a = client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    b = client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    assert a.model == "gpt-4.1"
    assert a._request_id != b._request_id and a.id != b.id


def test_chat_stream_without_usage(fake, client):
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from the"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)

    sent = fake.sent[-1]
    assert sent.usage is None
    assert isinstance(sent.body, bytes) and sent.body.endswith(b"data: [DONE]\n\n")
    assert b'"usage":null' in sent.body and b'"prompt_tokens"' not in sent.body
    events = sent.body.split(b"\n\n")[:-1]
    assert len(events) == len(sent.chunk_times) == 1 + 3 + 1 + 1  # role, words, finish, [DONE]
    assert header(sent, "content-type").startswith("text/event-stream")
    assert header(sent, "transfer-encoding") == "chunked" and header(sent, "content-length") is None


def test_chat_stream_with_include_usage(fake, client):
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from the"
    last = chunks[-1]
    assert last.choices == [] and last.usage.prompt_tokens == PROMPT_TOKENS
    assert last.usage.completion_tokens == 3 and last.usage.total_tokens == PROMPT_TOKENS + 3
    assert all(c.usage is None for c in chunks[:-1])

    sent = fake.sent[-1]
    assert b"data: [DONE]" in sent.body
    assert sent.usage == last.usage.model_dump(exclude_none=True)
    events = [e for e in sent.body.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    assert json.loads(events[-2][len(b"data: "):])["choices"] == []


def test_reasoning_model_reports_reasoning_tokens(fake, client):
    completion = client.chat.completions.create(model="o3-mini", messages=MESSAGES)
    reasoning = completion.usage.completion_tokens_details.reasoning_tokens
    assert reasoning > 0
    assert completion.usage.completion_tokens == 3 + reasoning
    assert completion.model == "o3-mini"


def test_header_overrides(fake, client):
    started = time.monotonic()
    completion = client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES,
        extra_headers={"x-fake-chunks": "20", "x-fake-first-byte-delay-ms": "100"})
    assert time.monotonic() - started >= 0.1
    assert len(completion.choices[0].message.content.split()) == 20
    assert completion.usage.completion_tokens == 20
    # the next request without headers is normal again
    assert client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).usage.completion_tokens == 3


# ---- responses ----


def test_responses_non_stream(fake, client):
    response = client.responses.create(model="gpt-4.1", input="Say hello", instructions="Be brief.")
    assert response.output_text == "Hello from the"
    assert response.status == "completed"
    assert response.usage.input_tokens == (2 + 3) + (2 + 3)
    assert response.usage.output_tokens == 3 and response.usage.total_tokens == 13
    assert response.usage.input_tokens_details.cached_tokens == 0
    assert response.usage.output_tokens_details.reasoning_tokens == 0
    assert fake.sent[-1].usage == response.usage.model_dump(exclude_none=True)


def test_responses_stream(fake, client):
    events = list(client.responses.create(model="o3-mini", input="Say hello", stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Hello from the"
    usage = events[-1].response.usage
    assert usage.output_tokens_details.reasoning_tokens > 0
    assert usage.output_tokens == 3 + usage.output_tokens_details.reasoning_tokens

    sent = fake.sent[-1]
    assert sent.usage == usage.model_dump(exclude_none=True)
    assert b"event: response.completed\ndata: " in sent.body and b"[DONE]" not in sent.body
    assert len(sent.chunk_times) == len(events)


def test_responses_stream_helper_and_query_string(fake, client):
    with client.responses.stream(model="gpt-4.1", input="hello again") as stream:
        final = stream.get_final_response()
    assert final.output_text == "Hello from the" and final.usage.output_tokens == 3

    r = httpx.post(fake.url + "/v1/responses?beta=true", json={"model": "gpt-4.1", "input": "hi"},
                   headers={"authorization": f"Bearer {KEY}"})
    assert r.status_code == 200 and r.json()["usage"]["input_tokens"] == 4
    assert fake.received[-1].path == "/v1/responses?beta=true"


# ---- embeddings and models ----


def test_embeddings_base64_default(fake, client):
    result = client.embeddings.create(model="text-embedding-3-small", input=["a", "b c"])
    assert [len(d.embedding) for d in result.data] == [8, 8]
    assert all(isinstance(x, float) for x in result.data[0].embedding)
    assert result.data[0].embedding != result.data[1].embedding
    assert result.usage.prompt_tokens == result.usage.total_tokens == 3

    assert json.loads(fake.received[-1].body)["encoding_format"] == "base64"
    wire = json.loads(fake.sent[-1].body)["data"][0]["embedding"]
    assert isinstance(wire, str)
    assert list(struct.unpack("<8f", base64.b64decode(wire))) == pytest.approx(result.data[0].embedding)
    assert fake.sent[-1].usage == {"prompt_tokens": 3, "total_tokens": 3}


def test_embeddings_float_format_is_deterministic(fake, client):
    a = client.embeddings.create(model="text-embedding-3-small", input="same text", encoding_format="float")
    b = client.embeddings.create(model="text-embedding-3-small", input="same text", dimensions=4)
    assert isinstance(json.loads(fake.sent[-2].body)["data"][0]["embedding"], list)
    assert len(a.data[0].embedding) == 8 and len(b.data[0].embedding) == 4
    c = client.embeddings.create(model="text-embedding-3-small", input="same text", encoding_format="float")
    assert a.data[0].embedding == c.data[0].embedding


def test_models(fake, client):
    ids = [m.id for m in client.models.list()]
    assert "gpt-4o-mini" in ids
    assert client.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


# ---- errors ----


def test_bad_key_is_masked(fake):
    bad = "bad-key-0123456789abcdef"
    with openai.OpenAI(api_key=bad, base_url=fake.url + "/v1", max_retries=0) as c:
        with pytest.raises(openai.AuthenticationError) as info:
            c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert bad not in str(info.value) and bad not in fake.sent[-1].body.decode()
    assert "sk-...cdef" in str(info.value)
    assert info.value.code == "invalid_api_key"
    assert info.value.request_id == fake.sent[-1].request_id


def test_missing_key_and_bad_requests(fake):
    r = httpx.post(fake.url + "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": []})
    assert r.status_code == 401 and r.json()["error"]["message"].startswith("You didn't provide an API key")
    assert r.headers["x-request-id"].startswith("req_")
    auth = {"authorization": f"Bearer {KEY}"}
    r = httpx.post(fake.url + "/v1/chat/completions", json={"model": "gpt-4o-mini"}, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = httpx.post(fake.url + "/v1/chat/completions", content=b"{not json", headers=auth)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.get(fake.url + "/v1/unknown?x=1", headers=auth)
    assert r.status_code == 404
    assert r.json() == {"error": {"message": "Invalid URL (GET /v1/unknown)", "type": "invalid_request_error",
                                  "param": None, "code": None}}


def test_x_fake_status_429(fake, client):
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, extra_headers={"x-fake-status": "429"})
    assert info.value.code == "rate_limit_exceeded"
    assert info.value.response.headers["retry-after"] == "1"
    assert fake.sent[-1].status == 429 and fake.sent[-1].usage is None


@pytest.mark.parametrize("status, exc", [
    (400, openai.BadRequestError), (401, openai.AuthenticationError),
    (500, openai.InternalServerError), (503, openai.InternalServerError),
])
def test_behaviour_status(fake, client, status, exc):
    fake.behaviour = Behaviour(status=status)
    with pytest.raises(exc) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    assert info.value.status_code == status
    body = json.loads(fake.sent[-1].body)
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert KEY not in fake.sent[-1].body.decode()


# ---- transport behaviour ----


def test_chunk_delay_spaces_chunks(fake, client):
    fake.behaviour = Behaviour(chunk_delay=0.05, chunks=2)
    assert len(list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))) == 4
    times = fake.sent[-1].chunk_times
    assert len(times) == 5
    assert all(b - a >= 0.045 for a, b in zip(times, times[1:]))


def test_reset_after_chunks_breaks_the_stream(fake, client):
    fake.behaviour = Behaviour(reset_after_chunks=2)
    got = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}):
            got.append(chunk)
    assert len(got) == 2
    sent = fake.sent[-1]
    assert len(sent.chunk_times) == 2 and sent.usage is None and b"[DONE]" not in sent.body
    # the server goes on serving
    fake.behaviour = Behaviour()
    assert client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices


def test_stall_after_chunks_times_out(fake):
    fake.behaviour = Behaviour(stall_after_chunks=1)
    with openai.OpenAI(api_key=KEY, base_url=fake.url + "/v1", max_retries=0, timeout=0.3) as c:
        stream = c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        with pytest.raises(openai.APITimeoutError):
            list(stream)
    assert len(fake.sent[-1].chunk_times) == 1


def test_gzip_json(fake, client):
    fake.behaviour = Behaviour(gzip=True)
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert completion.choices[0].message.content == "Hello from the"
    sent = fake.sent[-1]
    assert sent.body[:2] == b"\x1f\x8b" and header(sent, "content-encoding") == "gzip"
    assert header(sent, "content-length") == str(len(sent.body))
    assert json.loads(gzip.decompress(sent.body))["usage"] == sent.usage


def test_gzip_stream(fake, client):
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True},
        extra_headers={"x-fake-gzip": "1"})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from the"
    assert chunks[-1].usage.total_tokens == PROMPT_TOKENS + 3
    sent = fake.sent[-1]
    assert header(sent, "content-encoding") == "gzip"
    assert gzip.decompress(sent.body).endswith(b"data: [DONE]\n\n")


def test_keep_alive_and_pipelining(fake):
    with httpx.Client(headers={"authorization": f"Bearer {KEY}"}) as http:
        for _ in range(5):
            assert http.get(fake.url + "/v1/models").status_code == 200
    assert fake.connections == 1

    request = f"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", fake.port), timeout=5) as s:
        s.sendall(request + request[:-2] + b"Connection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK\r\n") == 2 and b"connection: close\r\n" in data


def test_http10_stream_is_close_delimited(fake):
    body = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", fake.port), timeout=5) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.0\r\nAuthorization: Bearer " + KEY.encode()
                  + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head and rest == fake.sent[-1].body


def test_record_false_keeps_nothing():
    with FakeUpstream(record=False) as f:
        r = httpx.get(f.url + "/v1/models", headers={"authorization": f"Bearer {KEY}"})
        assert r.status_code == 200
        assert f.received == [] and f.sent == []


def test_unknown_provider():
    with pytest.raises(ValueError):
        FakeUpstream("nope")


# ---- in a running loop, and as a process ----


def test_run_fakes_and_serve_in_a_running_loop():
    async def main():
        [f] = await run_fakes({"openai": 0})
        async with httpx.AsyncClient(headers={"authorization": f"Bearer {KEY}"}) as http:
            r = await http.post(f.url + "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": MESSAGES})
            assert r.json()["usage"]["prompt_tokens"] == PROMPT_TOKENS
            assert f.sent == []  # run_fakes does not record by default
            await f.aclose()

            g = FakeUpstream(record=True)
            await g.astart()
            task = asyncio.create_task(g.serve())
            r = await http.get(g.url + "/v1/models")
            assert r.status_code == 200 and len(g.received) == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", g.port)

    asyncio.run(main())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_runs_as_a_process():
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-m", "metrion_cli.fakes", f"openai={port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        assert ready, "the fake did not print its line"
        assert proc.stdout.readline().strip() == f"fake openai listening on http://127.0.0.1:{port}"
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                       json={"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True},
                       headers={"authorization": f"Bearer {KEY}", "x-fake-chunks": "5"})
        assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
        assert r.text.count("data: ") == 1 + 5 + 1 + 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
