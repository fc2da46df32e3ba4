"""Google Gemini (Generative Language API), providers.md section 5.

Native routes `/{v1,v1beta}/models/{model}:{method}` (generateContent, streamGenerateContent,
countTokens, embedContent, batchEmbedContents) and the OpenAI-compatible
`/v1beta/openai/...`, whose bodies and streams are OpenAI's.
"""

import json
import re

from . import CredentialSlot, Usage, as_int, json_object, openai

NAME = "gemini"
DEFAULT_UPSTREAM = "https://generativelanguage.googleapis.com"
# The SDK sends x-goog-api-key; REST users put ?key= in the query. The OpenAI-compatible route
# takes Bearer.
CREDENTIALS = (
    CredentialSlot("header", "x-goog-api-key"),
    CredentialSlot("query", "key"),
    CredentialSlot("header", "authorization", "Bearer "),
)
REQUEST_ID_HEADER = None  # the SDK reads none; the body has responseId
FIXED_REQUEST_HEADERS: dict[str, str] = {}
REQUIRED_FIELDS = {
    ":generateContent": ("contents",),
    ":streamGenerateContent": ("contents",),
    ":embedContent": ("content",),
    ":batchEmbedContents": ("requests",),
    "/openai/chat/completions": ("model", "messages"),
}

_MODEL_IN_PATH = re.compile(r"/models/([^/:?]+)")

# kind -> (status, google.rpc status)
_ERRORS = {
    "missing_credential": (401, "UNAUTHENTICATED"),
    "invalid_token": (401, "UNAUTHENTICATED"),
    "conflicting_credentials": (401, "UNAUTHENTICATED"),
    "no_stored_key": (401, "UNAUTHENTICATED"),
    "bad_request": (400, "INVALID_ARGUMENT"),
    "not_found": (404, "NOT_FOUND"),
    "monthly_cap": (429, "RESOURCE_EXHAUSTED"),
    "rate_limit": (429, "RESOURCE_EXHAUSTED"),
    "internal": (500, "INTERNAL"),
    "bad_gateway": (502, "UNAVAILABLE"),
    "unavailable": (503, "UNAVAILABLE"),
    "timeout": (504, "DEADLINE_EXCEEDED"),
}


def is_openai_compatible(path: str) -> bool:
    return "/openai/" in path


def error(kind: str, message: str) -> tuple[int, dict[str, str], bytes]:
    status, rpc_status = _ERRORS[kind]
    body = {"error": {"code": status, "message": message, "status": rpc_status}}
    return status, {"content-type": "application/json"}, json.dumps(body).encode()


def model_from_request(path: str, body: dict | None) -> str | None:
    if is_openai_compatible(path):
        return openai.model_from_request(path, body)
    match = _MODEL_IN_PATH.search(path)
    return match.group(1) if match else None


def normalise(meta: dict) -> Usage:
    """candidatesTokenCount excludes thoughts; Metrion's output_tokens includes them.
    Tool-use prompt tokens are input the model read, so they count as input."""
    prompt = as_int(meta.get("promptTokenCount"))
    tool_prompt = as_int(meta.get("toolUsePromptTokenCount"))
    candidates = as_int(meta.get("candidatesTokenCount"))
    thoughts = as_int(meta.get("thoughtsTokenCount"))
    output = None if candidates is None and thoughts is None else (candidates or 0) + (thoughts or 0)
    return Usage(
        input_tokens=None if prompt is None else prompt + (tool_prompt or 0),
        output_tokens=output,
        cached_tokens=as_int(meta.get("cachedContentTokenCount")),
        reasoning_tokens=thoughts,
        total_tokens=as_int(meta.get("totalTokenCount")),
        raw=meta,
    )


def _model_version(obj: dict) -> str | None:
    value = obj.get("modelVersion")
    return value if isinstance(value, str) else None


def read_json(path: str, body) -> tuple[str | None, Usage]:
    if is_openai_compatible(path):
        return openai.read_json(path, body)
    # streamGenerateContent without alt=sse answers a JSON array of partial responses.
    parts = body if isinstance(body, list) else [body]
    model, usage = None, None
    for part in parts:
        if isinstance(part, dict):
            model = _model_version(part) or model
            if isinstance(part.get("usageMetadata"), dict):
                usage = part["usageMetadata"]
    model = model or model_from_request(path, None)
    if usage is None:
        return model, Usage(note="not reported: the response had no usageMetadata")
    return model, normalise(usage)


def ask_for_stream_usage(path: str, body: bytes) -> bytes | None:
    return openai.ask_for_stream_usage(path, body) if is_openai_compatible(path) else None


is_usage_only_event = openai.is_usage_only_event


class StreamReader:
    """Every chunk may carry usageMetadata; the last one holds the final counts."""

    def __init__(self, path: str) -> None:
        self.model: str | None = None
        self.error: str | None = None
        self._path = path
        self._usage: dict | None = None

    def feed(self, event: str | None, data: bytes) -> None:
        obj = json_object(data)
        if obj is None:
            return
        self.model = _model_version(obj) or self.model
        if isinstance(obj.get("usageMetadata"), dict):
            self._usage = obj["usageMetadata"]
        err = obj.get("error")
        if isinstance(err, dict) and err.get("message"):
            self.error = str(err["message"])[:500]

    def usage(self) -> Usage:
        if self._usage is None:
            return Usage(note="not reported: the stream carried no usageMetadata")
        return normalise(self._usage)


def stream_reader(path: str):
    if is_openai_compatible(path):
        return openai.stream_reader(path)
    return StreamReader(path)
