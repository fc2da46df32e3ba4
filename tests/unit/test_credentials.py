"""Credentials against a real (temporary) data directory, driven with taddons."""

import asyncio
import json

import pytest
from mitmproxy import http
from mitmproxy.test import taddons

from addons import providers
from addons.credentials import Credentials
from addons.router import Router
from addons.store import Store
from metrion_cli.paths import resolve
from metrion_cli.vault import Vault

from .helpers import data_dir_with_acme, openai_flow

KEY = "sk-test-unit-0000000000001234"
KEYS = {"openai": KEY, "gemini": "AIza-test-unit-gemini-0001", "anthropic": "sk-ant-test-unit-0001"}


@pytest.fixture
def setup(data_dir):
    """Credentials over a data directory with account acme (a token; its key stored for OpenAI,
    Gemini and Anthropic)."""
    db, token = data_dir_with_acme(data_dir, KEY)
    vault = Vault.open(resolve(data_dir))
    [acme] = db.query("SELECT id FROM accounts WHERE name = 'acme'")
    for provider in ("gemini", "anthropic"):
        vault.put(acme["id"], provider, KEYS[provider])
    store, router = Store(), Router()
    credentials = Credentials(store)
    with taddons.context(store, router, credentials) as tctx:
        tctx.configure(store, metrion_data_dir=str(data_dir))
        yield tctx, store, router, credentials, token
        store.done()


def run(router, credentials, flow):
    router.request(flow)
    pending = credentials.request(flow)  # a coroutine only when it must reload first
    if pending is not None:
        asyncio.run(pending)
    return flow


def test_token_is_swapped_for_the_stored_key(setup):
    _, _, router, credentials, token = setup
    flow = run(router, credentials, openai_flow(headers={"authorization": f"Bearer {token}"}))
    assert flow.response is None
    assert flow.request.headers["authorization"] == f"Bearer {KEY}"
    assert flow.metadata["metrion"]["mode"] == "stored"


def test_two_different_credentials_are_refused(setup):
    _, _, router, credentials, token = setup
    flow = openai_flow(headers={"authorization": f"Bearer {token}"})
    flow.request.headers.add("authorization", "Bearer sk-other")
    run(router, credentials, flow)
    assert flow.response.status_code == 401
    assert "two different credentials" in json.loads(flow.response.content)["error"]["message"]


def test_a_crash_inside_credentials_fails_closed(setup, monkeypatch):
    _, store, router, credentials, token = setup

    def broken(*args):
        raise RuntimeError("boom")

    monkeypatch.setattr("addons.credentials.find_credentials", broken)
    flow = run(router, credentials, openai_flow(headers={"authorization": f"Bearer {token}"}))
    assert flow.response.status_code == 500
    body = json.loads(flow.response.content)
    assert body["error"]["type"] == "server_error" and "not forwarded" in body["error"]["message"]
    assert token not in flow.response.text


def test_the_same_token_in_several_headers_leaves_only_the_stored_key(data_dir):
    """Anthropic reads x-api-key and Authorization: the token in x-api-key and twice in
    Authorization is one credential; the key goes in x-api-key and both copies go."""
    db, token = data_dir_with_acme(data_dir, KEY)
    acme_id = db.execute("SELECT id FROM accounts WHERE name = 'acme'").fetchone()[0]
    anthropic_key = "test-anthropic-key-unit-5678"
    Vault.open(resolve(data_dir)).put(acme_id, "anthropic", anthropic_key)
    store, router = Store(), Router()
    credentials = Credentials(store)
    with taddons.context(store, router, credentials) as tctx:
        tctx.configure(store, metrion_data_dir=str(data_dir))
        flow = openai_flow(path="/v1/messages", upstream=providers.get("anthropic").DEFAULT_UPSTREAM,
                           body=b'{"model":"claude-sonnet-4","max_tokens":5,"messages":[]}',
                           headers={"x-api-key": token})
        flow.request.headers.add("authorization", f"Bearer {token}")
        flow.request.headers.add("authorization", f"Bearer {token}")
        run(router, credentials, flow)
        store.done()
    assert flow.response is None
    assert flow.request.headers.get_all("x-api-key") == [anthropic_key]
    assert "authorization" not in flow.request.headers
    assert token not in str(flow.request.headers)


def test_a_pass_through_key_with_bytes_that_are_not_utf8_is_fingerprinted_not_logged(setup, caplog):
    _, _, router, credentials, _ = setup
    flow = openai_flow()
    flow.request.headers.fields = (*flow.request.headers.fields, (b"authorization", b"Bearer sk-unit-odd-key\xff"))
    run(router, credentials, flow)
    assert flow.response is None and flow.metadata["metrion"]["mode"] == "passthrough"
    assert len(flow.metadata["metrion"]["key_fingerprint"]) == 16
    assert "sk-unit-odd-key" not in caplog.text


@pytest.mark.parametrize("value", ["Token {token}", "Bearer\t{token}", "Bearer Bearer {token}", "Bearer:{token}",
                                   'Bearer "{token}"', "Bearer\xa0{token}"])
def test_a_token_the_slot_does_not_read_as_one_is_refused_not_forwarded(setup, value):
    """A token behind a scheme the slot does not use would otherwise be taken for a provider key
    and sent to the provider."""
    _, _, router, credentials, token = setup
    flow = run(router, credentials, openai_flow(headers={"authorization": value.format(token=token)}))
    assert flow.response.status_code == 401
    body = json.loads(flow.response.content)
    assert body["error"]["message"].startswith("Metrion: a Metrion token must be sent where openai's SDK")
    assert "`authorization: Bearer mtr_...`" in body["error"]["message"]
    assert token not in flow.response.text
    assert flow.metadata["metrion"].get("mode") != "passthrough"


@pytest.mark.parametrize("key", ["sk-proj-abcmtr_def0123", "sk-proj-ab-mtr_def0123", "sk-ant-api03-x_mtr_y"])
def test_a_provider_key_with_mtr_inside_it_still_passes_through(setup, key):
    _, _, router, credentials, _ = setup
    flow = run(router, credentials, openai_flow(headers={"authorization": f"Bearer {key}"}))
    assert flow.response is None
    assert flow.request.headers["authorization"] == f"Bearer {key}"
    assert flow.metadata["metrion"]["mode"] == "passthrough"


def provider_flow(provider, path, headers):
    body = b'{"contents":[]}' if provider == "gemini" else b'{"model":"m","messages":[]}'
    return openai_flow(path=path, headers=headers, body=body, upstream=providers.get(provider).DEFAULT_UPSTREAM)


GEMINI_PATH = "/v1beta/models/gemini-2.0-flash:generateContent"
SLOT_OF = {"openai": "`authorization: Bearer mtr_...`", "anthropic": "`x-api-key: mtr_...`",
           "gemini": "`x-goog-api-key: mtr_...`"}

# (provider, the key's place, the request's path and other headers, where the refusal says the
# token is); {token} is the token, {rest} what follows its prefix
ELSEWHERE = [
    ("openai", "authorization", "/v1/chat/completions", {"x-team-auth": "{token}"}, "the 'x-team-auth' header"),
    ("openai", "authorization", "/v1/chat/completions", {"X-Trace": "user=alice;{token}"}, "the 'X-Trace' header"),
    ("openai", "authorization", "/v1/chat/completions", {"x-auth-{token}": "{token}"}, "a header"),
    ("openai", "authorization", "/v1/chat/completions?state={token}", {}, "the 'state' query parameter"),
    ("openai", "authorization", "/v1/chat/completions?state=%6D%74%72%5F{rest}", {}, "the 'state' query parameter"),
    ("openai", "authorization", "/v1/chat/completions?{token}=1", {}, "a query parameter"),
    ("openai", "authorization", "/{token}/v1/chat/completions", {}, "the URL path"),
    ("openai", "authorization", "/v1/files/%6Dtr_{rest}", {}, "the URL path"),
    ("anthropic", "x-api-key", "/v1/messages", {"x-team-auth": "Bearer {token}"}, "the 'x-team-auth' header"),
    ("gemini", "x-goog-api-key", GEMINI_PATH + "?alt=sse&state={token}", {}, "the 'state' query parameter"),
]


@pytest.mark.parametrize("credential", ["token", "provider key"])
@pytest.mark.parametrize("provider, slot, path, extra, where", ELSEWHERE)
def test_a_token_left_outside_the_credential_slots_is_refused_not_forwarded(setup, credential, provider, slot,
                                                                             path, extra, where):
    """Only the slots are swapped or checked: a token elsewhere in the request would go to the
    provider as it is, beside the swapped key or the client's own provider key."""
    _, _, router, credentials, token = setup
    fill = {"token": token, "rest": token.removeprefix("mtr_")}
    own_key = "sk-client-own-key-0001"
    sent = {slot: ("Bearer " if slot == "authorization" else "") + (token if credential == "token" else own_key),
            **{name.format(**fill): value.format(**fill) for name, value in extra.items()}}
    flow = run(router, credentials, provider_flow(provider, path.format(**fill), sent))
    assert flow.response is not None and flow.response.status_code == 401  # answered here: not forwarded
    message = json.loads(flow.response.content)["error"]["message"]
    assert message == (f"Metrion: a Metrion token in {where} would go to {provider} as it is: send it only where "
                       f"{provider}'s SDK sends its key, as {SLOT_OF[provider]}; nothing was forwarded")
    assert fill["rest"] not in flow.response.text and KEYS[provider] not in flow.response.text


def test_a_token_in_a_request_trailer_is_refused(setup):
    _, _, router, credentials, token = setup
    flow = openai_flow(headers={"authorization": f"Bearer {token}"})
    flow.request.trailers = http.Headers(x_team_auth=token)
    flow = run(router, credentials, flow)
    assert flow.response.status_code == 401
    assert "a Metrion token in the 'x-team-auth' header would go to openai" in flow.response.text


@pytest.mark.parametrize("path, headers", [
    (GEMINI_PATH + "?key={token}", {"x-goog-api-key": "{token}"}),   # the token in two slots
    (GEMINI_PATH + "?%6Bey={token}", {}),                             # the key parameter's name encoded
    (GEMINI_PATH + "?alt=sse&k%65y={token}&x=1", {}),
])
def test_a_token_in_a_gemini_slot_is_swapped_wherever_and_however_it_is_written(setup, path, headers):
    _, _, router, credentials, token = setup
    flow = run(router, credentials, provider_flow("gemini", path.format(token=token),
                                                  {k: v.format(token=token) for k, v in headers.items()}))
    assert flow.response is None
    sent = flow.request.path + "".join(f"{k}:{v}" for k, v in flow.request.headers.items(multi=True))
    assert token.removeprefix("mtr_") not in sent
    assert KEYS["gemini"] in sent and flow.metadata["metrion"]["mode"] == "stored"


@pytest.mark.parametrize("extra, path", [
    ({"x-request-id": "req-abcmtr_def"}, "/v1/chat/completions"),   # inside a word: not a token
    ({"x-note": "MTR_upper"}, "/v1/chat/completions?ref=sk-mtr_x"),
])
def test_mtr_inside_a_word_elsewhere_is_not_a_token(setup, extra, path):
    _, _, router, credentials, token = setup
    flow = run(router, credentials, openai_flow(path=path, headers={"authorization": f"Bearer {token}", **extra}))
    assert flow.response is None
    assert flow.request.headers["authorization"] == f"Bearer {KEY}"
