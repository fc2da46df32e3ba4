"""xAI (Grok): OpenAI-compatible REST at /v1 (providers.md section 7).

Differs from OpenAI in two facts: chat `completion_tokens` excludes reasoning (Metrion's
output_tokens includes it), and errors are flat `{"code": <gRPC status text>, "error": <message>}`.
"""

import json

from . import ERROR_STATUS, CredentialSlot, Usage, openai

NAME = "xai"
DEFAULT_UPSTREAM = "https://api.x.ai"
CREDENTIALS = (CredentialSlot("header", "authorization", "Bearer "),)
REQUEST_ID_HEADER = None  # unverified whether one is sent (providers.md)
FIXED_REQUEST_HEADERS: dict[str, str] = {}
REQUIRED_FIELDS = {
    "/v1/chat/completions": ("model", "messages"),
    "/v1/responses": ("model",),
}

_GRPC_TEXT = {
    400: "Client specified an invalid argument",
    401: "The request does not have valid authentication credentials",
    404: "Some requested entity was not found",
    429: "Some resource has been exhausted",
    500: "Internal error",
    502: "The service is currently unavailable",
    503: "The service is currently unavailable",
    504: "Deadline expired before operation could complete",
}

model_from_request = openai.model_from_request


def error(kind: str, message: str) -> tuple[int, dict[str, str], bytes]:
    status = ERROR_STATUS[kind]
    body = {"code": _GRPC_TEXT[status], "error": message}
    return status, {"content-type": "application/json"}, json.dumps(body).encode()


def normalise(usage: dict) -> Usage:
    result = openai.normalise(usage)
    if "completion_tokens" in usage and result.output_tokens is not None and result.reasoning_tokens:
        result.output_tokens += result.reasoning_tokens
    return result


def read_json(path: str, body) -> tuple[str | None, Usage]:
    model, usage = openai.read_json(path, body)
    return model, normalise(usage.raw) if usage.raw is not None else usage


class StreamReader(openai.StreamReader):
    normalise = staticmethod(normalise)


def stream_reader(path: str) -> StreamReader:
    return StreamReader()
