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
    provider name to a zero-argument factory returning such a callable (a class works). Anthropic,
    Gemini, Mistral and xAI go there later; xAI can subclass ``OpenAIHandler``.

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
import zlib
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Callable

import h11

__all__ = [
    "Behaviour",
    "FakeUpstream",
    "HANDLERS",
    "OpenAIHandler",
    "ReceivedRequest",
    "Reply",
    "SentResponse",
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
    request_id: str | None  # the request-id header value sent (x-request-id for OpenAI)
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
# OpenAI (providers.md §3)
# --------------------------------------------------------------------------------------------


class OpenAIHandler:
    """OpenAI API: chat completions, responses, embeddings, models.

    Hooks for subclasses (xAI): ``snapshot``, ``chat_usage``, ``error``, ``base_headers``,
    ``check_auth``, ``routes``.
    """

    provider = "openai"
    api_version = "2020-10-01"
    # model name -> dated snapshot reported in responses; other names are returned as given
    SNAPSHOTS: dict[str, str] = {"gpt-4o-mini": "gpt-4o-mini-2024-07-18"}
    REASONING_TOKENS = 64  # reasoning tokens reported for reasoning models ("o..." names)
    EMBEDDING_DIMS = 8
    MODELS: tuple[tuple[str, int], ...] = (
        ("gpt-4o-mini", 1721172741),
        ("gpt-4o", 1715367049),
        ("gpt-4.1", 1744316542),
        ("o3-mini", 1737146383),
        ("text-embedding-3-small", 1705948997),
    )

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Callable[[ReceivedRequest, Behaviour, str], Reply]] = {
            ("POST", "/v1/chat/completions"): self.chat_completions,
            ("POST", "/v1/responses"): self.responses,
            ("POST", "/v1/embeddings"): self.embeddings,
            ("GET", "/v1/models"): self.list_models,
        }

    # ---- entry point ----

    def __call__(self, req: ReceivedRequest, b: Behaviour) -> Reply:
        rid = "req_" + new_hex()
        if b.status is not None:
            return self.forced_error(b.status, req, b, rid)
        path = req.path.split("?", 1)[0]
        route = self.routes.get((req.method, path))
        if route is None:
            if req.method == "GET" and path.startswith("/v1/models/") and len(path) > 11:
                route = self.retrieve_model
            else:
                return self.error(404, rid, f"Invalid URL ({req.method} {path})")
        denied = self.check_auth(req, rid)
        if denied is not None:
            return denied
        return route(req, b, rid)

    # ---- headers, errors, auth ----

    def base_headers(self, rid: str, content_type: str, b: Behaviour) -> list[tuple[str, str]]:
        return [
            ("date", http_date()),
            ("content-type", content_type),
            ("x-request-id", rid),
            ("openai-organization", "metrion-fake"),
            ("openai-processing-ms", str(max(1, round(b.first_byte_delay * 1000)))),
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

    def error(
        self,
        status: int,
        rid: str,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        b: Behaviour | None = None,
        extra_headers: list[tuple[str, str]] | None = None,
    ) -> Reply:
        body = dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})
        headers = self.base_headers(rid, "application/json", b or _DEFAULT_BEHAVIOUR)
        if extra_headers:
            headers += extra_headers
        return Reply(status, headers, body=body, request_id=rid)

    @staticmethod
    def bearer(req: ReceivedRequest) -> str | None:
        auth = req.header("authorization")
        if not auth:
            return None
        scheme, _, token = auth.strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        return token.strip() or None

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

    def check_auth(self, req: ReceivedRequest, rid: str) -> Reply | None:
        key = self.bearer(req)
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
        if not key.startswith("sk-") or len(key) <= 3:
            return self.invalid_key(rid, key)
        return None

    def forced_error(self, status: int, req: ReceivedRequest, b: Behaviour, rid: str) -> Reply:
        """The error reply for Behaviour.status / x-fake-status (providers.md error table)."""
        if status == 401:
            return self.invalid_key(rid, self.bearer(req), b)
        if status == 400:
            return self.error(
                400, rid, "Invalid value for 'messages': expected an array of objects.",
                param="messages", b=b,
            )
        if status == 404:
            model = self._model_of(req) or "unknown"
            return self.error(
                404, rid, f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found", b=b,
            )
        if status == 429:
            model = self._model_of(req) or "gpt-4o-mini"
            extra = [("retry-after", b.retry_after)] if b.retry_after is not None else []
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

    @staticmethod
    def _model_of(req: ReceivedRequest) -> str | None:
        if not req.body:
            return None
        try:
            body = json.loads(req.body)
        except ValueError:
            return None
        model = body.get("model") if isinstance(body, dict) else None
        return model if isinstance(model, str) else None

    def parse_json(self, req: ReceivedRequest, rid: str, b: Behaviour) -> tuple[dict | None, Reply | None]:
        try:
            body = json.loads(req.body)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return None, self.error(
                400,
                rid,
                "We could not parse the JSON body of your request. (HINT: This likely means you "
                "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
                "but what was sent was not valid JSON. If you have trouble figuring out how to fix "
                "this, please contact us through our help center at help.openai.com.)",
                b=b,
            )
        return body, None

    def require_model(self, body: dict, rid: str, b: Behaviour) -> tuple[str | None, Reply | None]:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return None, self.error(
                400, rid, "you must provide a model parameter", param="model", b=b
            )
        return model, None

    # ---- model naming and usage ----

    def snapshot(self, model: str) -> str:
        return self.SNAPSHOTS.get(model, model)

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
        body, err = self.parse_json(req, rid, b)
        if err:
            return err
        model, err = self.require_model(body, rid, b)
        if err:
            return err
        messages = body.get("messages")
        if not isinstance(messages, list):
            if messages is None:
                return self.error(
                    400, rid, "Missing required parameter: 'messages'.", param="messages", b=b
                )
            return self.error(
                400, rid,
                f"Invalid type for 'messages': expected an array, but got {type(messages).__name__} instead.",
                param="messages", b=b,
            )
        prompt = 0
        for m in messages:
            prompt += 3 + (count_words(m.get("content")) if isinstance(m, dict) else 0)
        prompt = max(1, prompt)
        n = min(b.chunks if b.chunks is not None else DEFAULT_CHUNKS, MAX_CHUNKS)
        words = reply_words(n)
        usage = self.chat_usage(prompt, n, model)
        snap = self.snapshot(model)
        cid = "chatcmpl-" + new_hex(12)
        created = int(time.time())

        if body.get("stream") is not True:
            payload = {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": snap,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": " ".join(words)},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
                "service_tier": "default",
                "system_fingerprint": "fp_fake",
            }
            return Reply(
                200, self.ok_headers(rid, "application/json", b), body=dumps(payload),
                usage_at={0: usage}, model=snap, request_id=rid,
            )

        opts = body.get("stream_options")
        opts = opts if isinstance(opts, dict) else {}
        include_usage = opts.get("include_usage") is True
        obfuscate = opts.get("include_obfuscation") is not False
        head = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": snap}

        def chunk(choices: list, usage_obj: dict | None = None, obf: str | None = None) -> bytes:
            d = dict(head)
            d["choices"] = choices
            d["usage"] = usage_obj
            if obf is not None:
                d["obfuscation"] = obf
            return b"data: " + dumps(d) + b"\n\n"

        events = [
            chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        ]
        for i, w in enumerate(words):
            events.append(
                chunk(
                    [{"index": 0, "delta": {"content": w if i == 0 else " " + w}, "finish_reason": None}],
                    obf=_OBFUSCATION[i % len(_OBFUSCATION)] if obfuscate else None,
                )
            )
        events.append(chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
        usage_at: dict[int, dict] = {}
        if include_usage:
            usage_at[len(events)] = usage
            events.append(chunk([], usage))
        events.append(b"data: [DONE]\n\n")
        return Reply(
            200, self.ok_headers(rid, "text/event-stream; charset=utf-8", b), events=events,
            usage_at=usage_at, model=snap, request_id=rid,
        )

    # ---- POST /v1/responses ----

    def responses(self, req: ReceivedRequest, b: Behaviour, rid: str) -> Reply:
        body, err = self.parse_json(req, rid, b)
        if err:
            return err
        model, err = self.require_model(body, rid, b)
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
        n = min(b.chunks if b.chunks is not None else DEFAULT_CHUNKS, MAX_CHUNKS)
        words = reply_words(n)
        text = " ".join(words)
        usage = self.responses_usage(prompt, n, model)
        snap = self.snapshot(model)
        reasoning = self.is_reasoning(model)
        resp_id = "resp_" + new_hex(24)
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
            return Reply(
                200, self.ok_headers(rid, "application/json", b), body=dumps(payload),
                usage_at={0: usage}, model=snap, request_id=rid,
            )

        events: list[bytes] = []

        def ev(type_: str, **fields: Any) -> None:
            d = {"type": type_, "sequence_number": len(events)}
            d.update(fields)
            events.append(b"event: " + type_.encode() + b"\ndata: " + dumps(d) + b"\n\n")

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
            ev(
                "response.output_text.delta", item_id=msg_id, output_index=idx, content_index=0,
                delta=w if i == 0 else " " + w, logprobs=[],
                obfuscation=_OBFUSCATION[i % len(_OBFUSCATION)],
            )
        ev(
            "response.output_text.done", item_id=msg_id, output_index=idx, content_index=0,
            text=text, logprobs=[],
        )
        ev("response.content_part.done", item_id=msg_id, output_index=idx, content_index=0, part=part_done)
        ev("response.output_item.done", output_index=idx, item=msg_done)
        usage_at = {len(events): usage}
        ev("response.completed", response=response_obj("completed", final_output, usage))
        return Reply(
            200, self.ok_headers(rid, "text/event-stream; charset=utf-8", b), events=events,
            usage_at=usage_at, model=snap, request_id=rid,
        )

    # ---- POST /v1/embeddings ----

    def embeddings(self, req: ReceivedRequest, b: Behaviour, rid: str) -> Reply:
        body, err = self.parse_json(req, rid, b)
        if err:
            return err
        model, err = self.require_model(body, rid, b)
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
        dims = body.get("dimensions")
        if not isinstance(dims, int) or isinstance(dims, bool) or not 1 <= dims <= 4096:
            dims = self.EMBEDDING_DIMS
        as_base64 = body.get("encoding_format") == "base64"
        prompt = 0
        data = []
        for i, item in enumerate(inputs):
            if isinstance(item, str):
                prompt += max(1, len(item.split()))
                key = item.encode("utf-8")
            else:
                prompt += max(1, len(item))
                key = dumps(item)
            packed = embedding_bytes(key, dims)
            if as_base64:
                emb: Any = base64.b64encode(packed).decode("ascii")
            else:
                emb = list(struct.unpack(f"<{dims}f", packed))
            data.append({"object": "embedding", "index": i, "embedding": emb})
        usage = {"prompt_tokens": prompt, "total_tokens": prompt}
        payload = {"object": "list", "data": data, "model": model, "usage": usage}
        return Reply(
            200, self.ok_headers(rid, "application/json", b), body=dumps(payload),
            usage_at={0: usage}, model=model, request_id=rid,
        )

    # ---- GET /v1/models, /v1/models/{id} ----

    def _model_obj(self, mid: str, created: int) -> dict:
        return {"id": mid, "object": "model", "created": created, "owned_by": "system"}

    def list_models(self, req: ReceivedRequest, b: Behaviour, rid: str) -> Reply:
        payload = {"object": "list", "data": [self._model_obj(m, c) for m, c in self.MODELS]}
        return Reply(200, self.ok_headers(rid, "application/json", b), body=dumps(payload), request_id=rid)

    def retrieve_model(self, req: ReceivedRequest, b: Behaviour, rid: str) -> Reply:
        mid = req.path.split("?", 1)[0][len("/v1/models/"):]
        for m, c in self.MODELS:
            if m == mid:
                return Reply(
                    200, self.ok_headers(rid, "application/json", b),
                    body=dumps(self._model_obj(m, c)), request_id=rid,
                )
        return self.error(
            404, rid, f"The model '{mid}' does not exist", param="model", code="model_not_found", b=b
        )


_DEFAULT_BEHAVIOUR = Behaviour()


def embedding_bytes(key: bytes, dims: int) -> bytes:
    """A deterministic unit vector for ``key``, as little-endian float32 bytes."""
    raw = hashlib.blake2b(key, digest_size=64).digest()
    vals = [(raw[i % 64] - 127.5) / 127.5 + (i // 64) * 1e-3 for i in range(dims)]
    norm = math.sqrt(sum(v * v for v in vals)) or 1.0
    return struct.pack(f"<{dims}f", *(v / norm for v in vals))


# provider name -> factory (zero-argument callable, e.g. a class) returning a Handler
HANDLERS: dict[str, Callable[[], Handler]] = {
    "openai": OpenAIHandler,
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
