"""Provider facts as data: one module per provider, registered here by name.

A provider module has no mitmproxy import. It says where its SDK puts the credential, how its
errors look, and where usage sits in a JSON body or an SSE stream. The addons only ever call
what the `Provider` protocol lists, so a new provider is one module plus one line below.
"""

import json
from dataclasses import dataclass
from types import ModuleType
from typing import Any, NamedTuple, Protocol

import orjson


def loads(data: bytes | str) -> Any:
    """JSON from bytes: orjson (several times faster than the stdlib on the small bodies of
    every request), and the stdlib for what orjson refuses but Python's json accepts (integers
    past 64 bits, lone surrogate escapes, UTF-16 bodies), so nothing the stdlib would read is
    called invalid. Raises ValueError (or RecursionError) for what is not JSON."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def dumps(value: Any) -> str:
    """Compact JSON text; the stdlib for what orjson cannot encode (integers past 64 bits)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value, separators=(",", ":"))


class CredentialSlot(NamedTuple):
    """Where a client may put its key: a header (with an optional scheme) or a query parameter."""

    location: str  # "header" | "query"
    name: str      # lower-case header name, or query parameter name
    scheme: str = ""  # e.g. "Bearer " for Authorization

    @property
    def header(self) -> bytes:
        return _HEADER_BYTES.get(self.name) or self.name.encode()


# Credential header names as bytes, made once: they are looked up on every request.
_HEADER_BYTES = {name: name.encode() for name in ("authorization", "x-api-key", "x-goog-api-key")}


@dataclass(slots=True)
class Usage:
    """Token counts normalised to one meaning per column (see the `requests` table)."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None
    total_tokens: int | None = None
    raw: dict | None = None   # the provider's own usage object
    note: str | None = None   # why counts are missing, when they are

    def values(self) -> tuple:
        """The `requests` columns input_tokens .. usage_note, in the table's order."""
        return (self.input_tokens, self.output_tokens, self.cached_tokens, self.cache_write_tokens,
                self.reasoning_tokens, self.total_tokens,
                dumps(self.raw) if self.raw is not None else None, self.note)


class StreamReader(Protocol):
    """Reads usage and model from one response's SSE events, as they pass."""

    model: str | None

    def feed(self, event: str | None, data: bytes) -> None: ...

    def usage(self) -> Usage: ...

    # Optional: `needs(events: bytes) -> bool`, False when whole raw events cannot change what
    # the reader read (the tap then skips parsing them). Without it every event is parsed.


class Provider(Protocol):
    NAME: str
    DEFAULT_UPSTREAM: str
    CREDENTIALS: tuple[CredentialSlot, ...]
    REQUEST_ID_HEADER: str | None
    FIXED_REQUEST_HEADERS: dict[str, str]
    REQUIRED_FIELDS: dict[str, tuple[str, ...]]

    def error(self, kind: str, message: str) -> tuple[int, dict[str, str], bytes]: ...

    def model_from_request(self, path: str, body: dict | None) -> str | None: ...

    def read_json(self, path: str, body: Any) -> tuple[str | None, Usage]: ...

    def stream_reader(self, path: str) -> StreamReader: ...


# What each kind of refusal Metrion makes means, by default; providers may map differently.
ERROR_STATUS = {
    "missing_credential": 401,
    "invalid_token": 401,
    "conflicting_credentials": 401,
    "no_stored_key": 401,
    "bad_request": 400,
    "not_found": 404,
    "monthly_cap": 429,
    "rate_limit": 429,
    "internal": 500,
    "bad_gateway": 502,
    "unavailable": 503,
    "timeout": 504,
}


def as_int(value: Any) -> int | None:
    # `type() is`: JSON gives exact ints, and True (an int subclass) is not a count.
    return value if type(value) is int else None


def dig(obj: Any, *keys: str) -> Any:
    for key in keys:
        if type(obj) is not dict:
            return None
        obj = obj.get(key)
    return obj


# Bodies above this are not parsed on the event loop: only their first byte and the required
# keys' names are looked for.
MAX_PARSED_BODY = 2 * 1024 * 1024


_fields_by_route: dict[tuple[int, str], tuple[dict, tuple[str, ...] | None]] = {}


def _required_fields(required: dict[str, tuple[str, ...]], route: str) -> tuple[str, ...] | None:
    """The fields every request to `route` needs (looked up once per route: clients call the
    same few endpoints over and over)."""
    key = (id(required), route)
    cached = _fields_by_route.get(key)
    if cached is None or cached[0] is not required:  # the dict is kept: its id cannot be reused
        if len(_fields_by_route) > 10_000:  # routes with ids in them: bounded
            _fields_by_route.clear()
        cached = _fields_by_route[key] = (
            required, next((f for suffix, f in required.items() if route.endswith(suffix)), None))
    return cached[1]


def request_problem(required: dict[str, tuple[str, ...]], method: str, path: str, body: bytes) -> str | None:
    """Why a request cannot be valid for its endpoint (a message for a 400), or None.

    Only endpoints listed in `required` are judged, and only on what every request of theirs
    needs; anything else is the provider's to judge. Never raises.
    """
    if method != "POST":
        return None
    fields = _required_fields(required, path.split("?", 1)[0])
    if fields is None:
        return None
    if len(body) > MAX_PARSED_BODY:
        if body.lstrip()[:1] != b"{":
            return "the request body is not a JSON object"
        missing = [f for f in fields if f'"{f}"'.encode() not in body]
    else:
        try:
            value = loads(body)
        except (ValueError, RecursionError):
            return "the request body is not valid JSON"
        if not isinstance(value, dict):
            return "the request body is not a JSON object"
        missing = [f for f in fields if f not in value]
    if missing:
        return f"the request body lacks required field{'s' if len(missing) > 1 else ''}: {', '.join(missing)}"
    return None


def json_object(data: bytes) -> dict | None:
    """A JSON object from bytes, or None for anything else; never raises."""
    try:
        value = loads(data)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


from . import anthropic, gemini, mistral, openai, xai  # noqa: E402  (they use the helpers above)

PROVIDERS: dict[str, ModuleType] = {
    "openai": openai,
    "anthropic": anthropic,
    "gemini": gemini,
    "mistral": mistral,
    "xai": xai,
}


def get(name: str) -> Provider:
    return PROVIDERS[name]  # type: ignore[return-value]
