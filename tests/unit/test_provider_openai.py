"""OpenAI's usage readers over what the fake upstream sends (providers.md section 3)."""

import json

import pytest

from addons.providers import openai as provider
from addons.sse import SSEParser
from metrion_cli.fakes import FakeUpstream

CHAT_USAGE = {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21,
              "prompt_tokens_details": {"cached_tokens": 4, "audio_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 5}}
RESPONSES_USAGE = {"input_tokens": 12, "input_tokens_details": {"cached_tokens": 2},
                   "output_tokens": 7, "output_tokens_details": {"reasoning_tokens": 3}, "total_tokens": 19}


@pytest.mark.parametrize("usage, expected", [
    (CHAT_USAGE, (12, 9, 4, 5, 21)),
    (RESPONSES_USAGE, (12, 7, 2, 3, 19)),
    ({"prompt_tokens": 8, "total_tokens": 8}, (8, None, None, None, 8)),
    ({"prompt_tokens": None, "completion_tokens": "7"}, (None, None, None, None, None)),
])
def test_normalise(usage, expected):
    u = provider.normalise(usage)
    assert (u.input_tokens, u.output_tokens, u.cached_tokens, u.reasoning_tokens, u.total_tokens) == expected
    assert u.raw == usage


def test_read_json_without_usage_says_why():
    model, usage = provider.read_json("/v1/models", {"object": "list", "data": []})
    assert model is None and usage.input_tokens is None and "no usage" in usage.note


def stream_usage(body: bytes):
    reader, parser = provider.stream_reader("/v1/chat/completions"), SSEParser()
    for event in parser.feed(body):
        reader.feed(event.event, event.data)
    return reader


@pytest.fixture(scope="module")
def fake():
    with FakeUpstream("openai") as fake:
        yield fake


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", {"model": "o3-mini", "stream": True, "stream_options": {"include_usage": True},
                              "messages": [{"role": "user", "content": "one two three"}]}),
    ("/v1/responses", {"model": "gpt-4.1", "stream": True, "input": "one two"}),
])
def test_stream_reader_matches_what_the_fake_reported(fake, path, body):
    import httpx2 as httpx
    httpx.post(fake.url + path, json=body, headers={"authorization": "Bearer sk-test-1"})
    sent = fake.sent[-1]
    reader = stream_usage(sent.body)
    assert reader.model == sent.model
    assert reader.usage().raw == sent.usage
    assert reader.usage().input_tokens is not None


def test_chat_stream_without_usage_is_null_with_note():
    body = (b'data: {"id":"c","model":"gpt-4o-mini","choices":[{"delta":{"content":"hi"}}],"usage":null}\n\n'
            b"data: [DONE]\n\n")
    reader = stream_usage(body)
    assert reader.model == "gpt-4o-mini"
    assert reader.usage().input_tokens is None and "include_usage" in reader.usage().note


def test_error_inside_a_stream_is_kept():
    reader = stream_usage(b'data: {"error":{"message":"overloaded","type":"server_error"}}\n\n')
    assert reader.error == "overloaded"


@pytest.mark.parametrize("kind, status", [("invalid_token", 401), ("monthly_cap", 429), ("internal", 500)])
def test_error_shape(kind, status):
    code, headers, body = provider.error(kind, "why")
    assert code == status and headers["content-type"] == "application/json"
    assert set(json.loads(body)["error"]) == {"message", "type", "param", "code"}


def test_usage_parser_never_raises_on_garbage():
    reader = provider.stream_reader("/v1/chat/completions")
    for data in [b"", b"{", b"[]", b'{"usage": 5}', b'"usage":{', b"\xff\xfe", b'{"usage":{"prompt_tokens":"x"}}']:
        reader.feed(None, data)
        reader.feed("response.completed", data)
    assert reader.usage().input_tokens is None


def test_stream_usage_is_found_whatever_the_json_spacing():
    """Events are skipped unparsed when they hold no usage object; that check must not depend on
    OpenAI's compact separators (`"usage": {` and `"usage" :null` are JSON too)."""
    from addons.recorder import SSETap

    head = {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o-mini-2024-07-18"}
    for separators in ((",", ":"), (", ", ": "), (",", " : ")):
        def event(obj):
            return b"data: " + json.dumps(obj, separators=separators).encode() + b"\n\n"
        events = [event({**head, "choices": [{"delta": {"content": f"w{i}"}}], "usage": None}) for i in range(30)]
        events.append(event({**head, "choices": [], "usage": CHAT_USAGE}))
        events.append(b"data: [DONE]\n\n")
        tap = SSETap(provider.stream_reader("/v1/chat/completions"), "")
        for e in events:
            assert tap(e) == e
        model, usage, error = tap.result(provider, "/v1/chat/completions")
        assert (model, usage.raw, usage.input_tokens, error) == (head["model"], CHAT_USAGE, 12, None), separators
