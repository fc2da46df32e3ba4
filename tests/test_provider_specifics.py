"""What one provider does differently: Anthropic's version header and x-api-key, Gemini's ?key=
and OpenAI-compatible route, and the opt-in that asks OpenAI chat streams for usage."""

import secrets

import httpx2 as httpx
import openai
import pytest

from metrion_cli.fakes import FakeUpstream

MESSAGES = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def setup(run_cli, secrets_used):
    run_cli("init")
    run_cli("accounts", "add", "acme")
    keys = {}
    for provider in ("openai", "anthropic", "gemini"):
        keys[provider] = f"sk-stored-{provider}-" + secrets.token_hex(12)
        secrets_used.append(keys[provider])
        run_cli("keys", "add", "acme", provider, input=keys[provider] + "\n")
    token = run_cli("tokens", "create", "acme", "--quiet").output.strip()
    secrets_used.append(token)
    return token, keys


@pytest.fixture
def fake(request):
    with FakeUpstream(request.param) as fake:
        yield fake


@pytest.mark.parametrize("fake", ["anthropic"], indirect=True)
@pytest.mark.parametrize("version_option", [None, "2024-01-01"])
def test_anthropic_version_is_set_and_x_api_key_gets_the_key(setup, fake, start_gateway, version_option):
    token, keys = setup
    extra = ["--anthropic-version", version_option] if version_option else []
    gateway = start_gateway({"anthropic": fake.url}, extra=extra)
    r = httpx.post(gateway.url("anthropic") + "/v1/messages?beta=true",
                   headers={"x-api-key": token, "anthropic-version": "1999-12-31"},
                   json={"model": "claude-sonnet-4-6", "max_tokens": 10, "messages": MESSAGES})
    assert r.status_code == 200, r.text
    received = fake.received[-1]
    assert received.header("anthropic-version") == (version_option or "2023-06-01")
    assert received.header("x-api-key") == keys["anthropic"]
    assert received.header("authorization") is None
    assert received.path == "/v1/messages?beta=true"
    [row] = gateway.wait_rows(1)
    assert row["endpoint"] == "/v1/messages" and row["upstream_request_id"] == fake.sent[-1].request_id


@pytest.mark.parametrize("fake", ["gemini"], indirect=True)
def test_gemini_query_key_is_swapped_and_never_recorded(setup, fake, start_gateway, secrets_used):
    token, keys = setup
    gateway = start_gateway({"gemini": fake.url})
    body = {"contents": [{"parts": [{"text": "hello"}]}]}
    r = httpx.post(gateway.url("gemini") + f"/v1beta/models/gemini-2.5-flash:generateContent?key={token}&x=1",
                   json=body)
    assert r.status_code == 200, r.text
    assert fake.received[-1].path == f"/v1beta/models/gemini-2.5-flash:generateContent?key={keys['gemini']}&x=1"
    passthrough = "AIza" + secrets.token_urlsafe(26)
    secrets_used.append(passthrough)
    r = httpx.post(gateway.url("gemini") + f"/v1beta/models/gemini-2.5-flash:generateContent?key={passthrough}",
                   json=body)
    assert r.status_code == 200
    rows = gateway.wait_rows(2)
    assert [r["endpoint"] for r in rows] == ["/v1beta/models/gemini-2.5-flash:generateContent"] * 2
    assert [r["mode"] for r in rows] == ["stored", "passthrough"]
    # the gateway's teardown searches its data and output for the token and both keys


@pytest.mark.parametrize("fake", ["gemini"], indirect=True)
def test_gemini_openai_compatible_route(setup, fake, start_gateway):
    token, keys = setup
    gateway = start_gateway({"gemini": fake.url})
    client = openai.OpenAI(api_key=token, base_url=gateway.url("gemini") + "/v1beta/openai", max_retries=0)
    reply = client.chat.completions.create(model="gemini-2.5-flash", messages=MESSAGES)
    assert reply.choices[0].message.content
    assert fake.received[-1].header("authorization") == f"Bearer {keys['gemini']}"
    [row] = gateway.wait_rows(1)
    assert row["input_tokens"] == reply.usage.prompt_tokens


@pytest.mark.parametrize("fake", ["openai"], indirect=True)
def test_stream_usage_opt_in_counts_and_hides_the_extra_chunk(setup, fake, start_gateway):
    token, _ = setup
    gateway = start_gateway({"openai": fake.url}, extra=["--stream-usage"])
    body = b'{"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "hi"}]}'
    with httpx.Client() as http:
        with http.stream("POST", gateway.url() + "/v1/chat/completions", content=body,
                         headers={"authorization": f"Bearer {token}", "content-type": "application/json"}) as r:
            received = b"".join(r.iter_raw())
    sent = fake.sent[-1]
    assert fake.received[-1].body == body.replace(b"{", b'{"stream_options":{"include_usage":true},', 1)
    assert sent.usage is not None
    assert b'"choices":[]' in sent.body and b'"choices":[]' not in received
    assert received == b"".join(e + b"\n\n" for e in sent.body.split(b"\n\n") if e and b'"choices":[]' not in e)
    [row] = gateway.wait_rows(1)
    assert row["input_tokens"] == sent.usage["prompt_tokens"]
    assert row["response_bytes"] == len(received)
    # what the client would have seen without the option: the same stream, minus nothing else
    client = openai.OpenAI(api_key=token, base_url=gateway.url() + "/v1", max_retries=0)
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
    assert all(c.usage is None for c in chunks) and chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize("fake", ["anthropic"], indirect=True)
def test_anthropic_count_tokens_passes_and_is_not_counted_as_usage(setup, fake, start_gateway):
    import anthropic
    token, _ = setup
    gateway = start_gateway({"anthropic": fake.url})
    client = anthropic.Anthropic(api_key=token, base_url=gateway.url("anthropic"), max_retries=0)
    counted = client.messages.count_tokens(model="claude-sonnet-4-6", messages=MESSAGES)
    assert counted.input_tokens > 0
    [row] = gateway.wait_rows(1)
    assert row["endpoint"] == "/v1/messages/count_tokens" and row["status"] == 200
    assert row["input_tokens"] is None and "no usage" in row["usage_note"]


@pytest.mark.parametrize("fake", ["gemini"], indirect=True)
def test_gemini_count_tokens_and_embeddings(setup, fake, start_gateway):
    from google import genai
    token, keys = setup
    gateway = start_gateway({"gemini": fake.url})
    client = genai.Client(api_key=token, http_options=genai.types.HttpOptions(base_url=gateway.url("gemini")))
    assert client.models.count_tokens(model="gemini-2.5-flash", contents="one two three").total_tokens > 0
    embedded = client.models.embed_content(model="gemini-embedding-001", contents=["a", "b"])
    assert len(embedded.embeddings) == 2
    assert all(r.header("x-goog-api-key") == keys["gemini"] for r in fake.received)
    rows = gateway.wait_rows(2)
    assert [r["model"] for r in rows] == ["gemini-2.5-flash", "gemini-embedding-001"]
    assert all(r["status"] == 200 and r["input_tokens"] is None for r in rows)
