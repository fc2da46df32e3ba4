"""Mistral: /v1/chat/completions, /v1/fim/completions, /v1/embeddings (providers.md section 6).

Usage has OpenAI's chat shape; in a stream it rides on the last content chunk.
"""

import json

from . import ERROR_STATUS, CredentialSlot, openai

NAME = "mistral"
DEFAULT_UPSTREAM = "https://api.mistral.ai"
CREDENTIALS = (CredentialSlot("header", "authorization", "Bearer "),)
REQUEST_ID_HEADER = "mistral-correlation-id"
FIXED_REQUEST_HEADERS: dict[str, str] = {}
REQUIRED_FIELDS = {
    "/v1/chat/completions": ("model", "messages"),
    "/v1/fim/completions": ("model", "prompt"),
}

_TYPES = {
    "bad_request": "invalid_request_error", "not_found": "not_found", "monthly_cap": "rate_limited",
    "rate_limit": "rate_limited", "internal": "internal_error", "bad_gateway": "internal_error",
    "unavailable": "service_unavailable", "timeout": "timeout",
}

model_from_request = openai.model_from_request
read_json = openai.read_json


def error(kind: str, message: str) -> tuple[int, dict[str, str], bytes]:
    status = ERROR_STATUS[kind]
    if status == 401:
        body: dict = {"message": message, "request_id": None}
    else:
        body = {"object": "error", "message": message, "type": _TYPES[kind], "param": None, "code": None}
    return status, {"content-type": "application/json"}, json.dumps(body).encode()


class StreamReader(openai.StreamReader):
    def usage(self):
        usage = super().usage()
        if usage.raw is None:
            usage.note = "not reported: the stream carried no usage"
        return usage


def stream_reader(path: str) -> StreamReader:
    return StreamReader()
