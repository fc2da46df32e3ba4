"""Recorder: one row per request (answered, refused, failed or abandoned) onto the writer queue.

- `text/event-stream`: `flow.response.stream` is a tap that returns each chunk unchanged as it
  arrives and feeds the incremental SSE parser, which keeps only usage and model.
- A body of known, small length (Content-Length up to `MAX_BUFFERED`): mitmproxy takes it
  whole and sends it on in one write (a JSON answer is not a stream); usage is read from a
  decoded copy.
- Any other body (no length, as Gemini's JSON-array stream, or a large one): streamed through
  a tap that keeps a copy up to `MAX_BODY_COPY` bytes, read for usage once complete.
- Timings from the request's arrival: `ttfb_ms` to the upstream's response headers,
  `latency_ms` to the last byte.
- A client that goes away mid-stream leaves a row with `client_aborted` and the usage seen.
- Just after the response hook's step (or at the error hook), what the finished request
  leaves (`row_source`: its values, bodies or stream copy, not the flow) goes to the writer's
  thread, which reads the body or stream copy and builds the row. One whose bodies hold more
  than `MAX_READ_LATER` bytes is built at once on the event loop, so a row waiting to be built
  holds at most that.
"""

import asyncio
import json
import logging
import re
import time
import zlib

from mitmproxy import http

from addons import headers, providers
from addons.providers import Usage, json_object
from addons.sse import SSEParser
from addons.store import Store
from metrion_cli.db import iso_from_epoch
from metrion_cli.tokens import hide_tokens

logger = logging.getLogger("metrion")

# Bodies announced this small are buffered by mitmproxy: cheaper than streaming them (one write
# to the client instead of headers and body apart), and no client waits on a stream.
MAX_BUFFERED = 256 * 1024
# A JSON body up to this size is copied whole and parsed at its end. Past it, only its first
# and last EDGE_BYTES are kept, and usage and model are picked out of those: a 20 MB
# embeddings answer costs 128 KiB, not 20 MB.
MAX_BODY_COPY = 4 * 1024 * 1024
EDGE_BYTES = 64 * 1024
# Where providers put what a row needs, in a body too large to parse whole.
_EDGE_KEYS = ("usage", "usageMetadata", "model", "modelVersion")


def incremental_decoder(encoding: str):
    """A function that decodes one more chunk of a compressed stream, or None for identity."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip", "deflate"):
        return zlib.decompressobj(47).decompress  # 47: gzip or zlib header, detected
    if encoding == "br":
        import brotli
        return brotli.Decompressor().process
    if encoding == "zstd":
        import zstandard
        return zstandard.ZstdDecompressor().decompressobj().decompress
    raise ValueError(f"unsupported content-encoding {encoding!r}")


# The response headers a row needs, per provider (with its request-id header), read in one pass.
_FACT_HEADERS = {
    name: frozenset({b"content-type", b"content-encoding", b"content-length"}
                    | ({module.REQUEST_ID_HEADER.encode()} if module.REQUEST_ID_HEADER else set()))
    for name, module in providers.PROVIDERS.items()}
# The request-id header's name as the facts above key it, per provider (None: it sends none).
_REQUEST_ID = {name: module.REQUEST_ID_HEADER.encode() if module.REQUEST_ID_HEADER else None
               for name, module in providers.PROVIDERS.items()}
# An event ends at a blank line: two line ends in a row. A CR directly followed by LF is one
# line end (CRLF), never two: without the lookahead a single CRLF would end an event.
_EVENT_END = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r|\n)")


# A finished request whose bodies (the request's, and the response's or its unread stream copy)
# are larger together is read on the event loop at once: rows waiting for the writer's thread
# hold at most this much each.
MAX_READ_LATER = 64 * 1024


# Chunks an SSE tap holds before reading them: enough for a whole short stream (read once, at
# its end), small enough that a long one is read as it goes.
MAX_HELD_FOR_READING = 64 * 1024


class SSETap:
    """The `flow.response.stream` callable for SSE: returns each chunk as it came, reads a copy.

    Passing a chunk on costs a list append: the copies are read in batches (at the stream's
    end, or every MAX_HELD_FOR_READING bytes), where whole events the reader says it does not
    need (most content deltas) are skipped unparsed, and it is the same to the reader whether
    it saw each chunk as it came or them all at once.

    With `hide_event` (the metrion_stream_usage opt-in) it passes whole events instead, holding
    back an unfinished one, and drops the events `hide_event` names.
    """

    __slots__ = ("reader", "parser", "decode", "read_bytes", "broken", "hide_event", "held",
                 "needs", "unread", "unread_bytes", "filtered_in")
    streamed = True

    def __init__(self, reader: providers.StreamReader, encoding: str, hide_event=None) -> None:
        self.reader = reader
        self.parser = SSEParser()
        self.read_bytes = 0  # passed on and read (or, hiding events, passed on)
        self.broken: str | None = None
        self.hide_event = hide_event if encoding in ("", "identity") else None
        self.held = b""
        self.filtered_in = 0  # bytes that reached _filter (hiding events), passed on or not
        self.unread: list[bytes] = []
        self.unread_bytes = 0
        self.decode = None
        if encoding:  # nearly always absent
            try:
                self.decode = incremental_decoder(encoding)
            except ValueError as e:
                self.broken = str(e)
        self.needs = getattr(reader, "needs", None) if self.decode is None and self.hide_event is None else None

    @property
    def bytes(self) -> int:
        """Bytes passed on to the client so far."""
        return self.read_bytes + self.unread_bytes

    @property
    def progress(self) -> int:
        """Moves whenever a chunk arrives: the upstream watchdog's sign of life. Hiding events,
        a chunk may pass nothing on (half an event, or a hidden one)."""
        return self.read_bytes + self.unread_bytes + self.filtered_in

    def stream_callable(self):
        """What `flow.response.stream` is set to: `pass_on` itself when no event is hidden, so
        each chunk costs one call that checks nothing."""
        return self if self.hide_event is not None else self.pass_on

    def __call__(self, chunk: bytes):
        if self.hide_event is not None:
            return self._filter(chunk)
        return self.pass_on(chunk)

    def pass_on(self, chunk: bytes) -> bytes:
        self.unread.append(chunk)
        self.unread_bytes += len(chunk)
        if self.unread_bytes > MAX_HELD_FOR_READING:
            self._read_unread()
        return chunk

    def _read_unread(self) -> None:
        data = b"".join(self.unread)
        self.read_bytes += self.unread_bytes
        self.unread, self.unread_bytes = [], 0
        if self.needs is None or self.broken is not None or not data:
            self._read(data)
            return
        try:
            self._read_needed(data)
        except Exception as e:  # a garbled stream must still reach the client unchanged
            self.broken = f"usage unreadable: {e!r}"[:300]

    def _read_needed(self, data: bytes) -> None:
        if not self.parser.idle():  # an event begun in an earlier batch: finish it first
            cut = _event_end(data, 0)
            if cut < 0:
                self._read(data)
                return
            self._read(data[:cut])
            data = data[cut:]
        whole_end = _last_event_end(data)
        whole, rest = data[:whole_end], data[whole_end:]
        if whole:
            self._read_wanted(whole, True)
        if rest:
            self._read(rest)  # an unfinished event: the parser holds it for the next batch

    def _read_wanted(self, whole: bytes, first: bool = False) -> None:
        """Reads the events of `whole` (whole events) that the reader `needs`, in order.

        Halves that need nothing are skipped whole, so the one usage event among a few hundred
        content deltas costs a few checks, not one per event. The first event is taken alone
        first: it often holds what the reader lacked (the model), after which the rest may all
        go unparsed."""
        if not self.needs(whole):
            return
        cut = _event_end(whole, 0)
        if cut < len(whole) and not first:
            middle = _event_end(whole, len(whole) // 2)
            if not 0 < middle < len(whole):
                # The middle lies in the last event (more than half the bytes): split that one
                # off, or a long run of small events before it would be peeled one by one.
                middle = _penultimate_event_end(whole)
            if 0 < middle < len(whole):
                cut = middle
        if not 0 < cut < len(whole):  # one event, or blank lines left over from a split
            self._read(whole)
            return
        if first:  # one event: no need to look for a split in it
            if self.needs(whole[:cut]):
                self._read(whole[:cut])
        else:
            self._read_wanted(whole[:cut])
        self._read_wanted(whole[cut:])

    def _read(self, data: bytes) -> bool:
        """Feeds the usage reader; True when an event to hide was among those read."""
        if self.broken is not None:
            return False
        hide = False
        try:
            for event in self.parser.feed(self.decode(data) if self.decode else data):
                self.reader.feed(event.event, event.data)
                hide = hide or (self.hide_event is not None and self.hide_event(event.data))
        except Exception as e:  # a garbled stream must still reach the client unchanged
            self.broken = f"usage unreadable: {e!r}"[:300]
        return hide

    def _filter(self, chunk: bytes) -> list[bytes]:
        self.filtered_in += len(chunk)
        data = self.held + chunk
        cuts = [m.end() for m in _EVENT_END.finditer(data)]
        if not chunk:
            cuts.append(len(data))  # the stream is over: whatever is left goes on
        self.held = data[cuts[-1]:] if cuts else data
        kept: list[bytes] = []
        start = 0
        for stop in cuts:
            raw, start = data[start:stop], stop
            if raw and not self._read(raw):
                kept.append(raw)
                self.read_bytes += len(raw)
        return kept

    def result(self, provider, path: str) -> tuple[str | None, Usage, str | None]:
        if self.unread:
            self._read_unread()
        usage = self.reader.usage()
        if self.broken:
            usage.note = self.broken
        return self.reader.model, usage, self.reader.error


def _event_end(data: bytes, start: int) -> int:
    """Where the first event ending at or after `start` ends (after its blank line), or -1."""
    if b"\r" not in data:
        at = data.find(b"\n\n", start)
        return at + 2 if at >= 0 else -1
    match = _EVENT_END.search(data, start)
    return match.end() if match else -1


def _last_event_end(data: bytes) -> int:
    """Where the last whole event in `data` ends (0 when there is none)."""
    if b"\r" not in data:
        at = data.rfind(b"\n\n")
        return at + 2 if at >= 0 else 0
    ends = [m.end() for m in _EVENT_END.finditer(data)]
    return ends[-1] if ends else 0


def _penultimate_event_end(whole: bytes) -> int:
    """Where the event before the last one in `whole` (whole events) ends, or -1."""
    if b"\r" not in whole:
        at = whole.rfind(b"\n\n", 0, _last_event_end(whole) - 2)
        return at + 2 if at >= 0 else -1
    ends = [m.end() for m in _EVENT_END.finditer(whole)]
    return ends[-2] if len(ends) > 1 else -1


class BodyTap:
    """The `flow.response.stream` callable for other bodies: passes chunks on, keeps a copy
    (whole up to MAX_BODY_COPY, else its first and last EDGE_BYTES)."""

    __slots__ = ("chunks", "head", "tail", "bytes", "encoding")
    streamed = False

    def __init__(self, encoding: str) -> None:
        self.chunks: list[bytes] | None = []
        self.head = self.tail = b""
        self.bytes = 0
        self.encoding = encoding

    def __call__(self, chunk: bytes) -> bytes:
        self.bytes += len(chunk)
        if self.chunks is not None:
            self.chunks.append(chunk)
            if self.bytes > MAX_BODY_COPY:
                whole = b"".join(self.chunks)
                self.head, self.tail, self.chunks = whole[:EDGE_BYTES], whole[-EDGE_BYTES:], None
        elif chunk:
            self.tail = (self.tail + chunk)[-EDGE_BYTES:]
        return chunk

    @property
    def progress(self) -> int:
        """Moves whenever a chunk arrives: the upstream watchdog's sign of life."""
        return self.bytes

    def result(self, provider, path: str) -> tuple[str | None, Usage, str | None]:
        if self.chunks is None:
            if self.encoding not in ("", "identity"):
                return None, Usage(note=f"not read: compressed body of {self.bytes} bytes"), None
            model, usage = provider.read_json(path, fields_at_the_edges(self.head, self.tail))
            return model, usage, None
        return read_body(provider, path, b"".join(self.chunks), self.encoding)


def read_body(provider, path: str, raw: bytes, encoding: str,
              errors: bool = True) -> tuple[str | None, Usage, str | None]:
    """Model, usage and error message of a whole (possibly compressed) JSON body (the error
    message only with `errors`: a success has none worth looking for)."""
    try:
        decode = incremental_decoder(encoding) if encoding else None
        body = providers.loads(decode(raw) if decode else raw)
    except (ValueError, zlib.error, RecursionError) as e:
        return None, Usage(note=f"not read: body is not JSON ({type(e).__name__})"), None
    model, usage = provider.read_json(path, body)
    return model, usage, upstream_error_message(body) if errors else None


def fields_at_the_edges(head: bytes, tail: bytes) -> dict:
    """The top-level usage and model of a JSON body known only by its first and last bytes."""
    found: dict = {}
    decoder = json.JSONDecoder()
    for edge in (tail, head):
        text = edge.decode("utf-8", "ignore")
        for key in _EDGE_KEYS:
            at = text.rfind(f'"{key}"')
            if key in found or at < 0:
                continue
            value_at = text.find(":", at + len(key) + 2) + 1
            while 0 < value_at < len(text) and text[value_at] in " \t\r\n":
                value_at += 1
            try:
                found[key], _ = decoder.raw_decode(text, value_at)
            except (ValueError, RecursionError):
                continue
    return found


def _buffered_as_sent(as_sent: dict[bytes, bytes] | None) -> bool:
    """True for the common answer with its names in lower case, each once (HTTP/2, and most
    HTTP/1 servers; `as_sent` is then its `lower_case_dict`): not SSE, of known length up to
    MAX_BUFFERED, so mitmproxy buffers it. False means only that the general path decides: the
    same question, asked of every field."""
    if as_sent is None:
        return False
    length = as_sent.get(b"content-length")
    return (length is not None and length.isdigit() and int(length) <= MAX_BUFFERED
            and not as_sent.get(b"content-type", b"").startswith(b"text/event-stream"))


class Recorder:
    def __init__(self, store: Store) -> None:
        self.store = store

    def done(self) -> None:
        # A body can be complete at the client before its response hook has run; a shutdown in
        # between must not lose that row. Unfinished ones are recorded as such.
        for flow in list(self.store.inflight.values()):
            meta = flow.metadata["metrion"]
            if not (flow.response and flow.response.timestamp_end):
                meta.setdefault("upstream_error", "metrion shut down before the request finished")
                meta.setdefault("error", meta["upstream_error"])
            self._record(flow)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        meta = flow.metadata.get("metrion")
        if not meta or not meta.get("provider") or flow.response is None:
            return
        fields = flow.response.data.headers.fields
        as_sent = headers.lower_case_dict(fields)
        if _buffered_as_sent(as_sent):
            return  # taken whole by mitmproxy; body and headers are read for the row later
        facts = meta["response_facts"] = headers.pick_fields(fields, _FACT_HEADERS[meta["provider"]], as_sent)
        encoding = facts.get(b"content-encoding", "")
        if facts.get(b"content-type", "").startswith("text/event-stream"):
            reader = providers.get(meta["provider"]).stream_reader(flow.request.path)
            tap: SSETap | BodyTap = SSETap(reader, encoding, meta.get("hide_usage_event"))
        elif facts.get(b"content-length", "x").isdigit() and int(facts[b"content-length"]) <= MAX_BUFFERED:
            return  # buffered: read for the row later, as above
        else:
            tap = BodyTap(encoding)
        meta["tap"] = tap
        flow.response.stream = tap.stream_callable() if isinstance(tap, SSETap) else tap

    def response(self, flow: http.HTTPFlow) -> None:
        # The row's values are taken after this hook's step, not in it: once the hook returns,
        # mitmproxy sends a buffered answer and notices a client that left meanwhile (it sets
        # flow.error and calls no error hook), and a later script's hook may still change the
        # flow: the row must see all that. So its values are taken just after the step, on the
        # loop, and the flow itself is not kept: mitmproxy frees it at once, as without Metrion
        # (+0.9% and +1.2% requests per CPU-second in paired rounds against handing the flow
        # whole to the writer's thread, inside bench/ab.py's +-2%). It stays in `inflight`
        # until then, so that a shutdown in between (done()) still records it.
        meta = flow.metadata.get("metrion")
        if meta is None or meta.get("recorded"):
            return
        asyncio.get_running_loop().call_soon(self._record, flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._record(flow)

    def _record(self, flow: http.HTTPFlow) -> None:
        self.store.inflight.pop(flow.id, None)
        meta = flow.metadata.get("metrion")
        if meta is None or meta.get("recorded"):
            return
        meta["recorded"] = True
        source = safe_row_source(flow, meta)
        if source[-1] <= MAX_READ_LATER:
            self.store.put_row_later(finish_row, source)
        else:
            self.store.put_row(finish_row(source))


def bytes_to_read(flow: http.HTTPFlow, meta: dict) -> int:
    """What a finished flow's row would read: its request body, and its response body or the
    unread part of its stream copy (as `row_source` counts it)."""
    request_body = flow.request.data.content
    size = len(request_body) if request_body else 0
    tap = meta.get("tap")
    if tap is not None:
        return size + (tap.unread_bytes if tap.streamed else tap.bytes)
    response = flow.response
    if response is not None and response.data.content is not None:
        size += len(response.data.content)
    return size


def safe_row_source(flow: http.HTTPFlow, meta: dict) -> tuple:
    """`row_source`, or on an error what is certain (no body or stream read), logged."""
    try:
        return row_source(flow, meta)
    except Exception as e:  # never lose the row: keep what is certain
        logger.error("metrion: could not record %s: %r", hide_tokens(flow.request.path.split("?")[0]), e)
        meta.setdefault("error", f"metrion could not read the response: {e!r}"[:300])
        return row_source(flow, meta, read=False)


def row_source(flow: http.HTTPFlow, meta: dict, read: bool = True) -> tuple:
    """What the request's row is built from, taken when it is over: the flow's values, not the
    flow (nothing here changes once it is over, and the flow's own objects are freed as usual).
    The last item is how many bytes it holds and building the row may read: the body or
    stream copy, and the request body (read for the model when the response names none)."""
    request, response, error = flow.request.data, flow.response, flow.error
    answer = None
    if response is not None:
        response = response.data
        answer = (response.status_code, response.timestamp_start, response.timestamp_end,
                  response.content, response.headers.fields)
    to_read = bytes_to_read(flow, meta) if read else len(request.content) if request.content else 0
    return (meta, request.timestamp_start, request.method, request.path, request.content, answer,
            (error.msg, flow.client_conn.timestamp_end is not None) if error else None,
            time.time(), read, to_read)


def finish_row(source: tuple) -> tuple:
    """The row of a `row_source`, never raising: a row whose response cannot be read keeps
    what is certain and says why."""
    try:
        return build_row(source)
    except Exception as e:  # never lose the row to a parsing bug
        path = hide_tokens(source[3].decode("utf-8", "surrogateescape").split("?")[0])
        logger.error("metrion: could not read the response of %s: %r", path, e)
        return build_row(source[:-2] + (False, 0), error=f"metrion could not read the response: {e!r}"[:300])


_NO_USAGE = (None,) * 8  # input_tokens .. usage_note


def build_row(source: tuple, error: str | None = None) -> tuple:
    """The request's row: its values in `metrion_cli.writer.REQUEST_COLUMNS` order, then the
    month Quota counted it in. A tuple, built once per request: this runs for every request.
    A source taken with `read=False` keeps to what is certain (no body or stream read)."""
    meta, arrived, method, path, request_content, answer, failed, now, read, _ = source
    path = path.decode("utf-8", "surrogateescape")  # as Request.path gives it, decoded once
    provider_name = meta.get("provider")
    status = meta.get("status")
    ttfb_ms = ended = response_content = None
    if answer is not None:
        status, answered, ended, response_content, response_fields = answer
        if answered:
            ttfb_ms = round((answered - arrived) * 1000, 3)
    model = usage = request_id = response_bytes = None
    streamed = client_aborted = 0
    if error is None:
        error = meta.get("error")
    if provider_name and read:
        provider = providers.get(provider_name)
        tap: SSETap | BodyTap | None = meta.get("tap")
        facts = {}
        if answer is not None:
            # From the responseheaders hook; a response Metrion made itself did not pass
            # there, and a compressed one may have been decoded since (by a mitmdump script):
            # read again.
            facts = meta.get("response_facts")
            if not facts or b"content-encoding" in facts:
                facts = headers.pick_fields(response_fields, _FACT_HEADERS[provider_name])
            request_id_header = _REQUEST_ID[provider_name]
            if request_id_header is not None:
                request_id = facts.get(request_id_header)
        upstream_error = None
        if tap is not None:
            streamed = int(tap.streamed)
            response_bytes = tap.bytes
            model, usage, upstream_error = tap.result(provider, path)
        elif response_content is not None and not meta.get("refused"):
            response_bytes = len(response_content)
            model, usage, upstream_error = read_body(
                provider, path, response_content, facts.get(b"content-encoding", ""),
                errors=status >= 400)
        if upstream_error and not error and (streamed or status >= 400):
            error = upstream_error
        if failed:
            message, client_gone = failed
            error = (meta.get("upstream_error") or message)[:500]
            client_aborted = int(client_gone or message.startswith("Client disconnected"))
        if model is None:
            model = provider.model_from_request(path, json_object(request_content or b""))
    if ended is None:
        ended = now
    return (
        iso_from_epoch(arrived),                          # ts
        meta.get("account_id"),
        meta.get("token_id"),
        provider_name,
        method.decode("utf-8", "surrogateescape").upper(),
        hide_tokens(path.split("?", 1)[0])[:500],         # endpoint (a token in it refused, not kept)
        hide_tokens(model) if isinstance(model, str) else model,  # a token as a model name: not kept
        status,
        streamed,
        0 if meta.get("refused") or not provider_name else 1,  # forwarded
        *(usage.values() if usage is not None else _NO_USAGE),  # input_tokens .. usage_note
        ttfb_ms,
        round((ended - arrived) * 1000, 3),               # latency_ms
        len(request_content) if request_content is not None else None,  # request_bytes
        response_bytes,
        meta.get("requester"),
        meta.get("mode"),
        meta.get("key_fingerprint"),
        request_id,                                       # upstream_request_id
        error,
        client_aborted,
        meta.get("month"),
    )


def upstream_error_message(body) -> str | None:
    """The message of a provider's error body, whatever its shape (providers.md)."""
    if isinstance(body, list) and body:
        body = body[0]
    if not isinstance(body, dict):
        return None
    err = body.get("error")
    if isinstance(err, dict):
        err = err.get("message")
    if err is None:
        err = body.get("message")
    return str(err)[:500] if err is not None else None
