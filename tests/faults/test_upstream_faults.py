"""Upstream failures, against a real `metrion serve`: the client gets the provider's shape, the
row says what happened, and the proxy serves the next request."""

import time

import httpx2 as httpx
import openai
import pytest

from conftest import free_port
from metrion_cli.fakes import Behaviour

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def test_upstream_down_gets_502_in_openai_shape(acme, start_gateway):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    gateway = start_gateway({"openai": dead})
    started = time.monotonic()
    r = httpx.post(gateway.url() + "/v1/chat/completions", json=BODY,
                   headers={"authorization": f"Bearer {acme.token}"}, timeout=30)
    assert time.monotonic() - started < 5
    assert r.status_code == 502
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and "could not be reached" in error["message"]
    with pytest.raises(openai.InternalServerError):
        openai.OpenAI(api_key=acme.token, base_url=gateway.url() + "/v1", max_retries=0).chat.completions.create(**BODY)
    rows = gateway.wait_rows(2)
    assert [r["status"] for r in rows] == [502, 502] and all(r["error"] for r in rows)


def test_upstream_reset_mid_stream_ends_the_stream_with_an_error(gateway, acme, fake_openai):
    fake_openai.behaviour = Behaviour(reset_after_chunks=2, chunks=6)
    client = openai.OpenAI(api_key=acme.token, base_url=gateway.url() + "/v1", max_retries=0)
    stream = client.chat.completions.create(**BODY, stream=True, stream_options={"include_usage": True})
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass
    [row] = gateway.wait_rows(1)
    assert row["status"] == 200 and row["streamed"] == 1 and row["error"]
    assert row["client_aborted"] == 0
    fake_openai.behaviour = Behaviour()
    assert client.chat.completions.create(**BODY).choices[0].message.content


def test_upstream_silent_before_answering_gets_504(acme, fake_openai, start_gateway):
    fake_openai.behaviour = Behaviour(first_byte_delay=6)
    gateway = start_gateway({"openai": fake_openai.url}, extra=["--set", "metrion_upstream_timeout=1"])
    started = time.monotonic()
    r = httpx.post(gateway.url() + "/v1/chat/completions", json=BODY,
                   headers={"authorization": f"Bearer {acme.token}"}, timeout=30)
    assert r.status_code == 504 and time.monotonic() - started < 4
    assert r.json()["error"]["type"] == "server_error" and "in time" in r.json()["error"]["message"]
    [row] = gateway.wait_rows(1)
    assert row["status"] == 504 and "no bytes from the upstream for 1 s" in row["error"]


def test_upstream_stalling_mid_stream_ends_the_stream(acme, fake_openai, start_gateway):
    fake_openai.behaviour = Behaviour(stall_after_chunks=2, chunks=6)
    gateway = start_gateway({"openai": fake_openai.url}, extra=["--set", "metrion_upstream_timeout=1"])
    client = openai.OpenAI(api_key=acme.token, base_url=gateway.url() + "/v1", max_retries=0, timeout=20)
    started = time.monotonic()
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(**BODY, stream=True):
            pass
    assert time.monotonic() - started < 5
    [row] = gateway.wait_rows(1)
    assert row["status"] == 200 and "no bytes from the upstream for 1 s" in row["error"]
    fake_openai.behaviour = Behaviour()
    assert client.chat.completions.create(**BODY).choices[0].message.content


@pytest.mark.parametrize("body, message", [
    (b"{not json", "not valid JSON"), (b'{"model": "gpt-4o-mini"}', "messages"),
])
def test_malformed_body_gets_400_unsent_and_uncounted(acme, run_cli, fake_openai, start_gateway, body, message):
    run_cli("quota", "set", "acme", "1")
    gateway = start_gateway({"openai": fake_openai.url})
    headers = {"authorization": f"Bearer {acme.token}", "content-type": "application/json"}
    r = httpx.post(gateway.url() + "/v1/chat/completions", content=body, headers=headers)
    assert r.status_code == 400 and message in r.json()["error"]["message"]
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert fake_openai.received == []
    # the one request the cap allows is still there
    assert httpx.post(gateway.url() + "/v1/chat/completions", json=BODY, headers=headers).status_code == 200
    rows = gateway.wait_rows(2)
    assert [(r["status"], r["forwarded"]) for r in rows] == [(400, 0), (200, 1)]
