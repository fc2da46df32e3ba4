"""Recorder: one row per request (answered, refused, failed or abandoned) onto the writer queue.

- JSON responses: model and usage read from a decoded copy of the body; the body itself is
  never touched.
- `text/event-stream` responses: `flow.response.stream` is set to a tap that returns every
  chunk unchanged and feeds a copy to the incremental SSE parser; nothing is buffered.
- Timings from the request's arrival: `ttfb_ms` to the upstream's response headers,
  `latency_ms` to the last byte.
- A client that goes away mid-stream leaves a row with `client_aborted` and the usage seen.
"""

import logging
import time
import zlib

from mitmproxy import http

from addons import providers
from addons.providers import Usage, json_object
from addons.sse import SSEParser
from addons.store import Store
from metrion_cli.db import isoformat
import datetime

logger = logging.getLogger("metrion")


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


class StreamTap:
    """The `flow.response.stream` callable: returns each chunk as it came, reads a copy."""

    __slots__ = ("reader", "parser", "decode", "bytes", "broken")

    def __init__(self, reader: providers.StreamReader, encoding: str) -> None:
        self.reader = reader
        self.parser = SSEParser()
        self.bytes = 0
        self.broken: str | None = None
        try:
            self.decode = incremental_decoder(encoding)
        except ValueError as e:
            self.decode, self.broken = None, str(e)

    def __call__(self, chunk: bytes) -> bytes:
        self.bytes += len(chunk)
        if chunk and self.broken is None:
            try:
                data = self.decode(chunk) if self.decode else chunk
                for event in self.parser.feed(data):
                    self.reader.feed(event.event, event.data)
            except Exception as e:  # a garbled stream must still reach the client unchanged
                self.broken = f"usage unreadable: {e!r}"[:300]
        return chunk


class Recorder:
    def __init__(self, store: Store) -> None:
        self.store = store

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        meta = flow.metadata.get("metrion")
        if not meta or not meta.get("provider") or flow.response is None:
            return
        if flow.response.headers.get("content-type", "").startswith("text/event-stream"):
            reader = providers.get(meta["provider"]).stream_reader(flow.request.path)
            tap = StreamTap(reader, flow.response.headers.get("content-encoding", ""))
            meta["tap"] = flow.response.stream = tap

    def response(self, flow: http.HTTPFlow) -> None:
        self._record(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._record(flow)

    def _record(self, flow: http.HTTPFlow) -> None:
        meta = flow.metadata.get("metrion")
        if meta is None or meta.get("recorded"):
            return
        meta["recorded"] = True
        try:
            row = build_row(flow, meta)
        except Exception as e:  # never lose the row to a parsing bug: keep what is certain
            logger.error("metrion: could not read the response of %s: %r", flow.request.path.split("?")[0], e)
            row = base_row(flow, meta)
            row["error"] = f"metrion could not read the response: {e!r}"[:300]
        self.store.put_row(row)


def base_row(flow: http.HTTPFlow, meta: dict) -> dict:
    request, response = flow.request, flow.response
    arrived = request.timestamp_start
    ended = (response.timestamp_end if response and response.timestamp_end else None) or time.time()
    return {
        "ts": isoformat(datetime.datetime.fromtimestamp(arrived, datetime.timezone.utc)),
        "account_id": meta.get("account_id"),
        "token_id": meta.get("token_id"),
        "provider": meta.get("provider"),
        "method": request.method,
        "endpoint": request.path.split("?", 1)[0][:500],
        "status": response.status_code if response else None,
        "streamed": 0,
        "forwarded": 0 if meta.get("refused") or not meta.get("provider") else 1,
        "ttfb_ms": round((response.timestamp_start - arrived) * 1000, 3) if response and response.timestamp_start else None,
        "latency_ms": round((ended - arrived) * 1000, 3),
        "request_bytes": len(request.raw_content) if request.raw_content is not None else None,
        "requester": meta.get("requester"),
        "mode": meta.get("mode"),
        "key_fingerprint": meta.get("key_fingerprint"),
        "error": meta.get("error"),
        "client_aborted": 0,
    }


def build_row(flow: http.HTTPFlow, meta: dict) -> dict:
    row = base_row(flow, meta)
    provider_name = meta.get("provider")
    if not provider_name:
        return row
    provider = providers.get(provider_name)
    response = flow.response
    model: str | None = None
    usage = Usage()
    tap: StreamTap | None = meta.get("tap")
    if response is not None and provider.REQUEST_ID_HEADER:
        row["upstream_request_id"] = response.headers.get(provider.REQUEST_ID_HEADER)
    if tap is not None:
        row["streamed"] = 1
        row["response_bytes"] = tap.bytes
        model, usage = tap.reader.model, tap.reader.usage()
        if tap.broken:
            usage.note = tap.broken
        if tap.reader.error and not row["error"]:
            row["error"] = f"stream error: {tap.reader.error}"
    elif response is not None and response.raw_content is not None and not meta.get("refused"):
        row["response_bytes"] = len(response.raw_content)
        body = json_object(response.get_content(strict=False) or b"")
        if body is not None:
            model, usage = provider.read_json(flow.request.path, body)
            if response.status_code >= 400 and not row["error"]:
                row["error"] = upstream_error_message(body)
    if flow.error:
        row["error"] = flow.error.msg[:500]
        row["client_aborted"] = int(flow.client_conn.timestamp_end is not None
                                    or flow.error.msg.startswith("Client disconnected"))
    if model is None:
        model = provider.model_from_request(flow.request.path, json_object(flow.request.raw_content or b""))
    row["model"] = model
    row.update(usage.as_row())
    return row


def upstream_error_message(body: dict) -> str | None:
    err = body.get("error")
    if isinstance(err, dict):
        err = err.get("message")
    if err is None:
        err = body.get("message")
    return str(err)[:500] if err is not None else None
