"""Answering a request in its provider's own error shape, so the SDKs raise their usual errors."""

import logging
import traceback

from mitmproxy import http

from addons import providers
from metrion_cli.tokens import hide_tokens

logger = logging.getLogger("metrion")


def refuse(flow: http.HTTPFlow, kind: str, message: str, headers: dict[str, str] | None = None,
           final: bool = True) -> None:
    """Answer in the provider's error shape; `final` tells the SDKs not to retry."""
    meta = flow.metadata["metrion"]
    provider = providers.get(meta["provider"])
    status, base_headers, body = provider.error(kind, f"Metrion: {message}")
    response = http.Response.make(status, body, base_headers)
    if final:  # stops the SDKs' automatic retries, useless here (providers.md section 8)
        response.headers["x-should-retry"] = "false"
    for name, value in (headers or {}).items():
        response.headers[name] = value
    meta["error"] = message
    meta["refused"] = True
    flow.response = response


def fail_closed(flow: http.HTTPFlow, addon: str, exc: BaseException) -> None:
    """An addon's own bug must never let a request through: answer 500 instead."""
    refuse(flow, "internal", f"internal error in {addon}; the request was not forwarded")
    log_error(flow, addon, exc)


def log_error(flow: http.HTTPFlow, addon: str, exc: BaseException) -> None:
    """Logs the exception's type and where it was raised, never its message: a message may
    quote the credential being handled (a UnicodeEncodeError quotes the whole string)."""
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    logger.error("metrion: %s failed on %s %s: %s%s", addon, flow.request.method,
                 hide_tokens(flow.request.path.split("?")[0]), type(exc).__name__,
                 f" at {where.filename}:{where.lineno}" if where else "")
