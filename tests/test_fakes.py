"""The fake provider upstreams (metrion_cli/fakes.py), driven by the official openai SDK."""

import asyncio
import base64
import gzip
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

import openai
import pytest

try:
    import httpx
except ImportError:  # the SDKs in this environment use the httpx2 fork
    import httpx2 as httpx

from metrion_cli.fakes import Behaviour, FakeUpstream, run_fakes

from conftest import free_port

KEY = "sk-test-abcd1234"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello to the fake"}]
# words + 3 per message, as the fake counts prompt tokens
PROMPT_TOKENS = (2 + 3) + (5 + 3)
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def fake():
    with FakeUpstream("openai") as f:
        thread = f._thread
        assert thread is not None and thread.is_alive()
        yield f
    assert not thread.is_alive()


@pytest.fixture
def client(fake):
    with openai.OpenAI(api_key=KEY, base_url=fake.url + "/v1", max_retries=0) as c:
        yield c


def header(sent, name):
    return next((v for n, v in sent.headers if n == name), None)


# ---- chat completions ----


def test_chat_non_stream(fake, client):
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from the"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "gpt-4o-mini-2024-07-18"
    usage = completion.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (PROMPT_TOKENS, 3, PROMPT_TOKENS + 3)
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details.reasoning_tokens == 0

    received, sent = fake.received[-1], fake.sent[-1]
    assert received.method == "POST" and received.path == "/v1/chat/completions"
    assert received.header("Authorization") == f"Bearer {KEY}"
    assert received.body == raw.http_response.request.content
    assert sent.status == 200 and sent.body == raw.http_response.content
    assert sent.usage == json.loads(sent.body)["usage"] == usage.model_dump(exclude_none=True)
    assert sent.model == "gpt-4o-mini-2024-07-18"
    assert sent.request_id.startswith("req_") and completion._request_id == sent.request_id
    assert len(sent.chunk_times) == 1
    assert raw.headers["openai-version"] == "2020-10-01"
    assert int(raw.headers["openai-processing-ms"]) >= 1
    assert raw.headers["content-length"] == str(len(sent.body))
    assert raw.headers["content-type"] == "application/json"
    # providers.md key order
    assert list(json.loads(sent.body)) == [
        "id", "object", "created", "model", "choices", "usage", "service_tier", "system_fingerprint"]


def test_request_ids_are_unique_and_model_names_pass_through(fake, client):
    a = client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    b = client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    assert a.model == "gpt-4.1"
    assert a._request_id != b._request_id and a.id != b.id


def test_chat_stream_without_usage(fake, client):
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from the"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)

    sent = fake.sent[-1]
    assert sent.usage is None
    assert isinstance(sent.body, bytes) and sent.body.endswith(b"data: [DONE]\n\n")
    assert b'"usage"' not in sent.body  # providers.md: no usage at all without include_usage
    events = sent.body.split(b"\n\n")[:-1]
    assert len(events) == len(sent.chunk_times) == 1 + 3 + 1 + 1  # role, words, finish, [DONE]
    assert header(sent, "content-type").startswith("text/event-stream")
    assert header(sent, "transfer-encoding") == "chunked" and header(sent, "content-length") is None


def test_chat_stream_with_include_usage(fake, client):
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from the"
    last = chunks[-1]
    assert last.choices == [] and last.usage.prompt_tokens == PROMPT_TOKENS
    assert last.usage.completion_tokens == 3 and last.usage.total_tokens == PROMPT_TOKENS + 3
    assert all(c.usage is None for c in chunks[:-1])

    sent = fake.sent[-1]
    assert b"data: [DONE]" in sent.body
    assert sent.usage == last.usage.model_dump(exclude_none=True)
    events = [e for e in sent.body.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    assert json.loads(events[-2][len(b"data: "):])["choices"] == []
    # Every chunk before the usage-only one says so: "usage": null (providers.md).
    assert all(json.loads(e[len(b"data: "):]).get("usage", "absent") is None for e in events[:-2])


def test_reasoning_model_reports_reasoning_tokens(fake, client):
    completion = client.chat.completions.create(model="o3-mini", messages=MESSAGES)
    reasoning = completion.usage.completion_tokens_details.reasoning_tokens
    assert reasoning > 0
    assert completion.usage.completion_tokens == 3 + reasoning
    assert completion.model == "o3-mini"


def test_header_overrides(fake, client):
    started = time.monotonic()
    completion = client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES,
        extra_headers={"x-fake-chunks": "20", "x-fake-first-byte-delay-ms": "100"})
    assert time.monotonic() - started >= 0.1
    assert len(completion.choices[0].message.content.split()) == 20
    assert completion.usage.completion_tokens == 20
    # the next request without headers is normal again
    assert client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).usage.completion_tokens == 3


# ---- responses ----


def test_responses_non_stream(fake, client):
    response = client.responses.create(model="gpt-4.1", input="Say hello", instructions="Be brief.")
    assert response.output_text == "Hello from the"
    assert response.status == "completed"
    assert response.usage.input_tokens == (2 + 3) + (2 + 3)
    assert response.usage.output_tokens == 3 and response.usage.total_tokens == 13
    assert response.usage.input_tokens_details.cached_tokens == 0
    assert response.usage.output_tokens_details.reasoning_tokens == 0
    assert fake.sent[-1].usage == response.usage.model_dump(exclude_none=True)


def test_responses_stream(fake, client):
    events = list(client.responses.create(model="o3-mini", input="Say hello", stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Hello from the"
    usage = events[-1].response.usage
    assert usage.output_tokens_details.reasoning_tokens > 0
    assert usage.output_tokens == 3 + usage.output_tokens_details.reasoning_tokens

    sent = fake.sent[-1]
    assert sent.usage == usage.model_dump(exclude_none=True)
    assert b"event: response.completed\ndata: " in sent.body and b"[DONE]" not in sent.body
    assert len(sent.chunk_times) == len(events)


def test_responses_stream_helper_and_query_string(fake, client):
    with client.responses.stream(model="gpt-4.1", input="hello again") as stream:
        final = stream.get_final_response()
    assert final.output_text == "Hello from the" and final.usage.output_tokens == 3

    r = httpx.post(fake.url + "/v1/responses?beta=true", json={"model": "gpt-4.1", "input": "hi"},
                   headers={"authorization": f"Bearer {KEY}"})
    assert r.status_code == 200 and r.json()["usage"]["input_tokens"] == 4
    assert fake.received[-1].path == "/v1/responses?beta=true"


# ---- embeddings and models ----


def test_embeddings_base64_default(fake, client):
    result = client.embeddings.create(model="text-embedding-3-small", input=["a", "b c"])
    assert [len(d.embedding) for d in result.data] == [8, 8]
    assert all(isinstance(x, float) for x in result.data[0].embedding)
    assert result.data[0].embedding != result.data[1].embedding
    assert result.usage.prompt_tokens == result.usage.total_tokens == 3

    assert json.loads(fake.received[-1].body)["encoding_format"] == "base64"
    wire = json.loads(fake.sent[-1].body)["data"][0]["embedding"]
    assert isinstance(wire, str)
    assert list(struct.unpack("<8f", base64.b64decode(wire))) == pytest.approx(result.data[0].embedding)
    assert fake.sent[-1].usage == {"prompt_tokens": 3, "total_tokens": 3}


def test_embeddings_float_format_is_deterministic(fake, client):
    a = client.embeddings.create(model="text-embedding-3-small", input="same text", encoding_format="float")
    b = client.embeddings.create(model="text-embedding-3-small", input="same text", dimensions=4)
    assert isinstance(json.loads(fake.sent[-2].body)["data"][0]["embedding"], list)
    assert len(a.data[0].embedding) == 8 and len(b.data[0].embedding) == 4
    c = client.embeddings.create(model="text-embedding-3-small", input="same text", encoding_format="float")
    assert a.data[0].embedding == c.data[0].embedding


def test_models(fake, client):
    ids = [m.id for m in client.models.list()]
    assert "gpt-4o-mini" in ids
    assert client.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


# ---- errors ----


def test_bad_key_is_masked(fake):
    bad = "bad-key-0123456789abcdef"
    with openai.OpenAI(api_key=bad, base_url=fake.url + "/v1", max_retries=0) as c:
        with pytest.raises(openai.AuthenticationError) as info:
            c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert bad not in str(info.value) and bad not in fake.sent[-1].body.decode()
    assert "sk-...cdef" in str(info.value)
    assert info.value.code == "invalid_api_key"
    assert info.value.request_id == fake.sent[-1].request_id


def test_missing_key_and_bad_requests(fake):
    r = httpx.post(fake.url + "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": []})
    assert r.status_code == 401 and r.json()["error"]["message"].startswith("You didn't provide an API key")
    assert r.headers["x-request-id"].startswith("req_")
    auth = {"authorization": f"Bearer {KEY}"}
    r = httpx.post(fake.url + "/v1/chat/completions", json={"model": "gpt-4o-mini"}, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = httpx.post(fake.url + "/v1/chat/completions", content=b"{not json", headers=auth)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.get(fake.url + "/v1/unknown?x=1", headers=auth)
    assert r.status_code == 404
    assert r.json() == {"error": {"message": "Invalid URL (GET /v1/unknown)", "type": "invalid_request_error",
                                  "param": None, "code": None}}


def test_x_fake_status_429(fake, client):
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, extra_headers={"x-fake-status": "429"})
    assert info.value.code == "rate_limit_exceeded"
    assert info.value.response.headers["retry-after"] == "1"
    assert fake.sent[-1].status == 429 and fake.sent[-1].usage is None


@pytest.mark.parametrize("status, exc", [
    (400, openai.BadRequestError), (401, openai.AuthenticationError),
    (500, openai.InternalServerError), (503, openai.InternalServerError),
])
def test_behaviour_status(fake, client, status, exc):
    fake.behaviour = Behaviour(status=status)
    with pytest.raises(exc) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    assert info.value.status_code == status
    body = json.loads(fake.sent[-1].body)
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert KEY not in fake.sent[-1].body.decode()


# ---- transport behaviour ----


def test_chunk_delay_spaces_chunks(fake, client):
    fake.behaviour = Behaviour(chunk_delay=0.05, chunks=2)
    assert len(list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))) == 4
    times = fake.sent[-1].chunk_times
    assert len(times) == 5
    assert all(b - a >= 0.045 for a, b in zip(times, times[1:]))


def test_reset_after_chunks_breaks_the_stream(fake, client):
    fake.behaviour = Behaviour(reset_after_chunks=2)
    got = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}):
            got.append(chunk)
    assert len(got) == 2
    sent = fake.sent[-1]
    assert len(sent.chunk_times) == 2 and sent.usage is None and b"[DONE]" not in sent.body
    # the server goes on serving
    fake.behaviour = Behaviour()
    assert client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices


def test_stall_after_chunks_times_out(fake):
    fake.behaviour = Behaviour(stall_after_chunks=1)
    with openai.OpenAI(api_key=KEY, base_url=fake.url + "/v1", max_retries=0, timeout=0.3) as c:
        stream = c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        with pytest.raises(openai.APITimeoutError):
            list(stream)
    assert len(fake.sent[-1].chunk_times) == 1


def test_gzip_json(fake, client):
    fake.behaviour = Behaviour(gzip=True)
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert completion.choices[0].message.content == "Hello from the"
    sent = fake.sent[-1]
    assert sent.body[:2] == b"\x1f\x8b" and header(sent, "content-encoding") == "gzip"
    assert header(sent, "content-length") == str(len(sent.body))
    assert json.loads(gzip.decompress(sent.body))["usage"] == sent.usage


def test_gzip_stream(fake, client):
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True},
        extra_headers={"x-fake-gzip": "1"})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from the"
    assert chunks[-1].usage.total_tokens == PROMPT_TOKENS + 3
    sent = fake.sent[-1]
    assert header(sent, "content-encoding") == "gzip"
    assert gzip.decompress(sent.body).endswith(b"data: [DONE]\n\n")


def test_keep_alive_and_pipelining(fake):
    with httpx.Client(headers={"authorization": f"Bearer {KEY}"}) as http:
        for _ in range(5):
            assert http.get(fake.url + "/v1/models").status_code == 200
    assert fake.connections == 1

    request = f"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", fake.port), timeout=5) as s:
        s.sendall(request + request[:-2] + b"Connection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK\r\n") == 2 and b"connection: close\r\n" in data


def test_http10_stream_is_close_delimited(fake):
    body = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", fake.port), timeout=5) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.0\r\nAuthorization: Bearer " + KEY.encode()
                  + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head and rest == fake.sent[-1].body


def test_record_false_keeps_nothing():
    with FakeUpstream(record=False) as f:
        r = httpx.get(f.url + "/v1/models", headers={"authorization": f"Bearer {KEY}"})
        assert r.status_code == 200
        assert f.received == [] and f.sent == []


def test_unknown_provider():
    with pytest.raises(ValueError):
        FakeUpstream("nope")


# ---- in a running loop, and as a process ----


def test_run_fakes_and_serve_in_a_running_loop():
    async def main():
        [f] = await run_fakes({"openai": 0})
        async with httpx.AsyncClient(headers={"authorization": f"Bearer {KEY}"}) as http:
            r = await http.post(f.url + "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": MESSAGES})
            assert r.json()["usage"]["prompt_tokens"] == PROMPT_TOKENS
            assert f.sent == []  # run_fakes does not record by default
            await f.aclose()

            g = FakeUpstream(record=True)
            await g.astart()
            task = asyncio.create_task(g.serve())
            r = await http.get(g.url + "/v1/models")
            assert r.status_code == 200 and len(g.received) == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", g.port)

    asyncio.run(main())


def test_runs_as_a_process():
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-m", "metrion_cli.fakes", f"openai={port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        assert ready, "the fake did not print its line"
        assert proc.stdout.readline().strip() == f"fake openai listening on http://127.0.0.1:{port}"
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                       json={"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True},
                       headers={"authorization": f"Bearer {KEY}", "x-fake-chunks": "5"})
        assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
        assert r.text.count("data: ") == 1 + 5 + 1 + 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


# ============================================================================================
# The other providers, each driven by its official SDK (no gateway in between)
# ============================================================================================

import anthropic  # noqa: E402
from google import genai  # noqa: E402
from google.genai import errors as genai_errors  # noqa: E402
from mistralai.client import Mistral  # noqa: E402
from mistralai.client import errors as mistral_errors  # noqa: E402

ANT_KEY = "sk-ant-fake-key-5678"
GEM_KEY = "AIzaSyFake-0123456789abcdef"
MIS_KEY = "sk-mistral-test-0123456789"
XAI_KEY = "xai-test-0123456789abcdef"
USER = [{"role": "user", "content": "Say hello to the fake"}]  # 5 words + 3
USER_TOKENS = 5 + 3
ANT_VERSION = {"anthropic-version": "2023-06-01"}
GEM_CONTENTS = {"contents": [{"role": "user", "parts": [{"text": "Say hello to the fake"}]}]}


def _fake_fixture(provider):
    @pytest.fixture
    def fixture():
        with FakeUpstream(provider) as f:
            thread = f._thread
            yield f
        assert not thread.is_alive()
    return fixture


anthropic_fake = _fake_fixture("anthropic")
gemini_fake = _fake_fixture("gemini")
mistral_fake = _fake_fixture("mistral")
xai_fake = _fake_fixture("xai")


@pytest.fixture
def ant(anthropic_fake):
    with anthropic.Anthropic(api_key=ANT_KEY, base_url=anthropic_fake.url, max_retries=0) as c:
        yield c


@pytest.fixture
def gem(gemini_fake):
    with genai.Client(api_key=GEM_KEY, http_options=genai.types.HttpOptions(base_url=gemini_fake.url)) as c:
        yield c


@pytest.fixture
def mis(mistral_fake):
    with Mistral(api_key=MIS_KEY, server_url=mistral_fake.url) as c:
        yield c


@pytest.fixture
def xai(xai_fake):
    with openai.OpenAI(api_key=XAI_KEY, base_url=xai_fake.url + "/v1", max_retries=0) as c:
        yield c


def sse_events(body: bytes, sep: bytes = b"\n\n") -> list[bytes]:
    return [e for e in body.split(sep) if e]


def sse_json(event: bytes):
    return json.loads(event.split(b"data: ", 1)[1])


# ---- anthropic ----


def test_anthropic_messages_json(anthropic_fake, ant):
    raw = ant.messages.with_raw_response.create(
        model="claude-haiku-4-5", max_tokens=64, system="Be brief.", messages=USER)
    message = raw.parse()
    assert message.content[0].text == "Hello from the" and message.stop_reason == "end_turn"
    assert message.model == "claude-haiku-4-5-20251001" and message.id.startswith("msg_01")
    usage = message.usage
    assert (usage.input_tokens, usage.output_tokens) == (PROMPT_TOKENS, 3)
    assert usage.cache_read_input_tokens == usage.cache_creation_input_tokens == 0
    assert usage.output_tokens_details is None and usage.service_tier == "standard"

    received, sent = anthropic_fake.received[-1], anthropic_fake.sent[-1]
    assert received.path == "/v1/messages" and received.body == raw.http_response.request.content
    assert received.header("authorization") == f"Bearer {ANT_KEY}"  # anthropic 2.x sends api_key as Bearer
    # recorded as received (providers.md says 2023-06-01; anthropic 2.13 sends a newer date)
    assert received.header("anthropic-version") == anthropic._constants.ANTHROPIC_API_VERSION
    assert sent.body == raw.http_response.content
    assert sent.usage == json.loads(sent.body)["usage"] == usage.model_dump(exclude_none=True)
    assert list(sent.usage) == ["input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens",
                                "cache_creation", "output_tokens", "service_tier"]
    assert sent.model == message.model
    assert sent.request_id.startswith("req_011C") and message._request_id == sent.request_id
    assert raw.headers["request-id"] == sent.request_id and "anthropic-ratelimit-tokens-limit" in raw.headers


def test_anthropic_stream_with_cache_and_thinking(anthropic_fake, ant):
    request = dict(
        model="claude-sonnet-4-6", max_tokens=2048, thinking={"type": "enabled", "budget_tokens": 1024},
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
        messages=USER)
    with ant.messages.stream(**request) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello from the" and [b.type for b in final.content] == ["thinking", "text"]
    usage = final.usage
    assert usage.cache_read_input_tokens > 0 and usage.cache_creation_input_tokens > 0
    assert usage.cache_creation.ephemeral_1h_input_tokens == usage.cache_creation_input_tokens
    thinking = usage.output_tokens_details.thinking_tokens
    assert thinking > 0 and usage.output_tokens == 3 + thinking

    sent = anthropic_fake.sent[-1]
    assert sent.usage == usage.model_dump(exclude_none=True)  # message_start overridden by message_delta
    assert sent.model == final.model == "claude-sonnet-4-6"
    events = sse_events(sent.body)
    names = [e.split(b"\n", 1)[0] for e in events]
    assert names[0] == b"event: message_start" and names[-1] == b"event: message_stop"
    assert b"event: ping" in names and b"[DONE]" not in sent.body
    assert len(sent.chunk_times) == len(events)
    start = sse_json(events[0])["message"]["usage"]
    assert start["output_tokens"] == 1 and start["cache_read_input_tokens"] == usage.cache_read_input_tokens
    # the same request as JSON reports the same usage (tokens are a function of the request)
    assert ant.messages.create(**request).usage == usage


def test_anthropic_raw_stream_events(anthropic_fake, ant):
    events = list(ant.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=USER, stream=True,
                                      extra_headers={"x-fake-chunks": "5"}))
    assert [e.type for e in events] == (["message_start", "content_block_start"] + ["content_block_delta"] * 5
                                        + ["content_block_stop", "message_delta", "message_stop"])
    assert events[0].message.usage.output_tokens == 1 and events[-2].usage.output_tokens == 5
    sent = anthropic_fake.sent[-1]
    assert (sent.usage["input_tokens"], sent.usage["output_tokens"]) == (USER_TOKENS, 5)
    assert sent.request_id == sent.headers[[n for n, _ in sent.headers].index("request-id")][1]


def test_anthropic_count_tokens_models_and_beta_query(anthropic_fake, ant):
    assert ant.messages.count_tokens(model="claude-sonnet-4-6", messages=USER).input_tokens == USER_TOKENS
    assert anthropic_fake.received[-1].path == "/v1/messages/count_tokens" and anthropic_fake.sent[-1].usage is None
    assert "claude-sonnet-4-6" in [m.id for m in ant.models.list()]
    assert ant.models.retrieve("claude-haiku-4-5").id == "claude-haiku-4-5-20251001"
    with pytest.raises(anthropic.NotFoundError):
        ant.models.retrieve("claude-nope")
    r = httpx.post(anthropic_fake.url + "/v1/messages?beta=true", json={"model": "claude-opus-4-7",
                   "max_tokens": 8, "messages": USER}, headers={"x-api-key": ANT_KEY, **ANT_VERSION})
    assert r.status_code == 200 and r.json()["usage"]["input_tokens"] == USER_TOKENS
    assert anthropic_fake.received[-1].path == "/v1/messages?beta=true"


def test_anthropic_auth_and_bad_requests(anthropic_fake):
    bad = "bad-key-0123456789abcdef"
    with anthropic.Anthropic(api_key=bad, base_url=anthropic_fake.url, max_retries=0) as c:
        with pytest.raises(anthropic.AuthenticationError) as info:
            c.messages.create(model="claude-haiku-4-5", max_tokens=8, messages=USER)
    assert info.value.body["error"]["type"] == "authentication_error"
    assert bad not in anthropic_fake.sent[-1].body.decode() and bad not in str(info.value)
    assert info.value.request_id == anthropic_fake.sent[-1].request_id == info.value.body["request_id"]
    with anthropic.Anthropic(auth_token=ANT_KEY, base_url=anthropic_fake.url, max_retries=0) as c:
        assert c.messages.create(model="claude-haiku-4-5", max_tokens=8, messages=USER).content
    assert anthropic_fake.received[-1].header("authorization") == f"Bearer {ANT_KEY}"

    url = anthropic_fake.url + "/v1/messages"
    ok = {"model": "claude-haiku-4-5", "max_tokens": 8, "messages": USER}
    r = httpx.post(url, json=ok, headers={"x-api-key": ANT_KEY, **ANT_VERSION})  # older SDKs and curl
    assert r.status_code == 200 and r.headers["request-id"].startswith("req_011C")
    r = httpx.post(url, json=ok, headers={"x-api-key": "nope", **ANT_VERSION})
    assert r.status_code == 401 and r.json()["error"] == {"type": "authentication_error", "message": "invalid x-api-key"}
    r = httpx.post(url, json=ok, headers=ANT_VERSION)
    assert r.status_code == 401 and r.json()["type"] == "error"
    r = httpx.post(url, json=ok, headers={"x-api-key": ANT_KEY})
    assert r.status_code == 400 and "anthropic-version" in r.json()["error"]["message"]
    r = httpx.post(url, json={"model": "claude-haiku-4-5", "messages": USER}, headers={"x-api-key": ANT_KEY, **ANT_VERSION})
    assert r.status_code == 400 and r.json()["error"] == {"type": "invalid_request_error",
                                                         "message": "max_tokens: Field required"}
    assert r.json()["request_id"] == r.headers["request-id"]


@pytest.mark.parametrize("status, exc, kind", [
    (429, anthropic.RateLimitError, "rate_limit_error"), (500, anthropic.InternalServerError, "api_error"),
    (529, anthropic.OverloadedError, "overloaded_error"), (403, anthropic.PermissionDeniedError, "permission_error"),
])
def test_anthropic_forced_errors(anthropic_fake, ant, status, exc, kind):
    anthropic_fake.behaviour = Behaviour(status=status)
    with pytest.raises(exc) as info:
        ant.messages.create(model="claude-haiku-4-5", max_tokens=8, messages=USER, stream=True)
    assert info.value.status_code == status and info.value.body["error"]["type"] == kind
    assert info.value.response.headers.get("retry-after") == ("1" if status == 429 else None)
    assert anthropic_fake.sent[-1].usage is None and anthropic_fake.sent[-1].model is None


# ---- gemini ----


def test_gemini_generate_content(gemini_fake, gem):
    r = gem.models.generate_content(model="gemini-2.0-flash", contents="Say hello to the fake")
    assert r.text == "Hello from the" and r.candidates[0].finish_reason == "STOP"
    u = r.usage_metadata
    assert (u.prompt_token_count, u.candidates_token_count, u.total_token_count) == (USER_TOKENS, 3, USER_TOKENS + 3)
    assert u.thoughts_token_count is None and u.cached_content_token_count is None
    received, sent = gemini_fake.received[-1], gemini_fake.sent[-1]
    assert received.path == "/v1/models/gemini-2.0-flash:generateContent"  # google-genai 3.x: v1
    assert received.header("x-goog-api-key") == GEM_KEY
    body = json.loads(sent.body)
    assert sent.usage == body["usageMetadata"] and sent.model == r.model_version == "gemini-2.0-flash"
    assert sent.request_id == r.response_id == body["responseId"]
    assert header(sent, "content-type") == "application/json; charset=UTF-8"

    config = genai.types.GenerateContentConfig(system_instruction="Be brief.")
    u = gem.models.generate_content(model="gemini-2.5-flash", contents="Say hello to the fake", config=config).usage_metadata
    assert u.prompt_token_count == PROMPT_TOKENS and u.thoughts_token_count > 0
    assert u.total_token_count == u.prompt_token_count + u.candidates_token_count + u.thoughts_token_count
    config = genai.types.GenerateContentConfig(thinking_config=genai.types.ThinkingConfig(thinking_budget=0),
                                               cached_content="cachedContents/abc123")
    u = gem.models.generate_content(model="gemini-2.5-flash", contents="Say hello to the fake", config=config).usage_metadata
    assert u.thoughts_token_count is None and u.cached_content_token_count > 0
    assert u.prompt_token_count == USER_TOKENS + u.cached_content_token_count
    assert u.total_token_count == u.prompt_token_count + 3


def test_gemini_stream_sse(gemini_fake, gem):
    chunks = list(gem.models.generate_content_stream(model="gemini-2.5-flash", contents="Say hello to the fake"))
    assert "".join(c.text for c in chunks) == "Hello from the" and len(chunks) == 3
    assert all(c.usage_metadata.candidates_token_count is None for c in chunks[:-1])
    assert all(c.usage_metadata.total_token_count == USER_TOKENS for c in chunks[:-1])
    last = chunks[-1].usage_metadata
    assert last.candidates_token_count == 3 and last.thoughts_token_count > 0
    assert chunks[-1].candidates[0].finish_reason == "STOP"

    received, sent = gemini_fake.received[-1], gemini_fake.sent[-1]
    assert received.path == "/v1/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    events = sse_events(sent.body, b"\r\n\r\n")
    assert len(events) == len(sent.chunk_times) == 3 and sent.body.endswith(b"}\r\n\r\n")
    assert all(e.startswith(b"data: {") for e in events) and b"event:" not in sent.body and b"[DONE]" not in sent.body
    assert sent.usage == sse_json(events[-1])["usageMetadata"]
    assert sent.usage["totalTokenCount"] == USER_TOKENS + 3 + last.thoughts_token_count
    assert sent.model == "gemini-2.5-flash" and sent.request_id == chunks[0].response_id
    assert header(sent, "content-type") == "text/event-stream"


def test_gemini_stream_json_array(gemini_fake):
    url = gemini_fake.url + "/v1beta/models/gemini-2.0-flash:streamGenerateContent"
    with httpx.stream("POST", url, json=GEM_CONTENTS, headers={"x-goog-api-key": GEM_KEY, "x-fake-chunks": "4"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
        data = r.read()
    sent = gemini_fake.sent[-1]
    assert data == sent.body and len(sent.chunk_times) == 4 and header(sent, "transfer-encoding") == "chunked"
    items = json.loads(data)
    assert len(items) == 4 and items[-1]["candidates"][0]["finishReason"] == "STOP"
    assert sent.usage == items[-1]["usageMetadata"] and sent.usage["candidatesTokenCount"] == 4


def test_gemini_count_tokens_and_embeddings(gemini_fake, gem):
    assert gem.models.count_tokens(model="gemini-2.0-flash", contents="Say hello to the fake").total_tokens == USER_TOKENS
    assert gemini_fake.received[-1].path.endswith("/models/gemini-2.0-flash:countTokens")
    result = gem.models.embed_content(model="gemini-embedding-001", contents=["a", "b c"])
    assert [len(e.values) for e in result.embeddings] == [8, 8]
    assert result.embeddings[0].values != result.embeddings[1].values
    assert gemini_fake.received[-1].path.endswith(":batchEmbedContents") and gemini_fake.sent[-1].usage is None
    r = httpx.post(gemini_fake.url + "/v1beta/models/gemini-embedding-001:embedContent",
                   json={"content": {"parts": [{"text": "a"}]}, "outputDimensionality": 4},
                   headers={"x-goog-api-key": GEM_KEY})
    assert r.status_code == 200 and len(r.json()["embedding"]["values"]) == 4
    r = httpx.get(gemini_fake.url + "/v1beta/models", headers={"x-goog-api-key": GEM_KEY})
    assert "models/gemini-2.5-flash" in [m["name"] for m in r.json()["models"]]


def test_gemini_keys(gemini_fake):
    bad = "bad-key-0123456789abcdef"
    with genai.Client(api_key=bad, http_options=genai.types.HttpOptions(base_url=gemini_fake.url)) as c:
        with pytest.raises(genai_errors.ClientError) as info:
            c.models.generate_content(model="gemini-2.0-flash", contents="hi")
    assert (info.value.code, info.value.status) == (400, "INVALID_ARGUMENT")
    assert info.value.message == "API key not valid. Please pass a valid API key."
    assert info.value.details["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    assert bad not in gemini_fake.sent[-1].body.decode()

    url = gemini_fake.url + "/v1beta/models/gemini-2.0-flash:generateContent"
    r = httpx.post(url + f"?key={GEM_KEY}", json=GEM_CONTENTS)  # REST clients put the key in the query
    assert r.status_code == 200 and r.json()["usageMetadata"]["promptTokenCount"] == USER_TOKENS
    assert gemini_fake.received[-1].path == f"/v1beta/models/gemini-2.0-flash:generateContent?key={GEM_KEY}"
    r = httpx.post(url, json=GEM_CONTENTS, headers={"x-goog-api-key": "sk-demo-key"})
    assert r.status_code == 200
    r = httpx.post(url, json=GEM_CONTENTS)
    assert r.status_code == 403 and r.json()["error"]["status"] == "PERMISSION_DENIED"
    r = httpx.post(url, json={}, headers={"x-goog-api-key": GEM_KEY})
    assert r.status_code == 400 and r.json()["error"]["code"] == 400
    r = httpx.post(url.replace("generateContent", "noSuchMethod"), json=GEM_CONTENTS, headers={"x-goog-api-key": GEM_KEY})
    assert r.status_code == 404 and r.json()["error"]["status"] == "NOT_FOUND"


def test_gemini_forced_429(gemini_fake, gem):
    gemini_fake.behaviour = Behaviour(status=429, retry_after="7")
    with pytest.raises(genai_errors.ClientError) as info:
        gem.models.generate_content(model="gemini-2.0-flash", contents="hi")
    assert (info.value.code, info.value.status) == (429, "RESOURCE_EXHAUSTED")
    retry = [d for d in info.value.details["error"]["details"] if d["@type"].endswith("RetryInfo")]
    assert retry == [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}]
    # the non-SSE stream answers errors as a one-element JSON array
    r = httpx.post(gemini_fake.url + "/v1beta/models/gemini-2.0-flash:streamGenerateContent",
                   json=GEM_CONTENTS, headers={"x-goog-api-key": GEM_KEY})
    assert r.status_code == 429 and r.json()[0]["error"]["status"] == "RESOURCE_EXHAUSTED"


def test_gemini_openai_compatible_route(gemini_fake):
    with openai.OpenAI(api_key=GEM_KEY, base_url=gemini_fake.url + "/v1beta/openai", max_retries=0) as c:
        completion = c.chat.completions.create(model="gemini-2.5-flash", messages=MESSAGES)
        assert completion.choices[0].message.content == "Hello from the"
        assert completion.model == "gemini-2.5-flash"
        assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (PROMPT_TOKENS, 3)
        sent = gemini_fake.sent[-1]
        assert sent.usage == completion.usage.model_dump(exclude_none=True) and sent.request_id == completion.id
        assert gemini_fake.received[-1].header("authorization") == f"Bearer {GEM_KEY}"

        chunks = list(c.chat.completions.create(model="gemini-2.5-flash", messages=MESSAGES, stream=True))
        assert all(ch.usage is None for ch in chunks) and gemini_fake.sent[-1].usage is None
        chunks = list(c.chat.completions.create(model="gemini-2.5-flash", messages=MESSAGES, stream=True,
                                                stream_options={"include_usage": True}))
        assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == PROMPT_TOKENS + 3
        assert gemini_fake.sent[-1].usage == chunks[-1].usage.model_dump(exclude_none=True)
        assert gemini_fake.sent[-1].body.endswith(b"data: [DONE]\n\n")
    with openai.OpenAI(api_key="bad-key-0123456789", base_url=gemini_fake.url + "/v1beta/openai", max_retries=0) as c:
        with pytest.raises(openai.BadRequestError) as info:
            c.chat.completions.create(model="gemini-2.5-flash", messages=MESSAGES)
    assert info.value.body[0]["error"]["status"] == "INVALID_ARGUMENT"


# ---- mistral ----


def test_mistral_chat_complete(mistral_fake, mis):
    r = mis.chat.complete(model="mistral-small-latest", messages=MESSAGES)
    assert r.choices[0].message.content == "Hello from the" and r.choices[0].finish_reason == "stop"
    assert len(r.id) == 32 and int(r.id, 16) >= 0 and r.model == "mistral-small-latest"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (PROMPT_TOKENS, 3, PROMPT_TOKENS + 3)
    received, sent = mistral_fake.received[-1], mistral_fake.sent[-1]
    assert received.path == "/v1/chat/completions" and received.header("authorization") == f"Bearer {MIS_KEY}"
    assert sent.usage == json.loads(sent.body)["usage"] == {
        "prompt_tokens": PROMPT_TOKENS, "completion_tokens": 3, "total_tokens": PROMPT_TOKENS + 3}
    assert sent.model == "mistral-small-latest"
    assert sent.request_id == header(sent, "mistral-correlation-id") and header(sent, "x-kong-request-id")


def test_mistral_chat_stream(mistral_fake, mis):
    events = list(mis.chat.stream(model="mistral-small-latest", messages=MESSAGES))
    assert "".join(e.data.choices[0].delta.content for e in events) == "Hello from the"
    assert events[-1].data.choices[0].finish_reason == "stop"
    assert events[-1].data.usage.total_tokens == PROMPT_TOKENS + 3
    assert all(e.data.usage is None for e in events[:-1])

    received, sent = mistral_fake.received[-1], mistral_fake.sent[-1]
    assert json.loads(received.body)["stream"] is True and "stream_options" not in json.loads(received.body)
    chunks = sse_events(sent.body)
    assert chunks[-1] == b"data: [DONE]" and len(chunks) == len(sent.chunk_times) == 1 + 3 + 1
    last = sse_json(chunks[-2])
    assert last["choices"][0]["finish_reason"] == "stop" and last["choices"][0]["delta"]["content"] == " the"
    assert sent.usage == last["usage"] and sent.model == "mistral-small-latest"


def test_mistral_embeddings_and_fim(mistral_fake, mis):
    result = mis.embeddings.create(model="mistral-embed", inputs=["a", "b c"])
    assert [len(d.embedding) for d in result.data] == [8, 8] and result.usage.prompt_tokens == 3
    wire = json.loads(mistral_fake.sent[-1].body)
    assert isinstance(wire["data"][0]["embedding"], list) and mistral_fake.sent[-1].usage == wire["usage"]
    fim = mis.fim.complete(model="codestral-latest", prompt="def f(", suffix="return 1")
    assert fim.choices[0].message.content == "Hello from the" and fim.usage.completion_tokens == 3
    assert mistral_fake.received[-1].path == "/v1/fim/completions"


def test_mistral_errors(mistral_fake, mis):
    with Mistral(api_key="bad-key-0123456789", server_url=mistral_fake.url) as c:
        with pytest.raises(mistral_errors.SDKError) as info:
            c.chat.complete(model="mistral-small-latest", messages=MESSAGES)
    assert info.value.status_code == 401
    body = json.loads(info.value.body)
    assert body["message"] == "Unauthorized" and body["request_id"] == mistral_fake.sent[-1].request_id
    assert "bad-key" not in info.value.body
    with Mistral(api_key="a" * 32, server_url=mistral_fake.url) as c:  # the real key format
        assert c.chat.complete(model="mistral-small-latest", messages=MESSAGES).choices

    mistral_fake.behaviour = Behaviour(status=429)
    with pytest.raises(mistral_errors.SDKError) as info:
        mis.chat.stream(model="mistral-small-latest", messages=MESSAGES)
    assert info.value.status_code == 429 and info.value.headers["retry-after"] == "1"
    assert json.loads(info.value.body) == {"object": "error", "message": "Rate limit exceeded",
                                           "type": "rate_limited", "param": None, "code": "1300"}
    mistral_fake.behaviour = Behaviour()
    r = httpx.post(mistral_fake.url + "/v1/chat/completions", json={"model": "mistral-small-latest"},
                   headers={"authorization": f"Bearer {MIS_KEY}"})
    assert r.status_code == 422 and r.json()["message"]["detail"][0]["loc"] == ["body", "messages"]


# ---- xai ----


def test_xai_chat_json_usage_semantics(xai_fake, xai):
    raw = xai.chat.completions.with_raw_response.create(model="grok-4", messages=MESSAGES)
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from the" and completion.model == "grok-4"
    u = completion.usage
    reasoning = u.completion_tokens_details.reasoning_tokens
    assert reasoning > 0 and u.completion_tokens == 3  # excludes reasoning
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens + reasoning
    assert u.model_extra["num_sources_used"] == 0 and u.model_extra["cost_in_usd_ticks"] > 0
    sent = xai_fake.sent[-1]
    assert sent.usage == json.loads(sent.body)["usage"] == u.model_dump(exclude_none=True)
    assert str(uuid.UUID(completion.id)) == completion.id == sent.request_id
    assert "x-request-id" not in raw.headers and completion._request_id is None
    u = xai.chat.completions.create(model="grok-3", messages=MESSAGES).usage
    assert u.completion_tokens_details.reasoning_tokens == 0 and u.total_tokens == PROMPT_TOKENS + 3
    assert xai.chat.completions.create(model="grok-3-mini", messages=MESSAGES).usage.total_tokens > PROMPT_TOKENS + 3


def test_xai_stream_always_ends_with_usage(xai_fake, xai):
    chunks = list(xai.chat.completions.create(model="grok-4", messages=MESSAGES, stream=True))  # no include_usage
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from the"
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == 3
    assert last.usage.total_tokens == PROMPT_TOKENS + 3 + last.usage.completion_tokens_details.reasoning_tokens
    sent = xai_fake.sent[-1]
    assert sent.usage == last.usage.model_dump(exclude_none=True)
    assert sent.body.endswith(b"data: [DONE]\n\n") and b"obfuscation" not in sent.body
    assert sent.request_id == last.id and sent.model == "grok-4"


def test_xai_responses(xai_fake, xai):
    response = xai.responses.create(model="grok-3-mini", input="Say hello", instructions="Be brief.")
    assert response.output_text == "Hello from the" and str(uuid.UUID(response.id)) == response.id
    assert response.usage.output_tokens_details.reasoning_tokens > 0
    assert xai_fake.sent[-1].usage == response.usage.model_dump(exclude_none=True)
    events = list(xai.responses.create(model="grok-3", input="Say hello", stream=True))
    assert events[-1].type == "response.completed" and events[-1].response.usage.output_tokens == 3
    assert xai_fake.sent[-1].usage == events[-1].response.usage.model_dump(exclude_none=True)


def test_xai_errors(xai_fake, xai):
    bad = "bad-key-0123456789abcdef"
    with openai.OpenAI(api_key=bad, base_url=xai_fake.url + "/v1", max_retries=0) as c:
        with pytest.raises(openai.BadRequestError) as info:
            c.chat.completions.create(model="grok-4", messages=MESSAGES)
    assert json.loads(xai_fake.sent[-1].body) == {
        "code": "Client specified an invalid argument",
        "error": "Incorrect API key provided: ba***ef. You can obtain an API key from https://console.x.ai."}
    assert info.value.body == json.loads(xai_fake.sent[-1].body)["error"]  # the SDK takes body["error"]
    assert bad not in xai_fake.sent[-1].body.decode() and xai_fake.sent[-1].request_id is None
    with pytest.raises(openai.RateLimitError) as info:
        xai.chat.completions.create(model="grok-4", messages=MESSAGES, extra_headers={"x-fake-status": "429"})
    assert json.loads(xai_fake.sent[-1].body) == {"code": "Some resource has been exhausted",
                                                  "error": "Rate limit exceeded"}
    assert info.value.response.headers["retry-after"] == "1"
    r = httpx.post(xai_fake.url + "/v1/chat/completions", json={"model": "grok-4", "messages": MESSAGES})
    assert r.status_code == 401 and set(r.json()) == {"code", "error"}


# ---- every provider: streams, transport behaviour, recording ----

STREAMS = {
    "openai": ("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True,
                                        "stream_options": {"include_usage": True}},
               {"authorization": f"Bearer {KEY}"}),
    "anthropic": ("/v1/messages", {"model": "claude-haiku-4-5", "max_tokens": 64, "messages": USER, "stream": True},
                  {"x-api-key": ANT_KEY, **ANT_VERSION}),
    "gemini": ("/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse", GEM_CONTENTS,
               {"x-goog-api-key": GEM_KEY}),
    "mistral": ("/v1/chat/completions", {"model": "mistral-small-latest", "messages": MESSAGES, "stream": True},
                {"authorization": f"Bearer {MIS_KEY}"}),
    "xai": ("/v1/chat/completions", {"model": "grok-3", "messages": MESSAGES, "stream": True},
            {"authorization": f"Bearer {XAI_KEY}"}),
}


@pytest.mark.parametrize("provider", sorted(STREAMS))
def test_every_provider_streams_gzip_reset_and_record(provider):
    path, body, headers = STREAMS[provider]
    with FakeUpstream(provider) as f:
        r = httpx.post(f.url + path, json=body, headers={**headers, "x-fake-gzip": "1", "x-fake-chunks": "4"})
        sent = f.sent[-1]
        assert r.status_code == 200 and header(sent, "content-encoding") == "gzip"
        assert gzip.decompress(sent.body) == r.content and sent.usage is not None
        assert len(sent.chunk_times) > 4 or provider == "gemini" and len(sent.chunk_times) == 4

        with pytest.raises(httpx.HTTPError):
            httpx.post(f.url + path, json=body, headers={**headers, "x-fake-reset-after-chunks": "1"})
        assert len(f.sent[-1].chunk_times) == 1
        assert httpx.post(f.url + path, json=body, headers=headers).status_code == 200  # still serving
    with FakeUpstream(provider, record=False) as f:
        assert httpx.post(f.url + path, json=body, headers=headers).status_code == 200
        assert f.received == [] and f.sent == []
