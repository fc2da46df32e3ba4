"""UpstreamErrors: a provider that cannot be reached is answered in that provider's own shape.

- Connection refused, reset or closed before a response: 502 (`bad_gateway`); a timeout: 504.
- The client already has a response under way (mid-stream): nothing to replace, the stream
  just ends, as it would from the provider.

mitmproxy answers such failures with its own HTML page, which the HTTP/1 layer assembles with
`_http1.make_error_response` right after the `error` hook, in the same asyncio task. The hook
puts the provider-shaped response in a context variable of that task; the wrapped
`make_error_response` sends it instead, once. Every other error keeps mitmproxy's page.
"""

import contextvars

from mitmproxy import http
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
    def load(self, loader) -> None:
        _http1.make_error_response = _error_response

    def error(self, flow: http.HTTPFlow) -> None:
        meta = flow.metadata.get("metrion")
        if not meta or not meta.get("provider") or flow.response is not None or flow.error is None:
            return
        if flow.client_conn.timestamp_end is not None:
            return  # the client is gone: there is nobody to answer
        provider = providers.get(meta["provider"])
        kind = "timeout" if is_timeout(flow.error.msg) else "bad_gateway"
        reason = "did not answer in time" if kind == "timeout" else "could not be reached"
        status, headers, body = provider.error(
            kind, f"Metrion: the {provider.NAME} API {reason} ({flow.error.msg})")
        response = http.Response.make(status, body, {**headers, "connection": "close"})
        meta["status"] = status
        _shaped.set(http1.assemble_response(response))
