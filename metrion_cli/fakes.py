"""Fake provider upstreams (asyncio + h11), faithful to /work/shared/providers.md.

Used by the end-to-end tests (``FakeUpstream(...).start()`` runs it in a daemon thread), by the
benchmark and by ``metrion demo`` (``await run_fakes({...})`` or ``python -m metrion_cli.fakes
openai=8201``).

Layout:
  * the HTTP/1.1 server (``FakeUpstream``) parses requests with h11 (keep-alive, pipelining,
    chunked request bodies, 100-continue), asks the provider handler for a ``Reply`` (status,
    headers, and either one JSON body or a list of SSE chunks), then serialises and writes it
    itself (Content-Length for JSON, one HTTP chunk per SSE event), applying the transport
    behaviour: first-byte delay, delay between chunks, gzip, reset, stall. No per-request logging.
  * provider handlers are pure functions of (request, behaviour) -> Reply. ``HANDLERS`` maps a
    provider name to a zero-argument factory returning such a callable (a class works):
    ``openai``, ``anthropic``, ``gemini``, ``mistral`` and ``xai``. They share ``ProviderHandler``
    (dispatch, forced errors, reply building); Mistral, xAI and Gemini's OpenAI-compatible route
    subclass ``OpenAIHandler``. Reply tokens are deterministic functions of the request (prompt
    words, Behaviour.chunks), so tests can predict every usage number.

Per-request control headers (they override ``FakeUpstream.behaviour`` for that request):
``x-fake-status``, ``x-fake-chunk-delay-ms``, ``x-fake-chunks``, ``x-fake-reset-after-chunks``,
``x-fake-stall-after-chunks``, ``x-fake-first-byte-delay-ms``, ``x-fake-gzip`` (1/0).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import hashlib
import json
import math
import os
import signal
import struct
import sys
import threading
import time
import traceback
import urllib.parse
import uuid
import zlib
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Callable

import h11

__all__ = [
    "AnthropicHandler",
    "Behaviour",
    "FakeUpstream",
    "GeminiHandler",
    "GeminiOpenAIHandler",
    "HANDLERS",
    "MistralHandler",
    "OpenAIHandler",
    "ProviderHandler",
    "ReceivedRequest",
    "Reply",
    "SentResponse",
    "XAIHandler",
    "main",
    "run_fakes",
]


# --------------------------------------------------------------------------------------------
# Public records and knobs
# --------------------------------------------------------------------------------------------


@dataclass
class ReceivedRequest:
    method: str
    path: str  # path including query string, as on the wire
    headers: list[tuple[str, str]]  # as received, names lower-cased
    body: bytes  # exact body bytes received (after de-chunking)

    def header(self, name: str) -> str | None:
        """First value of header ``name`` (case-insensitive), or None."""
        name = name.lower()
        for n, v in self.headers:
            if n == name:
                return v
        return None


@dataclass
class SentResponse:
    status: int
    headers: list[tuple[str, str]]
    # The exact body bytes written (all chunks concatenated; compressed bytes if gzip was on).
    # While a stream is still being written this is a growing bytearray; it becomes bytes before
    # the last chunk goes out (and before an abort/stall), so it is final once a client saw the end.
    body: bytes
    usage: dict | None  # the usage object reported in the bytes written so far (None if none)
    model: str | None
    # the upstream request id: the request-id header sent (x-request-id for OpenAI, request-id for
    # Anthropic, mistral-correlation-id for Mistral); Gemini and xAI send none, so there it is the
    # response id in the body (responseId / id), None where the body has none
    request_id: str | None
    chunk_times: list[float]  # time.monotonic() when each chunk was written (one for non-stream)


@dataclass
class Behaviour:
    """How the fake answers; the defaults give normal, fast answers."""

    chunk_delay: float = 0.0  # seconds to sleep between SSE chunks
    first_byte_delay: float = 0.0  # seconds before sending response headers
    status: int | None = None  # answer every request with this error status (provider's error shape)
    reset_after_chunks: int | None = None  # transport.abort() after writing this many chunks
    stall_after_chunks: int | None = None  # stop sending (connection stays open) after N chunks
    gzip: bool = False  # gzip the response body (Content-Encoding: gzip), JSON and SSE
    chunks: int | None = None  # number of content delta chunks / reply words (default 3)
    retry_after: str | None = "1"  # `retry-after` header value on a 429 (None: no header)


DEFAULT_CHUNKS = 3
MAX_CHUNKS = 100_000


@dataclass
class Reply:
    """What a provider handler returns; the server frames and writes it.

    Either ``body`` (one JSON body, sent with Content-Length) or ``events`` (SSE, each element
    written as its own HTTP chunk, no Content-Length). ``headers`` must not contain framing headers
    (content-length, transfer-encoding, content-encoding): the server adds them.
    ``usage_at`` maps a chunk index to the usage object the response has reported once that chunk
    is written (the non-stream body is chunk 0).
    """

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    events: list[bytes] | None = None
    usage_at: dict[int, dict] = field(default_factory=dict)
    model: str | None = None
    request_id: str | None = None


Handler = Callable[[ReceivedRequest, Behaviour], Reply]


# --------------------------------------------------------------------------------------------
# Small helpers shared by handlers
# --------------------------------------------------------------------------------------------

_dumps_str = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def dumps(obj: Any) -> bytes:
    """Compact JSON, UTF-8 (as the providers send it)."""
    return _dumps_str(obj).encode("utf-8")


_date_cache: list[Any] = [0, ""]


def http_date() -> str:
    now = int(time.time())
    if now != _date_cache[0]:
        _date_cache[1] = formatdate(now, usegmt=True)
        _date_cache[0] = now
    return _date_cache[1]


def new_hex(nbytes: int = 16) -> str:
    return os.urandom(nbytes).hex()


def count_words(content: Any) -> int:
    """Whitespace-separated words in a message content (string or list of text parts)."""
    if isinstance(content, str):
        return len(content.split())
    if isinstance(content, list):
        n = 0
        for part in content:
            if isinstance(part, str):
                n += len(part.split())
            elif isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    n += len(text.split())
        return n
    return 0


_WORDS = (
    "Hello from the fake upstream this reply is deterministic and made of one word per chunk "
    "so tests can count them easily"
).split()


def reply_words(n: int) -> list[str]:
    return [_WORDS[i % len(_WORDS)] for i in range(n)]


_OBFUSCATION = ("xQ", "p4Zk", "mN0", "Tz7rW", "b", "Kd9s")

_REASONS: dict[int, bytes] = {}


def _reason(status: int) -> bytes:
    r = _REASONS.get(status)
    if r is None:
        try:
            r = HTTPStatus(status).phrase.encode("ascii")
        except ValueError:
            r = b""
        _REASONS[status] = r
    return r


def _parse_int(v: str) -> int:
    n = int(v.strip())
    if n < 0:
        raise ValueError(v)
    return n


def _parse_ms(v: str) -> float:
    f = float(v.strip())
    if not math.isfinite(f) or f < 0:
        raise ValueError(v)
    return f / 1000.0


def _parse_bool(v: str) -> bool:
    v = v.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError(v)


def _parse_status(v: str) -> int:
    n = int(v.strip())
    if not 100 <= n <= 999:
        raise ValueError(v)
    return n


# header name -> (Behaviour field, parser)
FAKE_HEADERS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "x-fake-status": ("status", _parse_status),
    "x-fake-chunk-delay-ms": ("chunk_delay", _parse_ms),
    "x-fake-chunks": ("chunks", _parse_int),
    "x-fake-reset-after-chunks": ("reset_after_chunks", _parse_int),
    "x-fake-stall-after-chunks": ("stall_after_chunks", _parse_int),
    "x-fake-first-byte-delay-ms": ("first_byte_delay", _parse_ms),
    "x-fake-gzip": ("gzip", _parse_bool),
}


def effective_behaviour(base: Behaviour, req: ReceivedRequest) -> Behaviour:
    """``base`` with the request's x-fake-* headers applied (invalid values are ignored)."""
    over: dict[str, Any] | None = None
    for name, value in req.headers:
        if name.startswith("x-fake-"):
            spec = FAKE_HEADERS.get(name)
            if spec is None:
                continue
            try:
                parsed = spec[1](value)
            except ValueError:
                continue
            if over is None:
                over = {}
            over[spec[0]] = parsed
    return dataclasses.replace(base, **over) if over else base


# --------------------------------------------------------------------------------------------
# Shared handler machinery
# --------------------------------------------------------------------------------------------

Route = Callable[[ReceivedRequest, Behaviour, str], Reply]

_DEFAULT_BEHAVIOUR = Behaviour()
_SAME = object()  # reply builders: "the request id, if the provider sends it in a header"
_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
SSE_DONE = b"data: [DONE]\n\n"


def new_b62(n: int) -> str:
    return "".join(_B62[x % 62] for x in os.urandom(n))


def n_words(b: Behaviour) -> int:
    """How many reply words (= content delta chunks) this request gets."""
    return min(b.chunks if b.chunks is not None else DEFAULT_CHUNKS, MAX_CHUNKS)


def delta_text(i: int, word: str) -> str:
    """The text of content delta ``i``: the words joined by single spaces."""
    return word if i == 0 else " " + word


def message_tokens(messages: list) -> int:
    """Prompt tokens of a message list: 3 per message plus the words of its content (min 1)."""
    n = 0
    for m in messages:
        n += 3 + (count_words(m.get("content")) if isinstance(m, dict) else 0)
    return max(1, n)


def processing_ms(b: Behaviour) -> str:
    return str(max(1, round(b.first_byte_delay * 1000)))


def sse_data(obj: Any, eol: bytes = b"\n") -> bytes:
    """One data-only SSE event."""
    return b"data: " + dumps(obj) + eol + eol


def sse_event(name: str, obj: Any) -> bytes:
    """One SSE event with an ``event:`` line."""
    return b"event: " + name.encode("ascii") + b"\ndata: " + dumps(obj) + b"\n\n"


def find_values(obj: Any, key: str) -> list:
    """Every value stored under ``key`` anywhere in a parsed JSON document."""
    found = []
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            for k, v in o.items():
                if k == key:
                    found.append(v)
                stack.append(v)
        elif isinstance(o, list):
            stack.extend(o)
    return found


def missing_field(body: dict, names: tuple[str, ...]) -> str | None:
    """The first of ``names`` absent from ``body`` (or null), else None."""
    for name in names:
        if body.get(name) is None:
            return name
    return None


def query_param(req: ReceivedRequest, name: str) -> str | None:
    _, sep, query = req.path.partition("?")
    if not sep:
        return None
    values = urllib.parse.parse_qs(query).get(name)
    return values[0] if values else None


def bearer(req: ReceivedRequest) -> str | None:
    """The token of an ``Authorization: Bearer`` header, or None."""
    auth = req.header("authorization")
    if not auth:
        return None
    scheme, _, token = auth.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def key_ok(key: str | None, prefixes: tuple[str, ...]) -> bool:
    """Whether the fake accepts ``key``: one of ``prefixes`` followed by something."""
    return key is not None and any(key.startswith(p) and len(key) > len(p) for p in prefixes)


def embedding_bytes(key: bytes, dims: int) -> bytes:
    """A deterministic unit vector for ``key``, as little-endian float32 bytes."""
    raw = hashlib.blake2b(key, digest_size=64).digest()
    vals = [(raw[i % 64] - 127.5) / 127.5 + (i // 64) * 1e-3 for i in range(dims)]
    norm = math.sqrt(sum(v * v for v in vals)) or 1.0
    return struct.pack(f"<{dims}f", *(v / norm for v in vals))


def embedding_floats(key: bytes, dims: int) -> list[float]:
    return list(struct.unpack(f"<{dims}f", embedding_bytes(key, dims)))


def valid_dims(value: Any, default: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 4096:
        return value
    return default


@dataclass
class ErrorSpec:
    """What an error reply says; ``ProviderHandler.error_body`` shapes it the provider's way."""

    status: int
    rid: str
    message: Any
    kind: str  # the provider's error type (Anthropic type, Google RPC status, xAI gRPC text, ...)
    param: str | None = None
    code: str | None = None
    details: list | None = None
    b: Behaviour = field(default_factory=Behaviour)


class ProviderHandler:
    """Base of the provider handlers: dispatch, request ids, errors and reply building.

    ``__call__`` answers a forced status (Behaviour.status) with ``forced_error``, finds the route
    for the path (query string ignored) with ``find_route`` (404 via ``not_found``), checks the
    credentials with ``check_auth`` and calls ``route(request, behaviour, request_id)``.
    A subclass provides ``routes``, ``error_body`` (the provider's error shape), ``base_headers``
    and ``check_auth``; ``ERRORS`` maps a status to (error kind, message) for forced errors.

    ``Reply.request_id`` (so ``SentResponse.request_id``) is the provider's upstream request id
    as providers.md §1 defines it: the ``REQUEST_ID_HEADER`` value where the provider sends one,
    else the response id in the body (Gemini ``responseId``, xAI ``id``), else None.
    """

    provider = ""
    REQUEST_ID_HEADER: str | None = None
    JSON_TYPE = "application/json"
    SSE_TYPE = "text/event-stream; charset=utf-8"
    # model name -> dated snapshot reported in responses; other names are returned as given
    SNAPSHOTS: dict[str, str] = {}
    # status -> (error kind, message) used by forced_error; "{model}" is the request's model
    ERRORS: dict[int, tuple[str, str]] = {}
    BAD_JSON_MESSAGE = "The request body is not valid JSON."
    MODELS_PATH: str | None = "/v1/models"  # GET MODELS_PATH/{id} routes to retrieve_model
    routes: dict[tuple[str, str], Route]

    # ---- entry point ----

    def __call__(self, req: ReceivedRequest, b: Behaviour) -> Reply:
        rid = self.new_request_id()
        if b.status is not None:
            return self.forced_error(b.status, req, b, rid)
        path = req.path.split("?", 1)[0]
        route = self.find_route(req.method, path)
        if route is None:
            return self.not_found(req, path, rid, b)
        denied = self.check_auth(req, rid, b)
        if denied is not None:
            return denied
        return route(req, b, rid)

    def new_request_id(self) -> str:
        return "req_" + new_hex()

    def find_route(self, method: str, path: str) -> Route | None:
        route = self.routes.get((method, path))
        models = self.MODELS_PATH
        if route is None and models and method == "GET" and path.startswith(models + "/") \
                and len(path) > len(models) + 1:
            route = self.retrieve_model  # type: ignore[attr-defined]
        return route

    def model_id_in_path(self, req: ReceivedRequest) -> str:
        return req.path.split("?", 1)[0][len(self.MODELS_PATH or "") + 1:]

    def not_found(self, req: ReceivedRequest, path: str, rid: str, b: Behaviour) -> Reply:
        return self.error(404, rid, "Not Found", b=b)

    def check_auth(self, req: ReceivedRequest, rid: str, b: Behaviour | None = None) -> Reply | None:
        return None

    # ---- errors ----

    def error(
        self,
        status: int,
        rid: str,
        message: Any,
        type_: str | None = None,
        param: str | None = None,
        code: str | None = None,
        b: Behaviour | None = None,
        extra_headers: list[tuple[str, str]] | None = None,
        details: list | None = None,
    ) -> Reply:
        """The provider's error reply; ``type_`` is its error kind (default ``error_kind``)."""
        b = b or _DEFAULT_BEHAVIOUR
        spec = ErrorSpec(status, rid, message, type_ or self.error_kind(status), param, code, details, b)
        headers = self.base_headers(rid, self.JSON_TYPE, b)
        if extra_headers:
            headers += extra_headers
        return Reply(status, headers, body=dumps(self.error_body(spec)), request_id=self.header_request_id(rid))

    def error_body(self, e: ErrorSpec) -> Any:
        """The JSON error body."""
        raise NotImplementedError

    def error_kind(self, status: int) -> str:
        spec = self.ERRORS.get(status) or self.ERRORS[500 if status >= 500 else 400]
        return spec[0]

    def retry_headers(self, b: Behaviour) -> list[tuple[str, str]]:
        return [("retry-after", b.retry_after)] if b.retry_after is not None else []

    def forced_error(self, status: int, req: ReceivedRequest, b: Behaviour, rid: str) -> Reply:
        """The error reply for Behaviour.status / x-fake-status (providers.md error tables)."""
        kind, message = self.ERRORS.get(status) or (self.error_kind(status), f"Fake upstream error {status}.")
        return self.error(
            status, rid, message.format(model=self.model_of(req) or "unknown"), kind, b=b,
            extra_headers=self.retry_headers(b) if status == 429 else None,
        )

    def model_of(self, req: ReceivedRequest) -> str | None:
        """The model the request names (for error messages), or None."""
        if not req.body:
            return None
        try:
            body = json.loads(req.body)
        except ValueError:
            return None
        model = body.get("model") if isinstance(body, dict) else None
        return model if isinstance(model, str) else None

    # ---- headers and replies ----

    def base_headers(self, rid: str, content_type: str, b: Behaviour) -> list[tuple[str, str]]:
        """Headers of every reply (errors too)."""
        raise NotImplementedError

    def ok_headers(self, rid: str, content_type: str, b: Behaviour) -> list[tuple[str, str]]:
        """Headers of a successful reply."""
        return self.base_headers(rid, content_type, b)

    def header_request_id(self, rid: str) -> str | None:
        return rid if self.REQUEST_ID_HEADER else None

    def json_reply(
        self, rid: str, b: Behaviour, payload: Any, usage: dict | None = None,
        model: str | None = None, request_id: Any = _SAME,
    ) -> Reply:
        return Reply(
            200, self.ok_headers(rid, self.JSON_TYPE, b), body=dumps(payload),
            usage_at={0: usage} if usage is not None else {}, model=model,
            request_id=self.header_request_id(rid) if request_id is _SAME else request_id,
        )

    def stream_reply(
        self, rid: str, b: Behaviour, events: list[bytes], usage_at: dict[int, dict],
        model: str | None, request_id: Any = _SAME, content_type: str | None = None,
    ) -> Reply:
        return Reply(
            200, self.ok_headers(rid, content_type or self.SSE_TYPE, b), events=events,
            usage_at=usage_at, model=model,
            request_id=self.header_request_id(rid) if request_id is _SAME else request_id,
        )

    # ---- request bodies and models ----

    def parse_json(self, req: ReceivedRequest, rid: str, b: Behaviour) -> tuple[dict | None, Reply | None]:
        try:
            body = json.loads(req.body)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return None, self.error(400, rid, self.BAD_JSON_MESSAGE, b=b)
        return body, None

    def snapshot(self, model: str) -> str:
        return self.SNAPSHOTS.get(model, model)


# --------------------------------------------------------------------------------------------
# OpenAI (providers.md §3)
# --------------------------------------------------------------------------------------------


def chat_chunk(head: dict, choices: list, **extra: Any) -> bytes:
    """One ``chat.completion.chunk`` SSE event: ``head`` fields, ``choices``, then ``extra``."""
    d = dict(head)
    d["choices"] = choices
    d.update(extra)
    return sse_data(d)


class OpenAIHandler(ProviderHandler):
    """OpenAI API: chat completions, responses, embeddings, models.

    Hooks for the OpenAI-compatible subclasses (xAI, Mistral, Gemini's compatibility route):
    ``routes``, ``snapshot``, ``is_reasoning``, ``chat_usage``, ``responses_usage``,
    ``completion_id``, ``response_id``, ``chat_stream``, ``embeddings_payload``, ``error``,
    ``missing_param``, ``base_headers``, ``ok_headers``, ``check_auth``, and the class
    attributes below.
    """

    provider = "openai"
    REQUEST_ID_HEADER = "x-request-id"
    api_version = "2020-10-01"
    SNAPSHOTS = {"gpt-4o-mini": "gpt-4o-mini-2024-07-18"}
    REASONING_TOKENS = 64  # reasoning tokens reported for reasoning models ("o..." names)
    EMBEDDING_DIMS = 8
    DIMENSIONS_PARAM = "dimensions"  # the embeddings request field giving the vector size
    BASE64_EMBEDDINGS = True  # honour "encoding_format": "base64"
    OBFUSCATION = True  # stream deltas carry an `obfuscation` padding string
    OWNED_BY = "system"
    CHAT_MESSAGE_EXTRA: dict[str, Any] = {}  # fields after role/content in a chat message
    CHAT_EXTRA: dict[str, Any] = {"service_tier": "default", "system_fingerprint": "fp_fake"}
    BAD_JSON_MESSAGE = (
        "We could not parse the JSON body of your request. (HINT: This likely means you "
        "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
        "but what was sent was not valid JSON. If you have trouble figuring out how to fix "
        "this, please contact us through our help center at help.openai.com.)"
    )
    MODELS: tuple[tuple[str, int], ...] = (
        ("gpt-4o-mini", 1721172741),
        ("gpt-4o", 1715367049),
        ("gpt-4.1", 1744316542),
        ("o3-mini", 1737146383),
        ("text-embedding-3-small", 1705948997),
    )

    def __init__(self) -> None:
        self.routes = {
            ("POST", "/v1/chat/completions"): self.chat_completions,
            ("POST", "/v1/responses"): self.responses,
            ("POST", "/v1/embeddings"): self.embeddings,
            ("GET", "/v1/models"): self.list_models,
        }

    # ---- headers, errors, auth ----

    def base_headers(self, rid: str, content_type: str, b: Behaviour) -> list[tuple[str, str]]:
        return [
            ("date", http_date()),
            ("content-type", content_type),
            ("x-request-id", rid),
            ("openai-organization", "metrion-fake"),
            ("openai-processing-ms", processing_ms(b)),
            ("openai-project", "proj_fake"),
            ("openai-version", self.api_version),
        ]

    def ok_headers(self, rid: str, content_type: str, b: Behaviour) -> list[tuple[str, str]]:
        h = self.base_headers(rid, content_type, b)
        h += [
            ("x-ratelimit-limit-requests", "10000"),
            ("x-ratelimit-limit-tokens", "200000"),
            ("x-ratelimit-remaining-requests", "9999"),
            ("x-ratelimit-remaining-tokens", "199990"),
            ("x-ratelimit-reset-requests", "6ms"),
            ("x-ratelimit-reset-tokens", "3ms"),
        ]
        return h

    def error_body(self, e: ErrorSpec) -> Any:
        return {"error": {"message": e.message, "type": e.kind, "param": e.param, "code": e.code}}

    def error_kind(self, status: int) -> str:
        # OpenAI's own errors name their type where it is not this; a subclass uses its ERRORS
        return super().error_kind(status) if self.ERRORS else "invalid_request_error"

    def not_found(self, req: ReceivedRequest, path: str, rid: str, b: Behaviour) -> Reply:
        return self.error(404, rid, f"Invalid URL ({req.method} {path})")

    bearer = staticmethod(bearer)

    @staticmethod
    def mask_key(key: str | None) -> str:
        # never echo the key: only the last 4 characters, and none of a short key
        if not key or len(key) <= 8:
            return "sk-..."
        return "sk-..." + key[-4:]

    def invalid_key(self, rid: str, key: str | None, b: Behaviour | None = None) -> Reply:
        return self.error(
            401,
            rid,
            f"Incorrect API key provided: {self.mask_key(key)}. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            code="invalid_api_key",
            b=b,
        )

    def check_auth(self, req: ReceivedRequest, rid: str, b: Behaviour | None = None) -> Reply | None:
        key = bearer(req)
        if key is None:
            return self.error(
                401,
                rid,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or "
                "as the password field (with blank username) if you're accessing the API from your "
                "browser and are prompted for a username and password. You can obtain an API key "
                "from https://platform.openai.com/account/api-keys.",
            )
        if not key_ok(key, ("sk-",)):
            return self.invalid_key(rid, key)
        return None

    def forced_error(self, status: int, req: ReceivedRequest, b: Behaviour, rid: str) -> Reply:
        """The error reply for Behaviour.status / x-fake-status (providers.md error table)."""
        if self.ERRORS:  # an OpenAI-compatible provider with its own table
            return super().forced_error(status, req, b, rid)
        if status == 401:
            return self.invalid_key(rid, bearer(req), b)
        if status == 400:
            return self.error(
                400, rid, "Invalid value for 'messages': expected an array of objects.",
                param="messages", b=b,
            )
        if status == 404:
            model = self.model_of(req) or "unknown"
            return self.error(
                404, rid, f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found", b=b,
            )
        if status == 429:
            model = self.model_of(req) or "gpt-4o-mini"
            extra = self.retry_headers(b)
            extra += [
                ("x-ratelimit-limit-requests", "10000"),
                ("x-ratelimit-limit-tokens", "200000"),
                ("x-ratelimit-remaining-requests", "9999"),
                ("x-ratelimit-remaining-tokens", "1000"),
                ("x-ratelimit-reset-requests", "6ms"),
                ("x-ratelimit-reset-tokens", "150ms"),
            ]
            return self.error(
                429,
                rid,
                f"Rate limit reached for {model} in organization org-fake on tokens per min (TPM): "
                "Limit 200000, Used 199000, Requested 1500. Please try again in 150ms. Visit "
                "https://platform.openai.com/account/rate-limits to learn more.",
                type_="tokens",
                code="rate_limit_exceeded",
                b=b,
                extra_headers=extra,
            )
        if status == 500:
            return self.error(
                500, rid,
                "The server had an error while processing your request. Sorry about that!",
                type_="server_error", b=b,
            )
        if status == 503:
            return self.error(
                503, rid, "The server is overloaded or not ready yet.", type_="server_error", b=b
            )
        return self.error(
            status,
            rid,
            f"Fake upstream error {status}.",
            type_="server_error" if status >= 500 else "invalid_request_error",
            b=b,
        )

    def missing_param(self, name: str, body: dict, rid: str, b: Behaviour) -> Reply:
        """The reply to a request body without the required field ``name``."""
        if name == "model":
            return self.error(400, rid, "you must provide a model parameter", param="model", b=b)
        return self.error(400, rid, f"Missing required parameter: '{name}'.", param=name, b=b)

    def require_model(self, body: dict, rid: str, b: Behaviour) -> tuple[str | None, Reply | None]:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return None, self.missing_param("model", body, rid, b)
        return model, None

    def model_request(self, req: ReceivedRequest, rid: str, b: Behaviour) -> tuple[Any, Any, Reply | None]:
        """(JSON body, model, None), or (.., .., the error reply) for a bad body or no model."""
        body, err = self.parse_json(req, rid, b)
        if err:
            return None, None, err
        model, err = self.require_model(body, rid, b)
        return body, model, err

    # ---- ids, model naming and usage ----

    def completion_id(self, rid: str) -> str:
        return "chatcmpl-" + new_hex(12)

    def response_id(self, rid: str) -> str:
        return "resp_" + new_hex(24)

    def is_reasoning(self, model: str) -> bool:
        return model.startswith("o")

    def chat_usage(self, prompt: int, words: int, model: str) -> dict:
        reasoning = self.REASONING_TOKENS if self.is_reasoning(model) else 0
        completion = words + reasoning  # OpenAI: completion_tokens includes reasoning
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": reasoning,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def responses_usage(self, prompt: int, words: int, model: str) -> dict:
        reasoning = self.REASONING_TOKENS if self.is_reasoning(model) else 0
        output = words + reasoning
        return {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": prompt + output,
        }

    # ---- POST /v1/chat/completions ----

    def chat_completions(self, req: ReceivedRequest, b: Behaviour, rid: str) -> Reply:
        body, model, err = self.model_request(req, rid, b)
        if err:
            return err
        messages = body.get("messages")
        if not isinstance(messages, list):
            if messages is None:
                return self.missing_param("messages", body, rid, b)
            return self.error(
                400, rid,
                f"Invalid type for 'messages': expected an array, but got {type(messages).__name__} instead.",
                param="messages", b=b,
            )
        return self.completion_reply(body, model, message_tokens(messages), b, rid)

    def completion_reply(self, body: dict, model: str, prompt: int, b: Behaviour, rid: str) -> Reply:
        """A chat completion answering ``prompt`` tokens: JSON, or SSE for ``"stream": true``."""
        words = reply_words(n_words(b))
        usage = self.chat_usage(prompt, len(words), model)
        snap = self.snapshot(model)
        cid = self.completion_id(rid)
        created = int(time.time())
        if body.get("stream") is not True:
            message = {"role": "assistant", "content": " ".join(words), **self.CHAT_MESSAGE_EXTRA}
            payload = {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": snap,
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": usage,
                **self.CHAT_EXTRA,
            }
            return self.json_reply(rid, b, payload, usage, snap, request_id=rid)
        head = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": snap}
        events, usage_at = self.chat_stream(head, words, usage, body)
        events.append(SSE_DONE)  # every OpenAI-style chat stream ends so
        return self.stream_reply(rid, b, events, usage_at, snap, request_id=rid)

    def chat_stream(
        self, head: dict, words: list[str], usage: dict, body: dict
    ) -> tuple[list[bytes], dict[int, dict]]:
        """The SSE events of a streamed chat completion (before ``[DONE]``) and their ``usage_at``."""
        opts = body.get("stream_options")
        opts = opts if isinstance(opts, dict) else {}
        include_usage = opts.get("include_usage") is True
        obfuscate = self.OBFUSCATION and opts.get("include_obfuscation") is not False
        # providers.md: with include_usage every chunk carries "usage": null (and a usage-only
        # chunk comes last); without it, the stream has no usage at all.
        no_usage: dict[str, Any] = {"usage": None} if include_usage else {}
        events = [
            chat_chunk(head, [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
                       **no_usage)
        ]
        for i, w in enumerate(words):
            extra: dict[str, Any] = dict(no_usage)
            if obfuscate:
                extra["obfuscation"] = _OBFUSCATION[i % len(_OBFUSCATION)]
            events.append(
                chat_chunk(head, [{"index": 0, "delta": {"content": delta_text(i, w)}, "finish_reason": None}],
                           **extra)
            )
        events.append(chat_chunk(head, [{"index": 0, "delta": {}, "finish_reason": "stop"}], **no_usage))
        usage_at: dict[int, dict] = {}
        if include_usage:
            usage_at[len(events)] = usage
            events.append(chat_chunk(head, [], usage=usage))
        return events, usage_at

    # ---- POST /v1/responses ----

    def responses(self, req: ReceivedRequest, b: Behaviour, rid: str) -> Reply:
        body, model, err = self.model_request(req, rid, b)
        if err:
            return err
        inp = body.get("input")
        prompt = 0
        if isinstance(inp, str):
            prompt += 3 + count_words(inp)
        elif isinstance(inp, list):
            for item in inp:
                if isinstance(item, dict):
                    prompt += 3 + count_words(item.get("content"))
                elif isinstance(item, str):
                    prompt += 3 + count_words(item)
        instructions = body.get("instructions")
        if isinstance(instructions, str):
            prompt += 3 + count_words(instructions)
        prompt = max(1, prompt)
        words = reply_words(n_words(b))
        text = " ".join(words)
        usage = self.responses_usage(prompt, len(words), model)
        snap = self.snapshot(model)
        reasoning = self.is_reasoning(model)
        resp_id = self.response_id(rid)
        msg_id = "msg_" + new_hex(24)
        rs_id = "rs_" + new_hex(24)
        created = int(time.time())

        def response_obj(status: str, output: list, usage_obj: dict | None) -> dict:
            return {
                "id": resp_id,
                "object": "response",
                "created_at": created,
                "status": status,
                "background": False,
                "completed_at": created if status == "completed" else None,
                "error": None,
                "incomplete_details": None,
                "instructions": instructions if isinstance(instructions, (str, list)) else None,
                "max_output_tokens": body.get("max_output_tokens"),
                "max_tool_calls": None,
                "model": snap,
                "output": output,
                "parallel_tool_calls": True,
                "previous_response_id": body.get("previous_response_id"),
                "reasoning": {"effort": "medium" if reasoning else None, "summary": None},
                "service_tier": "default",
                "store": body.get("store", True) is not False,
                "temperature": 1.0,
                "text": {"format": {"type": "text"}, "verbosity": "medium"},
                "tool_choice": "auto",
                "tools": [],
                "top_logprobs": 0,
                "top_p": 1.0,
                "truncation": "disabled",
                "usage": usage_obj,
                "user": None,
                "metadata": body.get("metadata") if isinstance(body.get("metadata"), dict) else {},
            }

        rs_item = {"id": rs_id, "type": "reasoning", "summary": []}
        part_done = {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
        msg_done = {
            "id": msg_id, "type": "message", "status": "completed", "content": [part_done],
            "role": "assistant",
        }
        final_output = ([rs_item] if reasoning else []) + [msg_done]

        if body.get("stream") is not True:
            payload = response_obj("completed", final_output, usage)
            return self.json_reply(rid, b, payload, usage, snap, request_id=rid)

        events: list[bytes] = []

        def ev(type_: str, **fields: Any) -> None:
            d = {"type": type_, "sequence_number": len(events)}
            d.update(fields)
            events.append(sse_event(type_, d))

        ev("response.created", response=response_obj("in_progress", [], None))
        ev("response.in_progress", response=response_obj("in_progress", [], None))
        idx = 0
        if reasoning:
            ev("response.output_item.added", output_index=0, item=rs_item)
            ev("response.output_item.done", output_index=0, item=rs_item)
            idx = 1
        ev(
            "response.output_item.added", output_index=idx,
            item={"id": msg_id, "type": "message", "status": "in_progress", "content": [], "role": "assistant"},
        )
        ev(
            "response.content_part.added", item_id=msg_id, output_index=idx, content_index=0,
            part={"type": "output_text", "annotations": [], "logprobs": [], "text": ""},
        )
        for i, w in enumerate(words):
            obf = {"obfuscation": _OBFUSCATION[i % len(_OBFUSCATION)]} if self.OBFUSCATION else {}
            ev(
                "response.output_text.delta", item_id=msg_id, output_index=idx, content_index=0,
                delta=delta_text(i, w), logprobs=[], **obf,
            )
        ev(
            "response.output_text.done", item_id=msg_id, output_index=idx, content_index=0,
            text=text, logprobs=[],
        )
        ev("response.content_part.done", item_id=msg_id, output_index=idx, content_index=0, part=part_done)
        ev("response.output_item.done", output_index=idx, item=msg_done)
        usage_at = {len(events): usage}
        ev("response.completed", response=response_obj("completed", final_output, usage))
        return self.stream_reply(rid, b, events, usage_at, snap, request_id=rid)

    # ---- POST /v1/embeddings ----

    def embeddings(self, req: ReceivedRequest, b: Behaviour, rid: str) -> Reply:
        body, model, err = self.model_request(req, rid, b)
        if err:
            return err
        inp = body.get("input")
        inputs: list[Any]
        if isinstance(inp, str):
            inputs = [inp]
        elif isinstance(inp, list) and inp and all(isinstance(x, int) for x in inp):
            inputs = [inp]  # one pre-tokenised input
        elif isinstance(inp, list) and inp and all(isinstance(x, (str, list)) for x in inp):
            inputs = inp
        else:
            return self.error(
                400, rid, "'$.input' is invalid. Please check the API reference: "
                "https://platform.openai.com/docs/api-reference.", param="input", b=b,
            )
        dims = valid_dims(body.get(self.DIMENSIONS_PARAM), self.EMBEDDING_DIMS)
        as_base64 = self.BASE64_EMBEDDINGS and body.get("encoding_format") == "base64"
        prompt = 0
        data = []
        for i, item in enumerate(inputs):
            if isinstance(item, str):
                prompt += max(1, len(item.split()))
                key = item.encode("utf-8")
            else:
                prompt += max(1, len(item))
                key = dumps(item)
            if as_base64:
                emb: Any = base64.b64encode(embedding_bytes(key, dims)).decode("ascii")
            else:
                emb = embedding_floats(key, dims)
            data.append({"object": "embedding", "index": i, "embedding": emb})
        usage = self.embeddings_usage(prompt)
        return self.json_reply(rid, b, self.embeddings_payload(model, data, usage), usage, model)

    def embeddings_usage(self, prompt: int) -> dict:
        return {"prompt_tokens": prompt, "total_tokens": prompt}

    def embeddings_payload(self, model: str, data: list, usage: dict) -> dict:
        return {"object": "list", "data": data, "model": model, "usage": usage}

    # ---- GET /v1/models, /v1/models/{id} ----

    def _model_obj(self, mid: str, created: int) -> dict:
        return {"id": mid, "object": "model", "created": created, "owned_by": self.OWNED_BY}

    def list_models(self, req: ReceivedRequest, b: Behaviour, rid: str) -> Reply:
        payload = {"object": "list", "data": [self._model_obj(m, c) for m, c in self.MODELS]}
        return self.json_reply(rid, b, payload)

    def retrieve_model(self, req: ReceivedRequest, b: Behaviour, rid: str) -> Reply:
        mid = self.model_id_in_path(req)
        for m, c in self.MODELS:
            if m == mid:
                return self.json_reply(rid, b, self._model_obj(m, c))
        return self.error(
            404, rid, f"The model '{mid}' does not exist", param="model", code="model_not_found", b=b
        )


# --------------------------------------------------------------------------------------------
# Anthropic (providers.md §4)
# --------------------------------------------------------------------------------------------


class AnthropicHandler(ProviderHandler):
    """Anthropic Messages API: messages (JSON and SSE), count_tokens, models.

    Usage: ``input_tokens`` are the prompt words (+3 per message and system prompt); a request
    with any ``cache_control`` also reports ``CACHE_READ_TOKENS`` / ``CACHE_WRITE_TOKENS`` (the
    write in ``ephemeral_1h`` when a ``"ttl": "1h"`` is asked for, else ``ephemeral_5m``); one with
    ``thinking`` enabled gets a thinking block and ``THINKING_TOKENS`` more output tokens, shown in
    ``output_tokens_details.thinking_tokens``.
    """

    provider = "anthropic"
    REQUEST_ID_HEADER = "request-id"
    ORGANIZATION_ID = "3f1c9b0e-6a2d-4c55-9e1f-7b8a2d4c6e10"
    SNAPSHOTS = {  # aliases answered with a dated id; newer models have no dated id
        "claude-haiku-4-5": "claude-haiku-4-5-20251001",
        "claude-sonnet-4-5": "claude-sonnet-4-5-20250929",
        "claude-opus-4-1": "claude-opus-4-1-20250805",
    }
    MODELS: tuple[tuple[str, str, str], ...] = (
        ("claude-opus-4-7", "Claude Opus 4.7", "2026-04-16T00:00:00Z"),
        ("claude-sonnet-4-6", "Claude Sonnet 4.6", "2026-02-17T00:00:00Z"),
        ("claude-haiku-4-5-20251001", "Claude Haiku 4.5", "2025-10-15T00:00:00Z"),
        ("claude-sonnet-4-5-20250929", "Claude Sonnet 4.5", "2025-09-29T00:00:00Z"),
        ("claude-opus-4-1-20250805", "Claude Opus 4.1", "2025-08-05T00:00:00Z"),
    )
    THINKING_TOKENS = 32
    THINKING_TEXT = "The user wants a short greeting, so a brief answer will do."
    SIGNATURE = "EqQBCkYIBRgCIkBmYWtlLXNpZ25hdHVyZS1mb3ItbWV0cmlvbi10ZXN0cw=="
    CACHE_READ_TOKENS = 1024
    CACHE_WRITE_TOKENS = 128
    RATE_LIMITS = (  # (kind, limit, remaining) of the anthropic-ratelimit-* headers
        ("requests", "4000", "3999"),
        ("input-tokens", "2000000", "1999000"),
        ("output-tokens", "400000", "400000"),
        ("tokens", "2400000", "2399000"),
    )
    BAD_JSON_MESSAGE = "There was an error parsing the body of your request. Please check that it is valid JSON."
    ERRORS = {
        400: ("invalid_request_error", "Your request was malformed."),
        401: ("authentication_error", "invalid x-api-key"),
        402: ("billing_error", "Your credit balance is too low to access the Anthropic API. Please go to "
                               "Plans & Billing to upgrade or purchase credits."),
        403: ("permission_error", "Your API key does not have permission to use the specified resource."),
        404: ("not_found_error", "model: {model}"),
        413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
        429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit "
                                  "(https://docs.claude.com/en/api/rate-limits); see the response headers "
                                  "for current usage. Please reduce the prompt length or the maximum tokens "
                                  "requested, or try again later."),
        500: ("api_error", "Internal server error"),
        504: ("timeout_error", "Request timeout"),
        529: ("overloaded_error", "Overloaded"),
    }

    def __init__(self) -> None:
        self.routes = {
            ("POST", "/v1/messages"): self.messages,
            ("POST", "/v1/messages/count_tokens"): self.count_tokens,
            ("GET", "/v1/models"): self.list_models,
        }

    def new_request_id(self) -> str:
        return "req_011C" + new_b62(20)

    # ---- headers, errors, auth ----

    def base_headers(self, rid: str, content_type: str, b: Behaviour) -> list[tuple[str, str]]:
        return [
            ("date", http_date()),
            ("content-type", content_type),
            ("request-id", rid),
            ("anthropic-organization-id", self.ORGANIZATION_ID),
            ("x-robots-tag", "none"),
            ("server", "cloudflare"),
        ]

    def ok_headers(self, rid: str, content_type: str, b: Behaviour) -> list[tuple[str, str]]:
        h = self.base_headers(rid, content_type, b)
        reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 1))
        for kind, limit, remaining in self.RATE_LIMITS:
            h += [
                (f"anthropic-ratelimit-{kind}-limit", limit),
                (f"anthropic-ratelimit-{kind}-remaining", remaining),
                (f"anthropic-ratelimit-{kind}-reset", reset),
            ]
        return h

    def error_body(self, e: ErrorSpec) -> Any:
        return {"type": "error", "error": {"type": e.kind, "message": e.message}, "request_id": e.rid}

    def check_auth(self, req: ReceivedRequest, rid: str, b: Behaviour | None = None) -> Reply | None:
        key = req.header("x-api-key")
        if key is not None:
            if not key_ok(key, ("sk-",)):
                return self.error(401, rid, "invalid x-api-key", b=b)
        else:
            key = bearer(req)
            if key is None:
                return self.error(401, rid, "x-api-key header is required", b=b)
            if not key_ok(key, ("sk-",)):
                return self.error(401, rid, "Invalid bearer token", b=b)
        if not req.header("anthropic-version"):
            return self.error(400, rid, "anthropic-version: header is required", b=b)
        return None

    # ---- request bodies and usage ----

    def request_body(
        self, req: ReceivedRequest, rid: str, b: Behaviour, required: tuple[str, ...]
    ) -> tuple[dict | None, Reply | None]:
        body, err = self.parse_json(req, rid, b)
        if err:
            return None, err
        missing = missing_field(body, required)
        if missing:
            return None, self.error(400, rid, f"{missing}: Field required", b=b)
        if not isinstance(body["model"], str):
            return None, self.error(400, rid, "model: Input should be a valid string", b=b)
        if not isinstance(body["messages"], list):
            return None, self.error(400, rid, "messages: Input should be a valid list", b=b)
        return body, None

    @staticmethod
    def input_tokens(body: dict) -> int:
        system = body.get("system")
        extra = [{"content": system}] if system else []
        return message_tokens(body["messages"] + extra)

    @staticmethod
    def thinking_enabled(body: dict) -> bool:
        thinking = body.get("thinking")
        return isinstance(thinking, dict) and thinking.get("type") not in (None, "disabled")

    def usage(self, body: dict, words: int) -> dict:
        caches = [c for c in find_values(body, "cache_control") if isinstance(c, dict)]
        write = self.CACHE_WRITE_TOKENS if caches else 0
        one_hour = any(c.get("ttl") == "1h" for c in caches)
        thinking = self.THINKING_TOKENS if self.thinking_enabled(body) else 0
        usage: dict[str, Any] = {
            "input_tokens": self.input_tokens(body),
            "cache_creation_input_tokens": write,
            "cache_read_input_tokens": self.CACHE_READ_TOKENS if caches else 0,
            "cache_creation": {
                "ephemeral_5m_input_tokens": 0 if one_hour else write,
                "ephemeral_1h_input_tokens": write if one_hour else 0,
            },
            "output_tokens": words + thinking,
        }
        if thinking:
            usage["output_tokens_details"] = {"thinking_tokens": thinking}
        usage["service_tier"] = "standard"
        return usage

    # ---- POST /v1/messages ----

    def messages(self, req: ReceivedRequest, b: Behaviour, rid: str) -> Reply:
        body, err = self.request_body(req, rid, b, ("model", "max_tokens", "messages"))
        if err:
            return err
        words = reply_words(n_words(b))
        usage = self.usage(body, len(words))
        model = self.snapshot(body["model"])
        thinking = "output_tokens_details" in usage
        message = {
            "id": "msg_01" + new_b62(22),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        }
        if body.get("stream") is not True:
            if thinking:
                message["content"].append(
                    {"type": "thinking", "thinking": self.THINKING_TEXT, "signature": self.SIGNATURE})
            message["content"].append({"type": "text", "text": " ".join(words)})
            message["stop_reason"] = "end_turn"
            return self.json_reply(rid, b, message, usage, model)

        # message_start carries the input side and a first output count; message_delta the
        # cumulative totals, which the SDK lays over the message_start values.
        start_usage = {k: v for k, v in usage.items() if k != "output_tokens_details"}
        start_usage["output_tokens"] = 1
        message["usage"] = start_usage
        events = [sse_event("message_start", {"type": "message_start", "message": message})]
        blocks: list[tuple[dict, list[dict]]] = []
        if thinking:
            blocks.append((
                {"type": "thinking", "thinking": "", "signature": ""},
                [{"type": "thinking_delta", "thinking": self.THINKING_TEXT},
                 {"type": "signature_delta", "signature": self.SIGNATURE}],
            ))
        blocks.append((
            {"type": "text", "text": ""},
            [{"type": "text_delta", "text": delta_text(i, w)} for i, w in enumerate(words)],
        ))
        for index, (start, deltas) in enumerate(blocks):
            events.append(sse_event("content_block_start",
                                    {"type": "content_block_start", "index": index, "content_block": start}))
            if index == 0:
                events.append(sse_event("ping", {"type": "ping"}))
            for delta in deltas:
                events.append(sse_event("content_block_delta",
                                        {"type": "content_block_delta", "index": index, "delta": delta}))
            events.append(sse_event("content_block_stop", {"type": "content_block_stop", "index": index}))
        delta_usage = {k: usage[k] for k in (
            "input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens",
            "output_tokens_details") if k in usage}
        usage_at = {0: start_usage, len(events): {**start_usage, **delta_usage}}
        events.append(sse_event("message_delta", {
            "type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": delta_usage,
        }))
        events.append(sse_event("message_stop", {"type": "message_stop"}))
        return self.stream_reply(rid, b, events, usage_at, model)

    # ---- POST /v1/messages/count_tokens ----

    def count_tokens(self, req: ReceivedRequest, b: Behaviour, rid: str) -> Reply:
        body, err = self.request_body(req, rid, b, ("model", "messages"))
        if err:
            return err
        return self.json_reply(rid, b, {"input_tokens": self.input_tokens(body)})

    # ---- GET /v1/models, /v1/models/{id} ----

    @staticmethod
    def _model_obj(mid: str, name: str, created: str) -> dict:
        return {"type": "model", "id": mid, "display_name": name, "created_at": created, "lifecycle": "active"}

    def list_models(self, req: ReceivedRequest, b: Behaviour, rid: str) -> Reply:
        data = [self._model_obj(*m) for m in self.MODELS]
        payload = {"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]}
        return self.json_reply(rid, b, payload)

    def retrieve_model(self, req: ReceivedRequest, b: Behaviour, rid: str) -> Reply:
        mid = self.model_id_in_path(req)
        for m in self.MODELS:
            if mid in (m[0], *(k for k, v in self.SNAPSHOTS.items() if v == m[0])):
                return self.json_reply(rid, b, self._model_obj(*m))
        return self.error(404, rid, f"model: {mid}", b=b)


# --------------------------------------------------------------------------------------------
# Google Gemini (providers.md §5)
# --------------------------------------------------------------------------------------------

GEMINI_NO_KEY = (
    "Method doesn't allow unregistered callers (callers without established identity). Please use "
    "API Key or other form of API consumer identity to call this API."
)
GEMINI_BAD_KEY = "API key not valid. Please pass a valid API key."


def pget(obj: Any, name: str) -> Any:
    """Field ``name`` (lowerCamelCase) of a proto-JSON object, also under its snake_case name,
    as Google's JSON parser accepts both (google-genai sends e.g. ``thinking_budget``)."""
    if not isinstance(obj, dict):
        return None
    value = obj.get(name)
    if value is None:
        value = obj.get("".join("_" + c.lower() if c.isupper() else c for c in name))
    return value


def google_id() -> str:
    """A Gemini ``responseId``-like id (23 URL-safe base64 characters)."""
    return base64.urlsafe_b64encode(os.urandom(17)).rstrip(b"=").decode("ascii")


class GoogleStyle(ProviderHandler):
    """What Gemini's native API and its OpenAI-compatible route share: key check, error shape
    ``{"error":{code,message,status,details}}`` (a one-element list where ``LIST_ERRORS``),
    Google frontend headers, no request-id header, the retry hint in a RetryInfo detail."""

    REQUEST_ID_HEADER: str | None = None
    JSON_TYPE = "application/json; charset=UTF-8"
    SSE_TYPE = "text/event-stream"
    LIST_ERRORS = False
    KEY_PREFIXES = ("AIza", "sk-")
    ERRORS = {
        400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
        401: ("UNAUTHENTICATED", "Request had invalid authentication credentials. Expected OAuth 2 access "
                                 "token, login cookie or other valid authentication credential."),
        403: ("PERMISSION_DENIED", GEMINI_NO_KEY),
        404: ("NOT_FOUND", "models/{model} is not found for API version v1beta, or is not supported for "
                           "generateContent. Call ListModels to see the list of available models and "
                           "their supported methods."),
        409: ("ABORTED", "The operation was aborted."),
        429: ("RESOURCE_EXHAUSTED", "You exceeded your current quota, please check your plan and billing "
                                    "details. For more information on this error, head to: "
                                    "https://ai.google.dev/gemini-api/docs/rate-limits."),
        500: ("INTERNAL", "An internal error has occurred. Please retry or report in "
                          "https://developers.generativeai.google/guide/troubleshooting"),
        503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
        504: ("DEADLINE_EXCEEDED", "The request timed out. Please try again."),
    }

    def new_request_id(self) -> str:
        return google_id()

    def base_headers(self, rid: str, content_type: str, b: Behaviour) -> list[tuple[str, str]]:
        h = [
            ("content-type", content_type),
            ("vary", "Origin"),
            ("vary", "X-Origin"),
            ("vary", "Referer"),
            ("date", http_date()),
            ("server", "scaffolding on HTTPServer2"),
            ("x-xss-protection", "0"),
            ("x-frame-options", "SAMEORIGIN"),
            ("x-content-type-options", "nosniff"),
            ("server-timing", f"gfet4t7; dur={processing_ms(b)}"),
        ]
        if content_type.startswith("text/event-stream"):
            h.append(("content-disposition", "attachment"))
        return h

    def ok_headers(self, rid: str, content_type: str, b: Behaviour) -> list[tuple[str, str]]:
        return self.base_headers(rid, content_type, b)

    def retry_headers(self, b: Behaviour) -> list[tuple[str, str]]:
        return []  # the retry hint goes in the body (RetryInfo)

    def error_body(self, e: ErrorSpec) -> Any:
        details = self.quota_details(e.b) if e.details is None and e.status == 429 else e.details
        err: dict[str, Any] = {"code": e.status, "message": e.message, "status": e.kind}
        if details:
            err["details"] = details
        return [{"error": err}] if self.LIST_ERRORS else {"error": err}

    @staticmethod
    def quota_details(b: Behaviour) -> list[dict]:
        details: list[dict] = [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [{
                    "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                    "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                    "quotaDimensions": {"location": "global"},
                    "quotaValue": "10",
                }],
            },
            {
                "@type": "type.googleapis.com/google.rpc.Help",
                "links": [{"description": "Learn more about Gemini API quotas",
                           "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}],
            },
        ]
        if b.retry_after is not None and b.retry_after.strip().isdigit():
            details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo",
                            "retryDelay": f"{b.retry_after.strip()}s"})
        return details

    def key_error(self, key: str | None, rid: str, b: Behaviour | None) -> Reply | None:
        if key is None:
            return self.error(403, rid, GEMINI_NO_KEY, b=b)
        if key_ok(key, self.KEY_PREFIXES):
            return None
        return self.error(400, rid, GEMINI_BAD_KEY, b=b, details=[
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            },
            {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US",
             "message": GEMINI_BAD_KEY},
        ])

    def not_found(self, req: ReceivedRequest, path: str, rid: str, b: Behaviour) -> Reply:
        return self.error(404, rid, f"Method not found: {req.method} {path}", b=b)


class GeminiOpenAIHandler(GoogleStyle, OpenAIHandler):  # type: ignore[misc]
    """Gemini's OpenAI-compatible route (``/v1beta/openai/...``, Bearer key): OpenAI chat
    completions (JSON and SSE with include_usage semantics), embeddings and models, with the
    model named as requested, Google's headers and Google errors wrapped in a one-element list."""

    provider = "gemini"
    PREFIX = "/v1beta/openai"
    LIST_ERRORS = True
    SNAPSHOTS: dict[str, str] = {}
    OBFUSCATION = False
    OWNED_BY = "google"
    MODELS_PATH = None
    MODELS = (("gemini-2.5-flash", 1750000000), ("gemini-2.5-pro", 1750000000), ("gemini-2.0-flash", 1738000000))
    def __init__(self) -> None:
        self.routes = {
            ("POST", self.PREFIX + "/chat/completions"): self.chat_completions,
            ("POST", self.PREFIX + "/embeddings"): self.embeddings,
            ("GET", self.PREFIX + "/models"): self.list_models,
        }

    def completion_id(self, rid: str) -> str:
        return rid

    def is_reasoning(self, model: str) -> bool:
        return False

    def check_auth(self, req: ReceivedRequest, rid: str, b: Behaviour | None = None) -> Reply | None:
        return self.key_error(bearer(req), rid, b)


class GeminiHandler(GoogleStyle):
    """Gemini Developer API (``/v1beta/...`` and ``/v1/...``; key in ``x-goog-api-key`` or
    ``?key=``): generateContent, streamGenerateContent (SSE with ``?alt=sse``, else a JSON array
    streamed in chunks), countTokens, embedContent, batchEmbedContents, models; and the
    OpenAI-compatible route, answered by ``GeminiOpenAIHandler``.

    usageMetadata: ``promptTokenCount`` = prompt words (+3 per content) plus ``CACHED_TOKENS``
    when the request names ``cachedContent`` (also reported as ``cachedContentTokenCount``);
    ``thoughtsTokenCount`` = ``THOUGHTS_TOKENS`` for models with "2.5" in the name or a request
    with ``thinkingConfig`` (none with ``thinkingBudget: 0``); total = prompt + candidates +
    thoughts. Zero counts are left out, as proto3 JSON does.
    """

    provider = "gemini"
    VERSIONS = ("v1", "v1beta", "v1alpha")
    THOUGHTS_TOKENS = 64
    CACHED_TOKENS = 1024
    EMBEDDING_DIMS = 8
    BAD_JSON_MESSAGE = "Invalid JSON payload received. Unexpected token."
    MODELS_PATH = None
    ACTIONS = {
        "generateContent": "generate_content",
        "streamGenerateContent": "stream_generate_content",
        "countTokens": "count_tokens",
        "embedContent": "embed_content",
        "batchEmbedContents": "batch_embed_contents",
    }
    MODELS: tuple[tuple[str, str, int, int, tuple[str, ...]], ...] = (
        ("gemini-2.5-flash", "Gemini 2.5 Flash", 1048576, 65536, ("generateContent", "countTokens")),
        ("gemini-2.5-pro", "Gemini 2.5 Pro", 1048576, 65536, ("generateContent", "countTokens")),
        ("gemini-2.0-flash", "Gemini 2.0 Flash", 1048576, 8192, ("generateContent", "countTokens")),
        ("gemini-embedding-001", "Gemini Embedding 001", 2048, 1, ("embedContent", "countTextTokens")),
    )

    def __init__(self) -> None:
        self.routes = {}
        self.openai = GeminiOpenAIHandler()

    def __call__(self, req: ReceivedRequest, b: Behaviour) -> Reply:
        path = req.path.split("?", 1)[0]
        if path.startswith(self.openai.PREFIX + "/"):
            return self.openai(req, b)
        reply = super().__call__(req, b)
        if reply.status >= 400 and path.endswith(":streamGenerateContent") and query_param(req, "alt") != "sse":
            reply.body = b"[" + reply.body + b"]"  # the JSON-array stream wraps its error too
        return reply

    def find_route(self, method: str, path: str) -> Route | None:
        version, sep, rest = path[1:].partition("/")
        if not sep or version not in self.VERSIONS:
            return None
        if rest == "models":
            return self.list_models if method == "GET" else None
        if not rest.startswith("models/"):
            return None
        name, colon, action = rest[len("models/"):].partition(":")
        if not name or "/" in name:
            return None
        if not colon:
            return self.get_model if method == "GET" else None
        attr = self.ACTIONS.get(action)
        return getattr(self, attr) if attr and method == "POST" else None

    @staticmethod
    def path_model(req: ReceivedRequest) -> str:
        path = req.path.split("?", 1)[0]
        return path.partition("/models/")[2].partition(":")[0]

    def model_of(self, req: ReceivedRequest) -> str | None:
        return self.path_model(req) or None

    def check_auth(self, req: ReceivedRequest, rid: str, b: Behaviour | None = None) -> Reply | None:
        return self.key_error(req.header("x-goog-api-key") or query_param(req, "key"), rid, b)

    # ---- token counts ----

    def prompt_tokens(self, body: dict) -> tuple[int, int]:
        """(promptTokenCount, cachedContentTokenCount) of a GenerateContentRequest body."""
        contents = body.get("contents")
        messages = [{"content": c.get("parts")} if isinstance(c, dict) else c
                    for c in (contents if isinstance(contents, list) else [])]
        system = pget(body, "systemInstruction")
        if isinstance(system, dict):
            messages.append({"content": system.get("parts")})
        cached = self.CACHED_TOKENS if pget(body, "cachedContent") else 0
        return message_tokens(messages) + cached, cached

    def thoughts(self, model: str, body: dict) -> int:
        thinking = pget(pget(body, "generationConfig"), "thinkingConfig")
        if isinstance(thinking, dict):
            return 0 if pget(thinking, "thinkingBudget") == 0 else self.THOUGHTS_TOKENS
        return self.THOUGHTS_TOKENS if "2.5" in model else 0

    @staticmethod
    def usage_metadata(prompt: int, cached: int, candidates: int = 0, thoughts: int = 0) -> dict:
        usage: dict[str, Any] = {"promptTokenCount": prompt}
        if candidates:
            usage["candidatesTokenCount"] = candidates
        usage["totalTokenCount"] = prompt + candidates + thoughts
        if cached:
            usage["cachedContentTokenCount"] = cached
        usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
        if cached:
            usage["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": cached}]
        if thoughts:
            usage["thoughtsTokenCount"] = thoughts
        return usage

    # ---- :generateContent, :streamGenerateContent ----

    def generate_content(self, req: ReceivedRequest, b: Behaviour, rid: str) -> Reply:
        return self.generate(req, b, rid, None)

    def stream_generate_content(self, req: ReceivedRequest, b: Behaviour, rid: str) -> Reply:
        return self.generate(req, b, rid, "sse" if query_param(req, "alt") == "sse" else "array")

    def generate(self, req: ReceivedRequest, b: Behaviour, rid: str, stream: str | None) -> Reply:
        body, err = self.parse_json(req, rid, b)
        if err:
            return err
        if not isinstance(body.get("contents"), list) or not body["contents"]:
            return self.error(400, rid, "* GenerateContentRequest.contents: contents is not specified\n", b=b)
        model = self.path_model(req)
        prompt, cached = self.prompt_tokens(body)
        words = reply_words(n_words(b))
        final = self.usage_metadata(prompt, cached, len(words), self.thoughts(model, body))

        def response(text: str, usage: dict, done: bool) -> dict:
            candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}}
            if done:
                candidate["finishReason"] = "STOP"
            candidate["index"] = 0
            return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": model, "responseId": rid}

        if stream is None:
            return self.json_reply(rid, b, response(" ".join(words), final, True), final, model, request_id=rid)
        # intermediate chunks carry the prompt counts only; the last (finishReason) the final ones
        partial = self.usage_metadata(prompt, cached)
        texts = [delta_text(i, w) for i, w in enumerate(words)] or [""]
        last = len(texts) - 1
        chunks = [response(t, final if i == last else partial, i == last) for i, t in enumerate(texts)]
        usage_at = {i: c["usageMetadata"] for i, c in enumerate(chunks)}
        if stream == "sse":
            events = [sse_data(c, b"\r\n") for c in chunks]
            return self.stream_reply(rid, b, events, usage_at, model, request_id=rid)
        events = [(b"[" if i == 0 else b",\r\n") + dumps(c) for i, c in enumerate(chunks)]
        events[-1] += b"]"
        return self.stream_reply(rid, b, events, usage_at, model, request_id=rid, content_type=self.JSON_TYPE)

    # ---- :countTokens ----

    def count_tokens(self, req: ReceivedRequest, b: Behaviour, rid: str) -> Reply:
        body, err = self.parse_json(req, rid, b)
        if err:
            return err
        inner = pget(body, "generateContentRequest")
        prompt, cached = self.prompt_tokens(inner if isinstance(inner, dict) else body)
        payload: dict[str, Any] = {"totalTokens": prompt}
        if cached:
            payload["cachedContentTokenCount"] = cached
        payload["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
        return self.json_reply(rid, b, payload)

    # ---- :embedContent, :batchEmbedContents ----

    def embedding(self, request: dict) -> dict:
        content = request.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        dims = valid_dims(pget(request, "outputDimensionality"), self.EMBEDDING_DIMS)
        return {"values": embedding_floats(dumps(parts), dims)}

    def embed_content(self, req: ReceivedRequest, b: Behaviour, rid: str) -> Reply:
        body, err = self.parse_json(req, rid, b)
        if err:
            return err
        if not isinstance(body.get("content"), dict):
            return self.error(400, rid, "* EmbedContentRequest.content: content is not specified\n", b=b)
        return self.json_reply(rid, b, {"embedding": self.embedding(body)})

    def batch_embed_contents(self, req: ReceivedRequest, b: Behaviour, rid: str) -> Reply:
        body, err = self.parse_json(req, rid, b)
        if err:
            return err
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests or not all(isinstance(r, dict) for r in requests):
            return self.error(400, rid, "* BatchEmbedContentsRequest.requests: requests is not specified\n", b=b)
        return self.json_reply(rid, b, {"embeddings": [self.embedding(r) for r in requests]})

    # ---- GET models, models/{id} ----

    @staticmethod
    def _model_obj(mid: str, name: str, inp: int, out: int, methods: tuple[str, ...]) -> dict:
        return {
            "name": "models/" + mid, "version": "001", "displayName": name, "description": name,
            "inputTokenLimit": inp, "outputTokenLimit": out, "supportedGenerationMethods": list(methods),
        }

    def list_models(self, req: ReceivedRequest, b: Behaviour, rid: str) -> Reply:
        return self.json_reply(rid, b, {"models": [self._model_obj(*m) for m in self.MODELS]})

    def get_model(self, req: ReceivedRequest, b: Behaviour, rid: str) -> Reply:
        mid = self.path_model(req)
        for m in self.MODELS:
            if m[0] == mid:
                return self.json_reply(rid, b, self._model_obj(*m))
        return self.error(404, rid, f"models/{mid} is not found for API version "
                          f"{req.path[1:].partition('/')[0]}", b=b)


# --------------------------------------------------------------------------------------------
# Mistral (providers.md §6)
# --------------------------------------------------------------------------------------------


class MistralHandler(OpenAIHandler):
    """Mistral API: chat completions and FIM (JSON and SSE), embeddings, models.

    OpenAI-shaped bodies with a 32-hex ``id``, the model named as requested and usage
    ``{prompt_tokens, completion_tokens, total_tokens}``; a stream carries the usage on its last
    content chunk (with ``finish_reason``), then ``data: [DONE]``. The gateway in front (Kong)
    answers 401 and unknown routes with ``{"message", "request_id"}``; the API's own errors are
    ``{"object":"error",message,type,param,code}``, a missing field 422 (pydantic ``detail``).
    Keys: ``sk-...`` or 32 letters/digits (the real format).
    """

    provider = "mistral"
    REQUEST_ID_HEADER = "mistral-correlation-id"
    SNAPSHOTS: dict[str, str] = {}
    OBFUSCATION = False
    OWNED_BY = "mistralai"
    DIMENSIONS_PARAM = "output_dimension"
    BASE64_EMBEDDINGS = False
    CHAT_MESSAGE_EXTRA = {"tool_calls": None}
    CHAT_EXTRA: dict[str, Any] = {}
    BAD_JSON_MESSAGE = "Invalid JSON body"
    MODELS = (
        ("mistral-small-latest", 1750000000),
        ("mistral-large-latest", 1750000000),
        ("codestral-latest", 1750000000),
        ("mistral-embed", 1750000000),
    )
    ERRORS = {
        400: ("invalid_model", "Invalid model: {model}"),
        401: ("unauthorized", "Unauthorized"),
        403: ("forbidden", "Forbidden"),
        404: ("not_found", "Not Found"),
        422: ("invalid_request_error", "Invalid request"),
        429: ("rate_limited", "Rate limit exceeded"),
        500: ("internal_server_error", "Internal server error"),
        503: ("service_unavailable", "Service unavailable"),
    }
    CODES = {400: "1500", 429: "1300"}  # status -> the `code` of a forced error
    GATEWAY = "gateway"  # error kind of the API gateway's own replies (401, unknown route)

    def __init__(self) -> None:
        self.routes = {
            ("POST", "/v1/chat/completions"): self.chat_completions,
            ("POST", "/v1/fim/completions"): self.fim_completions,
            ("POST", "/v1/embeddings"): self.embeddings,
            ("GET", "/v1/models"): self.list_models,
        }

    def new_request_id(self) -> str:
        return new_hex()

    def completion_id(self, rid: str) -> str:
        return new_hex()

    def is_reasoning(self, model: str) -> bool:
        return False

    # ---- headers, errors, auth ----

    def base_headers(self, rid: str, content_type: str, b: Behaviour) -> list[tuple[str, str]]:
        return [
            ("date", http_date()),
            ("content-type", content_type),
            ("mistral-correlation-id", rid),
            ("x-kong-request-id", new_hex(12)),
            ("x-envoy-upstream-service-time", processing_ms(b)),
            ("server", "cloudflare"),
        ]

    def ok_headers(self, rid: str, content_type: str, b: Behaviour) -> list[tuple[str, str]]:
        return self.base_headers(rid, content_type, b) + [
            ("x-ratelimit-limit-tokens-minute", "500000"),
            ("x-ratelimit-remaining-tokens-minute", "499990"),
            ("x-ratelimit-limit-tokens-month", "1000000000"),
            ("x-ratelimit-remaining-tokens-month", "999999990"),
        ]

    def error_body(self, e: ErrorSpec) -> Any:
        if e.status == 401 or e.kind == self.GATEWAY:  # answered by the API gateway (Kong)
            return {"message": "Unauthorized" if e.status == 401 else e.message, "request_id": e.rid}
        return {"object": "error", "message": e.message, "type": e.kind, "param": e.param,
                "code": e.code or self.CODES.get(e.status)}

    def not_found(self, req: ReceivedRequest, path: str, rid: str, b: Behaviour) -> Reply:
        return self.error(404, rid, "no Route matched with those values", self.GATEWAY, b=b)

    def check_auth(self, req: ReceivedRequest, rid: str, b: Behaviour | None = None) -> Reply | None:
        key = bearer(req)
        if key_ok(key, ("sk-",)) or (key is not None and len(key) == 32 and key.isalnum()):
            return None
        return self.error(401, rid, "Unauthorized", b=b)

    def missing_param(self, name: str, body: dict, rid: str, b: Behaviour) -> Reply:
        detail = [{"type": "missing", "loc": ["body", name], "msg": "Field required", "input": body}]
        return self.error(422, rid, {"detail": detail}, "invalid_request_error", b=b)

    # ---- usage and streams ----

    def chat_usage(self, prompt: int, words: int, model: str) -> dict:
        return {"prompt_tokens": prompt, "completion_tokens": words, "total_tokens": prompt + words}

    def chat_stream(
        self, head: dict, words: list[str], usage: dict, body: dict
    ) -> tuple[list[bytes], dict[int, dict]]:
        events = [chat_chunk(head, [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                     "finish_reason": None}])]
        texts = [delta_text(i, w) for i, w in enumerate(words)] or [""]
        for text in texts[:-1]:
            events.append(chat_chunk(head, [{"index": 0, "delta": {"content": text}, "finish_reason": None}]))
        usage_at = {len(events): usage}
        events.append(chat_chunk(head, [{"index": 0, "delta": {"content": texts[-1]}, "finish_reason": "stop"}],
                                 usage=usage))
        return events, usage_at

    # ---- POST /v1/fim/completions ----

    def fim_completions(self, req: ReceivedRequest, b: Behaviour, rid: str) -> Reply:
        body, model, err = self.model_request(req, rid, b)
        if err:
            return err
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            return self.missing_param("prompt", body, rid, b)
        suffix = body.get("suffix")
        parts = [{"content": prompt}] + ([{"content": suffix}] if isinstance(suffix, str) and suffix else [])
        return self.completion_reply(body, model, message_tokens(parts), b, rid)

    # ---- embeddings and models ----

    def embeddings_usage(self, prompt: int) -> dict:
        return {"prompt_tokens": prompt, "total_tokens": prompt, "completion_tokens": 0}

    def embeddings_payload(self, model: str, data: list, usage: dict) -> dict:
        return {"id": new_hex(), "object": "list", "data": data, "model": model, "usage": usage}

    def _model_obj(self, mid: str, created: int) -> dict:
        obj = super()._model_obj(mid, created)
        obj.update({
            "capabilities": {"completion_chat": "embed" not in mid, "completion_fim": mid.startswith("codestral"),
                             "function_calling": "embed" not in mid, "fine_tuning": False, "vision": False},
            "name": mid, "description": mid, "max_context_length": 131072, "aliases": [],
            "deprecation": None, "type": "base",
        })
        return obj


# --------------------------------------------------------------------------------------------
# xAI (providers.md §7)
# --------------------------------------------------------------------------------------------

# HTTP status -> the gRPC status description xAI puts in `code`
GRPC_TEXT = {
    400: "Client specified an invalid argument",
    401: "The request does not have valid authentication credentials",
    403: "The caller does not have permission to execute the specified operation",
    404: "Some requested entity was not found",
    409: "Some entity that we attempted to create already exists",
    412: "The system is not in a state required for the operation's execution",
    429: "Some resource has been exhausted",
    499: "The operation was cancelled",
    500: "Internal error",
    501: "Operation is not implemented or not supported",
    503: "The service is currently unavailable",
    504: "Deadline expired before operation could complete",
}


class XAIHandler(OpenAIHandler):
    """xAI REST API (OpenAI-compatible): chat completions, responses, embeddings, models.

    Differences from OpenAI: the response id is a UUID (and the upstream request id: no request-id
    header is sent); ``completion_tokens`` excludes reasoning and ``total_tokens`` includes it
    (reasoning for ``grok-4*`` and ``grok-3-mini*`` models); usage also has ``num_sources_used``
    and ``cost_in_usd_ticks`` (1 tick = 1e-10 USD); a chat stream always ends with a usage-only
    chunk (``choices: []``) before ``[DONE]``; errors are flat ``{"code","error"}``; an invalid
    key is a 400. Keys: ``xai-...`` or ``sk-...``.
    """

    provider = "xai"
    REQUEST_ID_HEADER = None
    SNAPSHOTS: dict[str, str] = {}
    OBFUSCATION = False
    OWNED_BY = "xai"
    FINGERPRINT = "fp_c85e32c255"
    CHAT_MESSAGE_EXTRA = {"refusal": None}
    CHAT_EXTRA = {"system_fingerprint": FINGERPRINT}
    # USD ticks per token (grok-4 list prices: $3 / $15 per million)
    INPUT_TICKS = 30_000
    OUTPUT_TICKS = 150_000
    MODELS = (
        ("grok-4", 1752019200),
        ("grok-4-fast-reasoning", 1758240000),
        ("grok-4-fast-non-reasoning", 1758240000),
        ("grok-3", 1743724800),
        ("grok-3-mini", 1743724800),
    )
    ERRORS = {
        400: (GRPC_TEXT[400], "Invalid request content: the request could not be deserialized."),
        401: (GRPC_TEXT[401], "No API key provided. You can obtain an API key from https://console.x.ai."),
        403: (GRPC_TEXT[403], "Your team has either used all available credits or reached its monthly "
                              "spending limit. To continue making API requests, please purchase more "
                              "credits or raise your spending limit."),
        404: (GRPC_TEXT[404], "The model {model} does not exist or your team does not have access to it."),
        429: (GRPC_TEXT[429], "Rate limit exceeded"),
        500: (GRPC_TEXT[500], "Internal server error"),
        503: (GRPC_TEXT[503], "The service is temporarily at capacity. Please retry your request shortly."),
        504: (GRPC_TEXT[504], "Request timed out"),
    }

    def new_request_id(self) -> str:
        return str(uuid.uuid4())

    def completion_id(self, rid: str) -> str:
        return rid

    def response_id(self, rid: str) -> str:
        return rid

    def is_reasoning(self, model: str) -> bool:
        return model.startswith(("grok-4", "grok-3-mini")) and "non-reasoning" not in model

    # ---- headers, errors, auth ----

    def base_headers(self, rid: str, content_type: str, b: Behaviour) -> list[tuple[str, str]]:
        return [("date", http_date()), ("content-type", content_type)]

    def ok_headers(self, rid: str, content_type: str, b: Behaviour) -> list[tuple[str, str]]:
        return self.base_headers(rid, content_type, b)

    def error_kind(self, status: int) -> str:
        return GRPC_TEXT.get(status) or GRPC_TEXT[500 if status >= 500 else 400]

    def error_body(self, e: ErrorSpec) -> Any:
        return {"code": e.kind, "error": e.message}

    def not_found(self, req: ReceivedRequest, path: str, rid: str, b: Behaviour) -> Reply:
        return self.error(404, rid, f"No handler found for {req.method} {path}", b=b)

    @staticmethod
    def mask_key(key: str | None) -> str:
        # as xAI does: the first and last two characters only (nothing of a short key)
        if not key or len(key) < 8:
            return "***"
        return key[:2] + "***" + key[-2:]

    def check_auth(self, req: ReceivedRequest, rid: str, b: Behaviour | None = None) -> Reply | None:
        key = bearer(req)
        if key is None:
            return self.error(401, rid, self.ERRORS[401][1], b=b)
        if not key_ok(key, ("xai-", "sk-")):
            return self.error(
                400, rid, f"Incorrect API key provided: {self.mask_key(key)}. You can obtain an API key "
                "from https://console.x.ai.", b=b,
            )
        return None

    # ---- usage ----

    def extra_usage(self, prompt: int, output: int) -> dict:
        return {"num_sources_used": 0, "cost_in_usd_ticks": prompt * self.INPUT_TICKS + output * self.OUTPUT_TICKS}

    def chat_usage(self, prompt: int, words: int, model: str) -> dict:
        reasoning = self.REASONING_TOKENS if self.is_reasoning(model) else 0
        return {
            "prompt_tokens": prompt,
            "completion_tokens": words,  # xAI: completion_tokens excludes reasoning ...
            "total_tokens": prompt + words + reasoning,  # ... and total_tokens includes it
            "prompt_tokens_details": {"text_tokens": prompt, "audio_tokens": 0, "image_tokens": 0,
                                      "cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": reasoning, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
            **self.extra_usage(prompt, words + reasoning),
        }

    def responses_usage(self, prompt: int, words: int, model: str) -> dict:
        usage = super().responses_usage(prompt, words, model)
        usage.update(self.extra_usage(prompt, usage["output_tokens"]))
        return usage

    def chat_stream(
        self, head: dict, words: list[str], usage: dict, body: dict
    ) -> tuple[list[bytes], dict[int, dict]]:
        fp = self.FINGERPRINT
        events = []
        for i, w in enumerate(words):
            delta = {"content": delta_text(i, w)}
            if i == 0:
                delta["role"] = "assistant"
            events.append(chat_chunk(head, [{"index": 0, "delta": delta}], system_fingerprint=fp))
        events.append(chat_chunk(head, [{"index": 0, "delta": {}, "finish_reason": "stop"}], system_fingerprint=fp))
        usage_at = {len(events): usage}  # always, with or without stream_options.include_usage
        events.append(chat_chunk(head, [], usage=usage, system_fingerprint=fp))
        return events, usage_at


# provider name -> factory (zero-argument callable, e.g. a class) returning a Handler
HANDLERS: dict[str, Callable[[], Handler]] = {
    "openai": OpenAIHandler,
    "anthropic": AnthropicHandler,
    "gemini": GeminiHandler,
    "mistral": MistralHandler,
    "xai": XAIHandler,
}


# --------------------------------------------------------------------------------------------
# The HTTP/1.1 server
# --------------------------------------------------------------------------------------------

_READ_SIZE = 256 * 1024


class _Stop(Exception):
    """The response ended the connection on purpose (abort or stall)."""


class FakeUpstream:
    """One fake provider upstream listening on ``host:port`` (port 0 picks a free port)."""

    def __init__(
        self,
        provider: str = "openai",
        host: str = "127.0.0.1",
        port: int = 0,
        behaviour: Behaviour | None = None,
        record: bool = True,
    ) -> None:
        if provider not in HANDLERS:
            raise ValueError(f"unknown provider {provider!r} (known: {', '.join(sorted(HANDLERS))})")
        self.provider = provider
        self.host = host
        self.port = port
        self.behaviour = behaviour if behaviour is not None else Behaviour()
        self.record = record
        self.received: list[ReceivedRequest] = []
        self.sent: list[SentResponse] = []
        self.connections = 0  # TCP connections accepted so far
        self.connections_closed = 0  # ... and ended, by either side
        self.handler: Handler = HANDLERS[provider]()
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ----

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def clear(self) -> None:
        """Forget recorded requests and responses."""
        self.received.clear()
        self.sent.clear()

    async def astart(self) -> FakeUpstream:
        """Start listening in the running loop; returns once listening (``port`` is set)."""
        if self._server is not None:
            raise RuntimeError("already started")
        self._server = await asyncio.start_server(
            self._on_connection, self.host, self.port, backlog=1024, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def aclose(self) -> None:
        """Stop listening and close every connection (in the loop the server runs in)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()
        await asyncio.sleep(0)  # let transports finish closing

    async def serve(self) -> None:
        """Listen in the running loop until cancelled (starts listening if not yet started)."""
        if self._server is None:
            await self.astart()
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            await self.aclose()

    def start(self) -> FakeUpstream:
        """Run in a new event loop in a daemon thread; returns once listening."""
        if self._thread is not None:
            raise RuntimeError("already started")
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                try:
                    loop.run_until_complete(self.astart())
                except BaseException as e:  # noqa: BLE001 - reported to start()
                    errors.append(e)
                    return
                finally:
                    ready.set()
                loop.run_forever()
            finally:
                try:
                    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                    for t in pending:
                        t.cancel()
                    if pending:
                        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                    loop.run_until_complete(loop.shutdown_asyncgens())
                finally:
                    asyncio.set_event_loop(None)
                    loop.close()

        self._thread = threading.Thread(target=run, name=f"fake-{self.provider}", daemon=True)
        self._thread.start()
        ready.wait()
        if errors:
            self._thread.join()
            self._thread = None
            raise errors[0]
        return self

    def stop(self) -> None:
        """Close the server and its connections and join the thread (for ``start()``)."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        if loop.is_running():
            fut = asyncio.run_coroutine_threadsafe(self.aclose(), loop)
            try:
                fut.result(timeout=10)
            except Exception:  # noqa: BLE001 - stopping anyway
                pass
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._thread = None
        self._loop = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- connections ----

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self.connections += 1
        try:
            await self._serve_connection(reader, writer)
        except (_Stop, ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            self.connections_closed += 1
            if task is not None:
                self._tasks.discard(task)
            if not writer.transport.is_closing():
                writer.transport.close()

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # h11 parses each request (a fresh Connection per request, fed what the previous one left
        # over); responses are serialised here directly, which is exact and much cheaper than
        # h11's per-header validation on the hot path.
        leftover = b""
        while True:
            conn = h11.Connection(h11.SERVER)
            if leftover:
                conn.receive_data(leftover)
            try:
                got = await self._read_request(conn, reader, writer)
            except h11.RemoteProtocolError as e:
                body = dumps({"error": {"message": f"Bad request: {e}", "type": "invalid_request_error",
                                        "param": None, "code": None}})
                writer.write(
                    b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                    b"connection: close\r\n\r\n%s"
                    % (e.error_status_hint, _reason(e.error_status_hint), len(body), body)
                )
                await writer.drain()
                return
            if got is None:
                return
            req, keep_alive, chunked_ok = got
            leftover, closed = conn.trailing_data
            keep_alive = await self._respond(reader, writer, req, keep_alive and not closed, chunked_ok)
            if not keep_alive:
                return

    @staticmethod
    async def _read_request(
        conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[ReceivedRequest, bool, bool] | None:
        """(request, client allows keep-alive, client speaks HTTP/1.1) or None at EOF."""
        request: h11.Request | None = None
        parts: list[bytes] = []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if conn.they_are_waiting_for_100_continue:
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    conn.send(h11.InformationalResponse(status_code=100, headers=[]))
                conn.receive_data(await reader.read(_READ_SIZE))
                continue
            kind = type(event)
            if kind is h11.Request:
                request = event
            elif kind is h11.Data:
                parts.append(event.data)
            elif kind is h11.EndOfMessage:
                break
            else:  # ConnectionClosed (or PAUSED, which cannot happen here)
                return None
        assert request is not None
        body = bytes(parts[0]) if len(parts) == 1 else b"".join(parts)
        headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in request.headers]
        http11 = request.http_version == b"1.1"
        keep_alive = http11
        if http11:
            for n, v in headers:
                if n == "connection" and "close" in v.lower():
                    keep_alive = False
        req = ReceivedRequest(
            method=request.method.decode("ascii"),
            path=request.target.decode("latin-1"),
            headers=headers,
            body=body,
        )
        return req, keep_alive, http11

    async def _respond(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        req: ReceivedRequest,
        keep_alive: bool,
        chunked_ok: bool,
    ) -> bool:
        """Write the reply to ``req``; returns whether the connection can serve another request."""
        b = effective_behaviour(self.behaviour, req)
        record = self.record
        if record:
            self.received.append(req)
        try:
            reply = self.handler(req, b)
        except Exception as e:  # noqa: BLE001 - a handler bug must not hang the client
            traceback.print_exc()
            reply = Reply(
                500,
                [("content-type", "application/json")],
                body=dumps({"error": {"message": f"fake handler crashed: {e!r}", "type": "server_error",
                                      "param": None, "code": None}}),
            )
        if b.first_byte_delay > 0:
            await asyncio.sleep(b.first_byte_delay)

        headers = list(reply.headers)
        streaming = reply.events is not None
        chunked = streaming and chunked_ok  # an HTTP/1.0 client gets a close-delimited stream
        gz = zlib.compressobj(6, zlib.DEFLATED, 31) if b.gzip else None
        if streaming:
            chunks = reply.events
            if gz is not None:
                headers.append(("content-encoding", "gzip"))
            if chunked:
                headers.append(("transfer-encoding", "chunked"))
            else:
                keep_alive = False
        else:
            body = reply.body
            if gz is not None:
                body = gz.compress(body) + gz.flush()
                headers.append(("content-encoding", "gzip"))
            headers.append(("content-length", str(len(body))))
            chunks = [body]
        if not keep_alive:
            headers.append(("connection", "close"))
        head = _serialise_head(reply.status, headers)

        rec: SentResponse | None = None
        buf: bytearray | None = None
        if record:
            buf = bytearray()
            rec = SentResponse(reply.status, headers, buf, None, reply.model, reply.request_id, [])  # type: ignore[arg-type]
            self.sent.append(rec)

        reset = b.reset_after_chunks
        stall = b.stall_after_chunks
        usage_at = reply.usage_at

        if not streaming and reset is None and stall is None:
            # fast path: headers and body in one write
            body = chunks[0]
            if rec is not None:
                rec.chunk_times.append(time.monotonic())
                rec.body = body
                rec.usage = usage_at.get(0)
            writer.write(head + body)
            await writer.drain()
            return keep_alive

        writer.write(head)
        if streaming:
            await writer.drain()
        delay = b.chunk_delay
        last = len(chunks) - 1
        for i, chunk in enumerate(chunks):
            if i == reset:
                await self._abort(writer, rec, buf)
            if i == stall:
                await self._stall(reader, writer, rec, buf)
            if i and delay > 0:
                await asyncio.sleep(delay)
            data = chunk
            if streaming and gz is not None:
                data = gz.compress(chunk) + (gz.flush() if i == last else gz.flush(zlib.Z_SYNC_FLUSH))
            if rec is not None:
                rec.chunk_times.append(time.monotonic())
                buf += data  # type: ignore[operator]
                if i == last:
                    rec.body = bytes(buf)  # type: ignore[arg-type]
                u = usage_at.get(i)
                if u is not None:
                    rec.usage = u
            if data:
                writer.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
                await writer.drain()
        n = len(chunks)
        if reset is not None and reset >= n:
            await self._abort(writer, rec, buf)
        if stall is not None and stall >= n:
            await self._stall(reader, writer, rec, buf)
        if chunked:
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        return keep_alive

    @staticmethod
    def _finish_record(rec: SentResponse | None, buf: bytearray | None) -> None:
        if rec is not None and buf is not None:
            rec.body = bytes(buf)

    async def _abort(self, writer: asyncio.StreamWriter, rec: SentResponse | None, buf: bytearray | None) -> None:
        self._finish_record(rec, buf)
        await writer.drain()
        transport = writer.transport
        # let what was written reach the socket first, so the peer sees the chunks, then the abort
        for _ in range(1000):
            if not transport.get_write_buffer_size():
                break
            await asyncio.sleep(0.001)
        transport.abort()
        raise _Stop

    async def _stall(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
        rec: SentResponse | None, buf: bytearray | None,
    ) -> None:
        self._finish_record(rec, buf)
        await writer.drain()
        while await reader.read(_READ_SIZE):  # keep the connection open until the peer closes it
            pass
        raise _Stop


def _serialise_head(status: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, _reason(status))]
    for n, v in headers:
        if "\n" in v or "\r" in v or "\n" in n or "\r" in n or ":" in n:
            raise ValueError(f"invalid response header {n!r}")
        lines.append(b"%s: %s\r\n" % (n.encode("latin-1"), v.encode("latin-1")))
    lines.append(b"\r\n")
    return b"".join(lines)


# --------------------------------------------------------------------------------------------
# Running fakes in a loop / as a process
# --------------------------------------------------------------------------------------------


async def start_fakes(
    pairs: list[tuple[str, int]], host: str = "127.0.0.1", record: bool = False
) -> list[FakeUpstream]:
    """Start one fake per (provider, port) in the running loop; close them all on failure."""
    fakes: list[FakeUpstream] = []
    try:
        for provider, port in pairs:
            fake = FakeUpstream(provider, host=host, port=port, record=record)
            await fake.astart()
            fakes.append(fake)
    except BaseException:
        for fake in fakes:
            await fake.aclose()
        raise
    return fakes


async def run_fakes(ports: dict[str, int], host: str = "127.0.0.1", record: bool = False) -> list[FakeUpstream]:
    """Start fakes ({provider: port}) in the running loop; they listen when this returns.

    Stop them with ``await fake.aclose()``.
    """
    return await start_fakes(list(ports.items()), host=host, record=record)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m metrion_cli.fakes",
        description="Run fake LLM provider upstreams until SIGTERM/SIGINT.",
    )
    p.add_argument("fakes", nargs="+", metavar="PROVIDER=PORT",
                   help=f"providers: {', '.join(sorted(HANDLERS))}; port 0 picks a free port")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--no-record", action="store_true", help="do not keep requests/responses in memory")
    args = p.parse_args(argv)
    pairs = []
    for spec in args.fakes:
        provider, sep, port = spec.partition("=")
        if not sep or provider not in HANDLERS:
            p.error(f"bad fake {spec!r}: expected PROVIDER=PORT with PROVIDER one of {', '.join(sorted(HANDLERS))}")
        try:
            port_n = int(port)
            if not 0 <= port_n <= 65535:
                raise ValueError
        except ValueError:
            p.error(f"bad port in {spec!r}")
        pairs.append((provider, port_n))
    args.pairs = pairs
    return args


async def _amain(pairs: list[tuple[str, int]], host: str, record: bool) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        fakes = await start_fakes(pairs, host=host, record=record)
    except OSError as e:
        print(f"fakes: cannot listen: {e}", file=sys.stderr, flush=True)
        return 1
    for fake in fakes:
        print(f"fake {fake.provider} listening on {fake.url}")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        for fake in fakes:
            await fake.aclose()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    return asyncio.run(_amain(args.pairs, args.host, not args.no_record))


if __name__ == "__main__":
    sys.exit(main())
