"""UpstreamErrors: a provider that fails is answered in that provider's own shape.

- Connection refused, reset or closed before a response: 502 (`bad_gateway`).
- No byte from the upstream for `metrion_upstream_timeout` seconds (before the response
  headers or between two chunks of a body): the upstream connection is closed; before the
  headers the client gets a 504 (`timeout`), mid-stream its stream ends with an error.
- The client already has a response under way: nothing to replace, the stream just ends, as it
  would from the provider.

mitmproxy answers such failures with its own HTML page, which the HTTP/1 layer assembles with
`_http1.make_error_response` right after the `error` hook, in the same asyncio task. The hook
puts the provider-shaped response in a context variable of that task; the wrapped
`make_error_response` sends it instead, once. Every other error keeps mitmproxy's page.
"""

import asyncio
import contextvars
import time

from mitmproxy import ctx, exceptions, http
from mitmproxy.net.http import http1
from mitmproxy.proxy.layers.http import _http1

from addons import providers

_shaped: contextvars.ContextVar[bytes | None] = contextvars.ContextVar("metrion_error_response", default=None)
_mitmproxy_error_response = _http1.make_error_response


def _error_response(status_code: int, message: str = "") -> bytes:
    shaped = _shaped.get()
    if shaped is None:
        return _mitmproxy_error_response(status_code, message)
    _shaped.set(None)
    return shaped


def is_timeout(message: str) -> bool:
    return "timed out" in message.lower() or "timeout" in message.lower()


class UpstreamErrors:
    def __init__(self, store) -> None:
        self.store = store
        self._watchdog: asyncio.Task | None = None

    def load(self, loader) -> None:
        _http1.make_error_response = _error_response
        loader.add_option(
            "metrion_upstream_timeout", int, 30,
            "Seconds without a byte from the upstream (before its response, or between two "
            "chunks) after which Metrion gives up: 504 to the client, or the stream ends. 0: never.",
        )

    def configure(self, updated) -> None:
        if "metrion_upstream_timeout" in updated and ctx.options.metrion_upstream_timeout < 0:
            raise exceptions.OptionsError("metrion_upstream_timeout must be 0 (never) or more seconds")

    def running(self) -> None:
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    def done(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()

    async def _watch(self) -> None:
        while True:
            timeout = ctx.options.metrion_upstream_timeout
            await asyncio.sleep(min(1.0, timeout / 4) if timeout else 1.0)
            if not timeout:
                continue
            now = time.time()
            for flow in list(self.store.inflight.values()):
                meta = flow.metadata["metrion"]
                if meta.get("refused") or not meta.get("provider") or flow.request.timestamp_end is None:
                    continue
                # The last sign of life: the request sent, the answer's headers, its last chunk.
                response = flow.response
                last = max(flow.request.timestamp_end, response.timestamp_start or 0.0 if response else 0.0)
                tap = meta.get("tap")
                if tap is not None:
                    # A body's progress is its byte count moving between two passes: the taps
                    # do not read the clock for each chunk. A chunk is thus dated by the pass
                    # that sees it, and a stall noticed up to two passes after the timeout.
                    progress = tap.progress
                    seen = meta.get("progress_seen")
                    if seen is None or seen[0] != progress:
                        meta["progress_seen"] = seen = (progress, now)
                    last = max(last, seen[1])
                if now - last > timeout and not meta.get("timed_out"):
                    meta["timed_out"] = f"no bytes from the upstream for {timeout} s"
                    self._close_upstream(flow)

    @staticmethod
    def _close_upstream(flow: http.HTTPFlow) -> None:
        handler = ctx.master.addons.get("proxyserver").connections.get(flow.client_conn.id)
        if handler is not None and flow.server_conn in handler.transports:
            handler.close_connection(flow.server_conn)

    def error(self, flow: http.HTTPFlow) -> None:
        meta = flow.metadata.get("metrion")
        if not meta or not meta.get("provider") or flow.error is None:
            return
        if meta.get("timed_out"):
            meta["upstream_error"] = meta["timed_out"]
        if flow.response is not None or flow.client_conn.timestamp_end is not None:
            return  # mid-stream, or the client is gone: there is nothing to replace
        provider = providers.get(meta["provider"])
        timed_out = meta.get("timed_out") or (flow.error.msg if is_timeout(flow.error.msg) else None)
        kind = "timeout" if timed_out else "bad_gateway"
        why = f"did not answer in time ({timed_out})" if timed_out else f"could not be reached ({flow.error.msg})"
        status, headers, body = provider.error(kind, f"Metrion: the {provider.NAME} API {why}")
        response = http.Response.make(status, body, {**headers, "connection": "close"})
        meta["status"] = status
        _shaped.set(http1.assemble_response(response))
