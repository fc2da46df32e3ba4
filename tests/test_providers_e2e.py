"""Every provider through its official SDK: one table (tests/providers_table.py), one suite.

Each test runs a real `metrion serve` with the five fake upstreams behind it.
"""

import re
import secrets
import subprocess
import sys
import time

import httpx2 as httpx
import pytest

from metrion_cli.fakes import Behaviour, FakeUpstream
from providers_table import CASES, RecordingTransport

USAGE_COLUMNS = ("input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens")


@pytest.fixture
def fakes():
    started = {case.provider: FakeUpstream(case.provider).start() for case in CASES}
    yield started
    for fake in started.values():
        fake.stop()


@pytest.fixture
def keys(run_cli, secrets_used):
    run_cli("init")
    run_cli("accounts", "add", "acme")
    stored = {}
    for case in CASES:
        stored[case.provider] = key = f"sk-stored-{case.provider}-" + secrets.token_hex(12)
        secrets_used.append(key)
        run_cli("keys", "add", "acme", case.provider, input=key + "\n")
    return stored


@pytest.fixture
def token(keys, run_cli, secrets_used):
    value = run_cli("tokens", "create", "acme", "--quiet").output.strip()
    secrets_used.append(value)
    return value


@pytest.fixture
def gateway(fakes, keys, start_gateway):
    return start_gateway({name: fake.url for name, fake in fakes.items()})


@pytest.mark.parametrize("case", CASES, ids=str)
def test_json_and_stream_through_the_sdk(case, gateway, fakes, keys, token):
    fake = fakes[case.provider]
    transport = RecordingTransport()
    client = case.make_client(gateway.url(case.provider), token, httpx.Client(transport=transport))
    for stream in (False, True):
        assert case.call(client, stream), f"{case.provider} stream={stream}: empty reply"
        received, sent = fake.received[-1], fake.sent[-1]
        assert case.key_sent(received) == keys[case.provider]
        assert token not in str(received.headers) + received.path
        assert received.body == transport.exchanges[-1]["request_body"]
        assert transport.last_response_bytes == sent.body
    rows = gateway.wait_rows(2)
    for row, sent in zip(rows, fake.sent[-2:]):
        assert row["provider"] == case.provider and row["status"] == 200
        assert row["mode"] == "stored" and row["model"] == sent.model
        assert {c: row[c] for c in USAGE_COLUMNS} == case.expected(sent.usage)
        assert row["usage_raw"] is not None
    assert [r["streamed"] for r in rows] == [0, 1]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_abandoned_stream_keeps_the_usage_seen(case, gateway, fakes, token):
    fakes[case.provider].behaviour = Behaviour(chunk_delay=0.2, chunks=10)
    path, headers, body = case.raw_stream(token)
    with httpx.Client() as http:
        with http.stream("POST", gateway.url(case.provider) + path, headers=headers, json=body) as r:
            assert r.status_code == 200
            next(r.iter_raw())
    [row] = gateway.wait_rows(1, timeout=10)
    assert row["client_aborted"] == 1 and row["streamed"] == 1
    if case.usage_before_the_end:
        assert row["input_tokens"] is not None and row["input_tokens"] > 0
    else:
        assert row["input_tokens"] is None


@pytest.mark.parametrize("case", CASES, ids=str)
def test_passthrough_key_is_forwarded_and_fingerprinted(case, gateway, fakes, secrets_used):
    key = case.passthrough_key()
    secrets_used.append(key)
    client = case.make_client(gateway.url(case.provider), key, httpx.Client())
    assert case.call(client, False)
    assert case.key_sent(fakes[case.provider].received[-1]) == key
    [row] = gateway.wait_rows(1)
    assert row["mode"] == "passthrough" and re.fullmatch(r"[0-9a-f]{16}", row["key_fingerprint"])
    assert row["input_tokens"] == case.expected(fakes[case.provider].sent[-1].usage)["input_tokens"]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_bad_token_raises_the_sdks_auth_error(case, gateway, fakes):
    client = case.make_client(gateway.url(case.provider), "mtr_" + "0" * 43, httpx.Client())
    with pytest.raises(Exception) as info:
        case.call(client, False)
    assert case.auth_error(info.value), repr(info.value)
    # xAI's flat error body leaves the openai SDK's message bare; the text is on .body
    assert "Metrion" in str(info.value) + str(getattr(info.value, "body", ""))
    assert fakes[case.provider].received == []
    [row] = gateway.wait_rows(1)
    assert row["status"] == 401 and row["forwarded"] == 0


@pytest.mark.parametrize("case", CASES, ids=str)
def test_integrate_prints_a_snippet_that_works(case, gateway, token, run_cli, tmp_path):
    port = gateway.ports[case.provider]
    snippet = run_cli("integrate", case.provider, "--port", str(port), "--token", token).output
    code = snippet.split("# or in code:\n", 1)[1]
    script = tmp_path / "snippet.py"
    script.write_text(code)
    env = {"PATH": "/usr/bin:/bin", "XAI_API_KEY": token, "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
    [row] = gateway.wait_rows(1)
    assert row["status"] == 200 and row["provider"] == case.provider


@pytest.mark.parametrize("case", CASES, ids=str)
def test_over_the_cap_the_sdk_raises_at_once_without_retrying(case, gateway, fakes, token, run_cli):
    run_cli("quota", "set", "acme", "0")
    time.sleep(0.6)  # the running proxy picks the change up within RELOAD_INTERVAL
    client = case.make_client(gateway.url(case.provider), token, httpx.Client())
    if hasattr(client, "with_options"):
        client = client.with_options(max_retries=2)  # the SDKs' default: retries 429s
    started = time.monotonic()
    with pytest.raises(Exception) as info:
        case.call(client, False)
    assert time.monotonic() - started < 0.4, "the SDK waited to retry"
    assert "429" in str(info.value) + repr(info.value)
    assert fakes[case.provider].received == []
    [row] = gateway.wait_rows(1)
    assert row["status"] == 429 and "monthly cap of 0" in row["error"]


def test_the_cap_holds_across_providers_and_modes(gateway, fakes, token, run_cli, secrets_used):
    cap = 15
    run_cli("quota", "set", "acme", str(cap))
    run_cli("quota", "rpm", "acme", "none")
    time.sleep(0.6)
    jobs = []
    for case in CASES:
        path, headers, body = case.raw_stream(token)
        body = {**body, "stream": False} if "stream" in body else body
        key = case.passthrough_key()
        secrets_used.append(key)
        claimed = {k: v.replace(token, key) for k, v in headers.items()}
        claimed["x-metrion-token"] = token
        for h in (headers, claimed) * 6:
            jobs.append((gateway.url(case.provider) + path.replace("streamGenerateContent?alt=sse", "generateContent"), h, body))

    def send(job):
        url, headers, body = job
        with httpx.Client(timeout=30) as http:
            return http.post(url, headers=headers, json=body).status_code

    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=30) as pool:
        statuses = list(pool.map(send, jobs))
    assert statuses.count(200) == cap and statuses.count(429) == len(jobs) - cap
    assert sum(len(f.received) for f in fakes.values()) == cap


def test_a_token_sent_by_mistake_as_model_or_requester_is_not_kept(gateway, fakes, token):
    """A Gemini model name in the path that is a token (refused: it would go upstream), and a
    token as `x-metrion-user` (served: that header is Metrion's). Neither row keeps the token;
    the data directory is searched for it when the gateway stops."""
    gemini = httpx.post(f"{gateway.url('gemini')}/v1beta/models/{token}:generateContent",
                        headers={"x-goog-api-key": token}, json={"contents": [{"parts": [{"text": "hi"}]}]})
    assert gemini.status_code == 401 and "the URL path" in gemini.json()["error"]["message"]
    assert fakes["gemini"].received == []
    openai = httpx.post(f"{gateway.url('openai')}/v1/chat/completions",
                        headers={"authorization": f"Bearer {token}", "x-metrion-user": token},
                        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    assert openai.status_code == 200
    assert fakes["openai"].received[-1].header("x-metrion-user") is None
    rows = {row["provider"]: row for row in gateway.wait_rows(2)}
    assert rows["gemini"]["model"] == "mtr_(hidden)"
    assert rows["gemini"]["endpoint"] == "/v1beta/models/mtr_(hidden):generateContent"
    assert rows["openai"]["requester"] == "mtr_(hidden)"
