"""One row per provider: how its official SDK is pointed at Metrion and called, where the
provider wants its key, and what each usage field means (providers.md section 2).

The `expected_*` functions restate the documented meaning of each row column independently of
addons/providers, so that the end-to-end suite checks meaning, not the implementation.
"""

import secrets
from dataclasses import dataclass
from typing import Any, Callable

import anthropic
import httpx2 as httpx
import openai
from google import genai
from google.genai import errors as genai_errors
from mistralai.client import Mistral
from mistralai.client import errors as mistral_errors

MESSAGES = [{"role": "user", "content": "Tell the gateway hello"}]


class RecordingTransport(httpx.HTTPTransport):
    """Keeps the raw bytes of each exchange, before any content decoding, as the SDK got them."""

    def __init__(self) -> None:
        super().__init__()
        self.exchanges: list[dict] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        exchange = {"request_body": request.content, "chunks": []}
        self.exchanges.append(exchange)
        inner = response.stream

        class Recorded(httpx.SyncByteStream):
            def __iter__(self):
                for chunk in inner:
                    exchange["chunks"].append(chunk)
                    yield chunk

            def close(self):
                inner.close()

        response.stream = Recorded()
        return response

    @property
    def last_response_bytes(self) -> bytes:
        return b"".join(self.exchanges[-1]["chunks"])


def _int(value):
    return value if isinstance(value, int) else None


def _get(d, *keys):
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def expected_openai(u: dict) -> dict:
    return {"input_tokens": u["prompt_tokens"], "output_tokens": u.get("completion_tokens"),
            "cached_tokens": _get(u, "prompt_tokens_details", "cached_tokens"),
            "reasoning_tokens": _get(u, "completion_tokens_details", "reasoning_tokens")}


def expected_xai(u: dict) -> dict:
    reasoning = _get(u, "completion_tokens_details", "reasoning_tokens") or 0
    return {**expected_openai(u), "output_tokens": u["completion_tokens"] + reasoning}


def expected_anthropic(u: dict) -> dict:
    read, write = u.get("cache_read_input_tokens") or 0, u.get("cache_creation_input_tokens") or 0
    return {"input_tokens": u["input_tokens"] + read + write, "output_tokens": u["output_tokens"],
            "cached_tokens": u.get("cache_read_input_tokens"),
            "reasoning_tokens": _get(u, "output_tokens_details", "thinking_tokens")}


def expected_gemini(u: dict) -> dict:
    return {"input_tokens": u["promptTokenCount"] + (u.get("toolUsePromptTokenCount") or 0),
            "output_tokens": (u.get("candidatesTokenCount") or 0) + (u.get("thoughtsTokenCount") or 0),
            "cached_tokens": u.get("cachedContentTokenCount"),
            "reasoning_tokens": u.get("thoughtsTokenCount")}


@dataclass
class Case:
    provider: str
    make_client: Callable[[str, str, httpx.Client], Any]   # (gateway url, api key, http client)
    call: Callable[[Any, bool], str]                        # (client, stream) -> reply text
    key_sent: Callable[[Any], str | None]                   # what the fake received as the key
    auth_error: Callable[[BaseException], bool]             # is this the SDK's auth exception?
    expected: Callable[[dict], dict]
    passthrough_key: Callable[[], str]
    raw_stream: Callable[[str], tuple[str, dict, dict]]     # token -> (path, headers, json body)
    usage_before_the_end: bool                              # streams report input early?

    def __str__(self) -> str:
        return self.provider


def _openai_text(client, stream, model):
    if not stream:
        return client.chat.completions.create(model=model, messages=MESSAGES).choices[0].message.content
    chunks = client.chat.completions.create(model=model, messages=MESSAGES, stream=True,
                                            stream_options={"include_usage": True})
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def _anthropic_text(client, stream):
    if not stream:
        return client.messages.create(model="claude-sonnet-4-6", max_tokens=64, messages=MESSAGES).content[0].text
    events = client.messages.create(model="claude-sonnet-4-6", max_tokens=64, messages=MESSAGES, stream=True)
    return "".join(e.delta.text for e in events if e.type == "content_block_delta")


def _gemini_text(client, stream):
    if not stream:
        return client.models.generate_content(model="gemini-2.5-flash", contents="Tell the gateway hello").text
    return "".join(c.text or "" for c in client.models.generate_content_stream(
        model="gemini-2.5-flash", contents="Tell the gateway hello"))


def _mistral_text(client, stream):
    if not stream:
        return client.chat.complete(model="mistral-small-latest", messages=MESSAGES).choices[0].message.content
    return "".join(e.data.choices[0].delta.content or "" for e in client.chat.stream(
        model="mistral-small-latest", messages=MESSAGES))


def _bearer(received) -> str | None:
    value = received.header("authorization")
    return value.removeprefix("Bearer ") if value else None


def _chat_stream_request(model):
    return lambda token: ("/v1/chat/completions", {"authorization": f"Bearer {token}"},
                          {"model": model, "messages": MESSAGES, "stream": True})


CASES = [
    Case("openai",
         lambda url, key, http: openai.OpenAI(api_key=key, base_url=url + "/v1", max_retries=0, http_client=http),
         lambda c, stream: _openai_text(c, stream, "gpt-4o-mini"),
         _bearer, lambda e: isinstance(e, openai.AuthenticationError), expected_openai,
         lambda: "sk-proj-" + secrets.token_urlsafe(30), _chat_stream_request("gpt-4o-mini"), False),
    Case("anthropic",
         lambda url, key, http: anthropic.Anthropic(api_key=key, base_url=url, max_retries=0, http_client=http),
         _anthropic_text,
         lambda r: r.header("x-api-key") or _bearer(r),
         lambda e: isinstance(e, anthropic.AuthenticationError), expected_anthropic,
         lambda: "sk-ant-api03-" + secrets.token_urlsafe(30),
         lambda token: ("/v1/messages", {"x-api-key": token, "anthropic-version": "2023-06-01"},
                        {"model": "claude-sonnet-4-6", "max_tokens": 64, "messages": MESSAGES, "stream": True}),
         True),
    Case("gemini",
         lambda url, key, http: genai.Client(api_key=key, http_options=genai.types.HttpOptions(
             base_url=url, httpx_client=http)),
         _gemini_text,
         lambda r: r.header("x-goog-api-key"),
         lambda e: isinstance(e, genai_errors.ClientError) and e.code in (401, 403), expected_gemini,
         lambda: "AIza" + secrets.token_urlsafe(26),
         lambda token: ("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
                        {"x-goog-api-key": token}, {"contents": [{"parts": [{"text": "hello"}]}]}),
         True),
    Case("mistral",
         lambda url, key, http: Mistral(api_key=key, server_url=url, client=http),
         _mistral_text, _bearer,
         lambda e: isinstance(e, mistral_errors.SDKError) and e.status_code == 401, expected_openai,
         lambda: secrets.token_hex(16), _chat_stream_request("mistral-small-latest"), False),
    Case("xai",
         lambda url, key, http: openai.OpenAI(api_key=key, base_url=url + "/v1", max_retries=0, http_client=http),
         lambda c, stream: _openai_text(c, stream, "grok-4"),
         _bearer, lambda e: isinstance(e, openai.AuthenticationError), expected_xai,
         lambda: "xai-" + secrets.token_urlsafe(30), _chat_stream_request("grok-4"), False),
]
