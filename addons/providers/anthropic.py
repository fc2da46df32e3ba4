"""Anthropic: /v1/messages (JSON and SSE), /v1/messages/count_tokens (providers.md section 4)."""

import json

from . import CredentialSlot, Usage, as_int, dig, json_object

NAME = "anthropic"
DEFAULT_UPSTREAM = "https://api.anthropic.com"
# Today's SDK sends Bearer; older SDKs and curl users send x-api-key. The stored key goes back
# where the token was.
CREDENTIALS = (CredentialSlot("header", "x-api-key"), CredentialSlot("header", "authorization", "Bearer "))
REQUEST_ID_HEADER = "request-id"
# The one change Metrion makes to a request (configurable: metrion_anthropic_version).
FIXED_REQUEST_HEADERS = {"anthropic-version": "2023-06-01"}
REQUIRED_FIELDS = {
    "/v1/messages": ("model", "max_tokens", "messages"),
    "/v1/messages/count_tokens": ("model", "messages"),
}

_ERRORS = {
    "missing_credential": (401, "authentication_error"),
    "invalid_token": (401, "authentication_error"),
    "conflicting_credentials": (401, "authentication_error"),
    "no_stored_key": (401, "authentication_error"),
    "bad_request": (400, "invalid_request_error"),
    "not_found": (404, "not_found_error"),
    "monthly_cap": (429, "rate_limit_error"),
    "rate_limit": (429, "rate_limit_error"),
    "internal": (500, "api_error"),
    "bad_gateway": (502, "api_error"),
    "unavailable": (503, "overloaded_error"),
    "timeout": (504, "timeout_error"),
}


def error(kind: str, message: str) -> tuple[int, dict[str, str], bytes]:
    status, error_type = _ERRORS[kind]
    body = {"type": "error", "error": {"type": error_type, "message": message}}
    return status, {"content-type": "application/json"}, json.dumps(body).encode()


def model_from_request(path: str, body: dict | None) -> str | None:
    model = body.get("model") if body else None
    return model if isinstance(model, str) else None


def normalise(usage: dict) -> Usage:
    """Anthropic's input_tokens excludes cache reads and writes; Metrion's input includes them."""
    base = as_int(usage.get("input_tokens"))
    cache_read = as_int(usage.get("cache_read_input_tokens"))
    cache_write = as_int(usage.get("cache_creation_input_tokens"))
    output = as_int(usage.get("output_tokens"))
    full_input = None if base is None else base + (cache_read or 0) + (cache_write or 0)
    return Usage(
        input_tokens=full_input,
        output_tokens=output,
        cached_tokens=cache_read,
        cache_write_tokens=cache_write,
        reasoning_tokens=as_int(dig(usage, "output_tokens_details", "thinking_tokens")),
        total_tokens=None if full_input is None or output is None else full_input + output,
        raw=usage,
    )


def read_json(path: str, body) -> tuple[str | None, Usage]:
    if not isinstance(body, dict):
        return None, Usage(note="not reported: the response is not a JSON object")
    model = body.get("model") if isinstance(body.get("model"), str) else None
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return model, Usage(note="not reported: the response had no usage object")
    return model, normalise(usage)


class StreamReader:
    """message_start holds input and cache counts; each message_delta carries the cumulative
    output count and may repeat the others: its non-null values win (as in the SDK)."""

    def __init__(self) -> None:
        self.model: str | None = None
        self.error: str | None = None
        self._usage: dict | None = None

    def feed(self, event: str | None, data: bytes) -> None:
        if event not in ("message_start", "message_delta", "error"):
            return
        obj = json_object(data)
        if obj is None:
            return
        if event == "error":
            message = dig(obj, "error", "message")
            self.error = str(message)[:500] if message else "stream error"
            return
        usage = dig(obj, "message", "usage") if event == "message_start" else obj.get("usage")
        if event == "message_start" and isinstance(dig(obj, "message", "model"), str):
            self.model = obj["message"]["model"]
        if isinstance(usage, dict):
            merged = dict(self._usage or {})
            merged.update({k: v for k, v in usage.items() if v is not None})
            self._usage = merged

    def needs(self, events: bytes) -> bool:
        """Only these three events are read; content_block_* events, most of a stream, are not."""
        return b"message_start" in events or b"message_delta" in events or b"error" in events

    def usage(self) -> Usage:
        if self._usage is None:
            return Usage(note="not reported: the stream ended before message_start")
        return normalise(self._usage)


def stream_reader(path: str) -> StreamReader:
    return StreamReader()
