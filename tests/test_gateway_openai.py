"""End to end: the official openai SDK -> a real `metrion serve` -> the fake OpenAI upstream."""

import time

import httpx2 as httpx
import openai
import pytest

from metrion_cli.fakes import Behaviour
from metrion_cli.vault import Vault
from metrion_cli.paths import resolve

MESSAGES = [{"role": "user", "content": "Say hello to the gateway"}]


def client(gateway, api_key, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(api_key=api_key, base_url=gateway.url() + "/v1", max_retries=0, **kwargs)


def test_stored_mode_json_swaps_the_key_and_keeps_every_byte(gateway, acme, fake_openai):
    raw = client(gateway, acme.token).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, extra_headers={"x-metrion-user": "alice@example.com"})
    completion = raw.parse()
    assert completion.choices[0].message.content
    received, sent = fake_openai.received[-1], fake_openai.sent[-1]
    assert received.header("authorization") == f"Bearer {acme.keys['openai']}"
    assert acme.token not in str(received.headers)
    assert received.header("x-metrion-user") is None
    assert received.body == raw.http_response.request.content
    assert raw.http_response.content == sent.body
    assert raw.http_response.headers["x-request-id"] == sent.request_id

    [row] = gateway.wait_rows(1)
    assert row["provider"] == "openai" and row["endpoint"] == "/v1/chat/completions"
    assert row["method"] == "POST" and row["status"] == 200 and row["streamed"] == 0
    assert row["model"] == sent.model == "gpt-4o-mini-2024-07-18"
    assert row["input_tokens"] == sent.usage["prompt_tokens"]
    assert row["output_tokens"] == sent.usage["completion_tokens"]
    assert row["total_tokens"] == sent.usage["total_tokens"]
    assert row["cached_tokens"] == sent.usage["prompt_tokens_details"]["cached_tokens"]
    assert row["reasoning_tokens"] == sent.usage["completion_tokens_details"]["reasoning_tokens"]
    assert row["requester"] == "alice@example.com"
    assert row["mode"] == "stored" and row["forwarded"] == 1
    assert row["upstream_request_id"] == sent.request_id
    assert 0 < row["ttfb_ms"] <= row["latency_ms"]


def test_stored_mode_stream_is_byte_identical_and_counted(gateway, acme, fake_openai):
    with client(gateway, acme.token).chat.completions.with_streaming_response.create(
        model="o3-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True},
    ) as response:
        received_bytes = b"".join(response.iter_bytes())
    sent = fake_openai.sent[-1]
    assert received_bytes == sent.body
    assert received_bytes.rstrip().endswith(b"data: [DONE]")
    assert fake_openai.received[-1].header("authorization") == f"Bearer {acme.keys['openai']}"

    [row] = gateway.wait_rows(1)
    assert row["streamed"] == 1 and row["status"] == 200
    assert row["model"] == sent.model
    assert row["input_tokens"] == sent.usage["prompt_tokens"]
    assert row["output_tokens"] == sent.usage["completion_tokens"]
    assert row["reasoning_tokens"] == sent.usage["completion_tokens_details"]["reasoning_tokens"] > 0
    assert row["response_bytes"] == len(sent.body)


def test_stream_without_include_usage_records_null_with_a_reason(gateway, acme, fake_openai):
    stream = client(gateway, acme.token).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    [row] = gateway.wait_rows(1)
    assert fake_openai.sent[-1].usage is None
    assert row["input_tokens"] is None and row["output_tokens"] is None
    assert "include_usage" in row["usage_note"]


def test_gzip_stream_passes_compressed_and_is_still_counted(gateway, acme, fake_openai):
    fake_openai.behaviour = Behaviour(gzip=True)
    with client(gateway, acme.token).chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True},
    ) as response:
        raw_bytes = b"".join(response.http_response.iter_raw())
        assert response.headers["content-encoding"] == "gzip"
    sent = fake_openai.sent[-1]
    assert raw_bytes == sent.body
    [row] = gateway.wait_rows(1)
    assert row["input_tokens"] == sent.usage["prompt_tokens"]


def test_stream_is_not_buffered(gateway, acme, fake_openai):
    fake_openai.behaviour = Behaviour(chunk_delay=0.3, chunks=4)
    stream = client(gateway, acme.token).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True)
    first = next(iter(stream))
    first_arrived = time.monotonic()
    assert first.choices
    for _ in stream:
        pass
    # The fake runs in this process: the clocks compare directly.
    assert first_arrived < fake_openai.sent[-1].chunk_times[-1] - 0.5


def test_responses_and_embeddings_are_counted(gateway, acme, fake_openai):
    api = client(gateway, acme.token)
    response = api.responses.create(model="gpt-4.1", input="hello")
    assert response.output_text
    with api.responses.stream(model="gpt-4.1", input="hello again") as stream:
        final = stream.get_final_response()
    embedding = api.embeddings.create(model="text-embedding-3-small", input=["a", "b c"])
    assert len(embedding.data) == 2 and len(embedding.data[0].embedding) > 0
    rows = gateway.wait_rows(3)
    reported = [s.usage for s in fake_openai.sent]
    assert [r["endpoint"] for r in rows] == ["/v1/responses", "/v1/responses", "/v1/embeddings"]
    assert [r["streamed"] for r in rows] == [0, 1, 0]
    assert rows[0]["input_tokens"] == reported[0]["input_tokens"] == response.usage.input_tokens
    assert rows[1]["output_tokens"] == reported[1]["output_tokens"] == final.usage.output_tokens
    assert rows[1]["model"] == final.model
    assert rows[2]["input_tokens"] == reported[2]["prompt_tokens"]
    assert rows[2]["output_tokens"] is None


def test_chunked_request_and_response_bodies_pass_through(gateway, acme, fake_openai):
    body = b'{"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "chunked"}]}'

    def pieces():
        yield body[:10]
        yield body[10:]

    with httpx.Client() as http:
        with http.stream("POST", gateway.url() + "/v1/chat/completions", content=pieces(),
                         headers={"authorization": f"Bearer {acme.token}", "content-type": "application/json"}) as r:
            assert r.status_code == 200
            assert r.headers.get("transfer-encoding") == "chunked"
            streamed = b"".join(r.iter_raw())
    assert fake_openai.received[-1].body == body
    assert streamed == fake_openai.sent[-1].body


def test_passthrough_key_is_forwarded_untouched_and_fingerprinted(gateway, run_cli, secrets_used, fake_openai, data_dir):
    key = "sk-proj-passthrough-" + "x" * 24
    secrets_used.append(key)
    client(gateway, key).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert fake_openai.received[-1].header("authorization") == f"Bearer {key}"
    [row] = gateway.wait_rows(1)
    assert row["mode"] == "passthrough"
    assert row["key_fingerprint"] == Vault.open(resolve(data_dir)).fingerprint(key)
    default_id = run_cli("accounts", "show", "default").output.split("(id ")[1].split(")")[0]
    assert row["account_id"] == int(default_id)


def test_passthrough_is_attributed_to_the_x_metrion_token_account(gateway, acme, secrets_used, fake_openai):
    key = "sk-proj-claimed-" + "y" * 24
    secrets_used.append(key)
    client(gateway, key, default_headers={"x-metrion-token": acme.token}).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES)
    received = fake_openai.received[-1]
    assert received.header("authorization") == f"Bearer {key}"
    assert received.header("x-metrion-token") is None
    [row] = gateway.wait_rows(1)
    assert row["mode"] == "passthrough" and row["token_id"] is not None
    assert row["account_id"] == account_id(gateway, "acme")


def test_passthrough_is_attributed_by_registered_fingerprint(gateway, run_cli, secrets_used, fake_openai):
    key = "sk-proj-registered-" + "z" * 24
    secrets_used.append(key)
    run_cli("accounts", "add", "umbrella")
    run_cli("keys", "register", "umbrella", "openai", input=key + "\n")
    time.sleep(0.6)  # the running proxy reloads accounts and keys within RELOAD_INTERVAL
    client(gateway, key).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    [row] = gateway.wait_rows(1)
    assert row["account_id"] == account_id(gateway, "umbrella")


def account_id(gateway, name: str) -> int:
    import sqlite3
    with sqlite3.connect(gateway.data_dir / "metrion.db") as conn:
        return conn.execute("SELECT id FROM accounts WHERE name = ?", [name]).fetchone()[0]


@pytest.mark.parametrize("credential", ["mtr_unknown_token_value_0000000000000000000", None])
def test_bad_or_missing_token_gets_openai_401_and_nothing_is_forwarded(gateway, fake_openai, credential):
    headers = {"authorization": f"Bearer {credential}"} if credential else {}
    r = httpx.post(gateway.url() + "/v1/chat/completions", headers=headers,
                   json={"model": "gpt-4o-mini", "messages": MESSAGES})
    assert r.status_code == 401
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert r.headers["x-should-retry"] == "false"
    if credential:
        with pytest.raises(openai.AuthenticationError, match="unknown or revoked Metrion token"):
            client(gateway, credential).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert fake_openai.received == []
    rows = gateway.wait_rows(2 if credential else 1)
    assert all(r["status"] == 401 and r["forwarded"] == 0 and r["error"] for r in rows)
    assert rows[0]["model"] == "gpt-4o-mini"


def test_a_token_behind_another_scheme_is_refused_never_sent_upstream(gateway, acme, fake_openai):
    r = httpx.post(gateway.url() + "/v1/chat/completions", headers={"authorization": f"Token {acme.token}"},
                   json={"model": "gpt-4o-mini", "messages": MESSAGES})
    assert r.status_code == 401
    assert "must be sent where openai's SDK sends its key" in r.json()["error"]["message"]
    assert acme.token not in r.text
    assert fake_openai.received == []
    [row] = gateway.wait_rows(1)
    assert row["status"] == 401 and row["forwarded"] == 0 and row["mode"] is None


@pytest.mark.parametrize("api_key, in_path, where", [
    ("the token", False, "the 'x-team-auth' header"),
    ("a provider key", False, "the 'x-team-auth' header"),
    ("the token", True, "the URL path"),
])
def test_a_token_outside_the_key_slot_is_refused_never_sent_upstream(gateway, acme, fake_openai, secrets_used,
                                                                      api_key, in_path, where):
    """Only the SDK's key slot is swapped: a token also in a header of the client's own, or in its
    base URL, would reach the provider. The row says where and keeps no token (the data
    directory is searched for it when the gateway stops)."""
    own_key = "sk-client-own-key-e2e-0001"
    secrets_used.append(own_key)
    api = openai.OpenAI(api_key=acme.token if api_key == "the token" else own_key, max_retries=0,
                        base_url=f"{gateway.url()}/{acme.token}/v1" if in_path else f"{gateway.url()}/v1",
                        default_headers={} if in_path else {"x-team-auth": acme.token})
    with pytest.raises(openai.AuthenticationError) as refused:
        api.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert f"a Metrion token in {where} would go to openai" in str(refused.value)
    assert acme.token not in refused.value.response.text
    assert fake_openai.received == []
    [row] = gateway.wait_rows(1)
    assert row["status"] == 401 and row["forwarded"] == 0 and where in row["error"]
    assert row["endpoint"] == ("/mtr_(hidden)" if in_path else "") + "/v1/chat/completions"


def test_revoked_token_stops_working_within_a_second(gateway, acme, run_cli, fake_openai):
    api = client(gateway, acme.token)
    api.models.list()
    run_cli("tokens", "revoke", acme.token[:12])
    revoked_at = time.monotonic()
    while True:
        try:
            api.models.list()
        except openai.AuthenticationError:
            break
        assert time.monotonic() - revoked_at < 1.0, "revoked token still accepted after 1 s"
        time.sleep(0.02)
    forwarded = len(fake_openai.received)
    with pytest.raises(openai.AuthenticationError):
        api.models.list()
    assert len(fake_openai.received) == forwarded


def test_account_without_a_key_for_the_provider_gets_401_saying_so(start_gateway, run_cli, secrets_used, fake_openai):
    run_cli("init")
    run_cli("accounts", "add", "keyless")
    token = run_cli("tokens", "create", "keyless", "--quiet").output.strip()
    secrets_used.append(token)
    gateway = start_gateway({"openai": fake_openai.url})
    with pytest.raises(openai.AuthenticationError, match="metrion keys add keyless openai"):
        client(gateway, token).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert fake_openai.received == []
    [row] = gateway.wait_rows(1)
    assert row["status"] == 401 and row["account_id"] == account_id(gateway, "keyless")


def test_a_token_created_while_serving_works_at_once(gateway, run_cli, secrets_used, fake_openai):
    token = run_cli("tokens", "create", "acme", "--quiet").output.strip()
    secrets_used.append(token)
    assert client(gateway, token).models.list().data
    assert len(fake_openai.received) == 1
