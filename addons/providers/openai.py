"""OpenAI: /v1/chat/completions, /v1/responses, /v1/embeddings (providers.md section 3)."""

import json
import re

from . import CredentialSlot, Usage, as_int, json_object

NAME = "openai"
DEFAULT_UPSTREAM = "https://api.openai.com"
CREDENTIALS = (CredentialSlot("header", "authorization", "Bearer "),)
REQUEST_ID_HEADER = "x-request-id"
FIXED_REQUEST_HEADERS: dict[str, str] = {}
# What every request of an endpoint needs (path suffix -> top-level fields); else 400, unsent.
REQUIRED_FIELDS = {
    "/chat/completions": ("model", "messages"),
    "/responses": ("model",),
    "/embeddings": ("model", "input"),
}

NO_USAGE_IN_STREAM = (
    "not reported: a chat stream carries usage only when the client sets "
    "stream_options.include_usage"
)

# kind -> (status, error.type, error.code)
_ERRORS = {
    "missing_credential": (401, "invalid_request_error", None),
    "invalid_token": (401, "invalid_request_error", "invalid_api_key"),
    "conflicting_credentials": (401, "invalid_request_error", "invalid_api_key"),
    "no_stored_key": (401, "invalid_request_error", "invalid_api_key"),
    "bad_request": (400, "invalid_request_error", None),
    "not_found": (404, "invalid_request_error", "unknown_url"),
    "monthly_cap": (429, "insufficient_quota", "insufficient_quota"),
    "rate_limit": (429, "requests", "rate_limit_exceeded"),
    "internal": (500, "server_error", None),
    "bad_gateway": (502, "server_error", None),
    "unavailable": (503, "server_error", None),
    "timeout": (504, "server_error", None),
}


def error(kind: str, message: str) -> tuple[int, dict[str, str], bytes]:
    status, error_type, code = _ERRORS[kind]
    body = {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    return status, {"content-type": "application/json"}, json.dumps(body).encode()


def model_from_request(path: str, body: dict | None) -> str | None:
    model = body.get("model") if body else None
    return model if isinstance(model, str) else None


_RESPONSES_KEYS = ("input_tokens", "output_tokens", "input_tokens_details", "output_tokens_details")
_CHAT_KEYS = ("prompt_tokens", "completion_tokens", "prompt_tokens_details", "completion_tokens_details")
_NO_DETAILS: dict = {}


def normalise(usage: dict) -> Usage:
    """Chat and embeddings report prompt/completion tokens; Responses reports input/output."""
    input_key, output_key, input_details, output_details = (
        _RESPONSES_KEYS if "input_tokens" in usage or "output_tokens" in usage else _CHAT_KEYS)
    details_in = usage.get(input_details)
    if type(details_in) is not dict:
        details_in = _NO_DETAILS
    details_out = usage.get(output_details)
    if type(details_out) is not dict:
        details_out = _NO_DETAILS
    return Usage(
        as_int(usage.get(input_key)),
        as_int(usage.get(output_key)),
        as_int(details_in.get("cached_tokens")),
        as_int(details_in.get("cache_write_tokens")),
        as_int(details_out.get("reasoning_tokens")),
        as_int(usage.get("total_tokens")),
        usage,
    )


def read_json(path: str, body) -> tuple[str | None, Usage]:
    if not isinstance(body, dict):
        return None, Usage(note="not reported: the response is not a JSON object")
    usage = body.get("usage")
    model = body.get("model") if isinstance(body.get("model"), str) else None
    if not isinstance(usage, dict):
        return model, Usage(note="not reported: the response had no usage object")
    return model, normalise(usage)


_USAGE_OBJECT = re.compile(rb'"usage"[ \t\r\n]*:[ \t\r\n]*\{')


def _mentions_usage(data: bytes) -> bool:
    """True when `"usage"` is followed by an object: skips json.loads for the `"usage":null`
    chunks. A few scans of the whole batch, however many of those it holds; the pattern
    (slower: it stops at every quote) only for spacing other than OpenAI's compact JSON."""
    mentions = data.count(b'"usage"')
    if not mentions:  # most chat streams: the client did not ask for usage
        return False
    if b'"usage":{' in data:
        return True
    if mentions == data.count(b'"usage":null'):
        return False
    return _USAGE_OBJECT.search(data) is not None


def _may_mention_usage(raw: bytes) -> bool:
    """`_mentions_usage` for raw events, not yet parsed: True unless every `"usage"` is a
    compact `"usage":null`. An event's data may run over several `data:` lines, split wherever
    JSON allows whitespace, as between `"usage":` and its `{`, where the pattern would miss it."""
    mentions = raw.count(b'"usage"')
    return mentions > 0 and mentions != raw.count(b'"usage":null')


# Responses API events that carry the whole response object (with model and usage).
_RESPONSE_EVENTS = frozenset(
    {"response.created", "response.in_progress", "response.completed", "response.incomplete",
     "response.failed"})


def ask_for_stream_usage(path: str, body: bytes) -> bytes | None:
    """With `metrion_stream_usage` on: a chat stream request without include_usage, with it.

    The option is added as the first key, so every other byte of the body stays as sent.
    """
    if not path.split("?", 1)[0].endswith("/chat/completions"):
        return None
    obj = json_object(body)
    if obj is None or obj.get("stream") is not True:
        return None
    options = obj.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return None
    if options is None:
        at = body.index(b"{") + 1
        return body[:at] + b'"stream_options":{"include_usage":true},' + body[at:]
    obj["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return json.dumps(obj).encode()


def is_usage_only_event(data: bytes) -> bool:
    """The extra chunk include_usage adds: `choices: []` and the usage, just before [DONE]."""
    if not _mentions_usage(data):
        return False
    obj = json_object(data)
    return obj is not None and obj.get("choices") == [] and isinstance(obj.get("usage"), dict)


class StreamReader:
    """Chat streams: the last non-null `usage` (the `choices: []` chunk before [DONE]).
    Responses streams: `response.usage` of response.completed / incomplete / failed."""

    normalise = staticmethod(normalise)

    def __init__(self) -> None:
        self.model: str | None = None
        self.error: str | None = None
        self._usage: dict | None = None

    def feed(self, event: str | None, data: bytes) -> None:
        if event is not None:
            if event not in _RESPONSE_EVENTS and event != "error":
                return
            obj = json_object(data)
            if obj is None:
                return
            response = obj.get("response") if event != "error" else None
            if isinstance(response, dict):
                self._take(response)
            self._take_error(obj)
            return
        if self.model is not None and not _mentions_usage(data) and b'"error"' not in data:
            return
        obj = json_object(data)  # None for [DONE] and anything that is not an object
        if obj is not None:
            self._take(obj)
            self._take_error(obj)

    def needs(self, events: bytes) -> bool:
        """Could these whole events change what was read? Most chunks of a stream are content
        deltas, which carry neither model (once known), a usage object nor an error: they go
        unparsed. Inside a JSON string a quote is escaped, so `"usage"` there cannot match."""
        return self.model is None or _may_mention_usage(events) or b'"error"' in events

    def _take(self, obj: dict) -> None:
        if self.model is None and isinstance(obj.get("model"), str):
            self.model = obj["model"]
        if isinstance(obj.get("usage"), dict):
            self._usage = obj["usage"]

    def _take_error(self, obj: dict) -> None:
        err = obj.get("error")
        if isinstance(err, dict) and err.get("message"):
            self.error = str(err["message"])[:500]

    def usage(self) -> Usage:
        if self._usage is None:
            return Usage(note=NO_USAGE_IN_STREAM)
        return self.normalise(self._usage)


def stream_reader(path: str) -> StreamReader:
    return StreamReader()
