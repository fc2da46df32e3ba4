"""The client misbehaves: it leaves mid-stream, or sends hostile headers."""

import time

import httpx2 as httpx
import pytest

from metrion_cli.fakes import Behaviour

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def test_client_leaving_mid_stream_closes_the_upstream_connection(gateway, acme, fake_openai):
    fake_openai.behaviour = Behaviour(chunk_delay=0.2, chunks=50)
    with httpx.Client() as http:
        with http.stream("POST", gateway.url() + "/v1/chat/completions", json=BODY,
                         headers={"authorization": f"Bearer {acme.token}"}) as r:
            next(r.iter_raw())
    deadline = time.monotonic() + 5
    while fake_openai.connections_closed < fake_openai.connections and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake_openai.connections_closed == fake_openai.connections == 1
    assert time.monotonic() < deadline - 3, "the upstream kept streaming to nobody"
    [row] = gateway.wait_rows(1)
    assert row["client_aborted"] == 1 and row["status"] == 200
    fake_openai.behaviour = Behaviour()
    assert httpx.post(gateway.url() + "/v1/chat/completions", json={**BODY, "stream": False},
                      headers={"authorization": f"Bearer {acme.token}"}).status_code == 200


@pytest.mark.parametrize("requester, stored", [
    ("bob\x01\x7f\x1b[31m", "bob\\x01\\x7f\\x1b[31m"),
    ("x" * 10_000, "x" * 200),
    (b"caf\xe9 \xff".decode("latin-1"), "caf\\xe9 \\xff"),
])
def test_hostile_requester_header_is_stored_safely(gateway, acme, fake_openai, requester, stored):
    headers = [(b"authorization", f"Bearer {acme.token}".encode()),
               (b"x-metrion-user", requester.encode("latin-1") if len(requester) < 100 else requester.encode())]
    r = httpx.post(gateway.url() + "/v1/chat/completions", json={**BODY, "stream": False}, headers=headers)
    assert r.status_code == 200
    [row] = gateway.wait_rows(1)
    assert row["requester"] == stored
    assert "x-metrion-user" not in dict(fake_openai.received[-1].headers)


def test_two_different_keys_are_refused_not_guessed(gateway, acme, fake_openai, secrets_used):
    other = "sk-proj-other-" + "o" * 24
    secrets_used.append(other)
    headers = [(b"authorization", f"Bearer {acme.token}".encode()), (b"authorization", f"Bearer {other}".encode())]
    r = httpx.post(gateway.url() + "/v1/chat/completions", json={**BODY, "stream": False}, headers=headers)
    assert r.status_code == 401 and "two different credentials" in r.json()["error"]["message"]
    assert fake_openai.received == []
