"""The one pass (addons/onepass.py) leaves every request as the chain of addons would.

Each case runs twice from the same quota state: first through the chain alone (which, as for a
token's first request in the proxy, caches the token's hash), then through `Metrion.request`
with the one pass in front. The response (if any), the headers sent on, the row's metadata, the
quota's counts and whether the flow is in flight must come out the same; the cases the one pass
is for must really take it.
"""

import asyncio
import collections
import time

import pytest
from mitmproxy import http
from mitmproxy.test import taddons

from addons import providers
from addons.metrion import Metrion
from metrion_cli import accounts, tokens
from metrion_cli.paths import resolve
from metrion_cli.vault import Vault

from .helpers import data_dir_with_acme, openai_flow

OPENAI_KEY = "sk-test-onepass-openai-0001"
ANTHROPIC_KEY = "sk-ant-test-onepass-0001"
CHAT = b'{"model":"gpt-4o-mini","messages":[]}'
MESSAGES = b'{"model":"claude-sonnet-4","max_tokens":5,"messages":[]}'


@pytest.fixture
def world(data_dir):
    db, token = data_dir_with_acme(data_dir, OPENAI_KEY)
    paths = resolve(data_dir)
    vault = Vault.open(paths)
    acme = accounts.get(db, "acme")
    vault.put(acme["id"], "anthropic", ANTHROPIC_KEY)
    revoked, revoked_row = tokens.create(db, acme["id"])
    tokens.revoke(db, revoked_row["id"])
    limited, _ = tokens.create(db, acme["id"], rpm=1)
    capped = accounts.add(db, "capped")
    accounts.set_cap(db, "capped", 0)
    vault.put(capped["id"], "openai", OPENAI_KEY)
    capped_token, _ = tokens.create(db, capped["id"])
    keyless = accounts.add(db, "keyless")
    keyless_token, _ = tokens.create(db, keyless["id"])
    # A Metrion token stored as the provider key (`keys add` refuses it; a vault written before)
    mistaken = accounts.add(db, "mistaken")
    vault.put(mistaken["id"], "openai", "mtr_" + "k" * 43)
    mistaken_token, _ = tokens.create(db, mistaken["id"])
    metrion = Metrion(data_dir=str(data_dir))
    with taddons.context(metrion) as tctx:
        tctx.configure(metrion, metrion_data_dir=str(data_dir))
        # Every token known to the snapshot, as once the proxy has run a while.
        asyncio.run(metrion.store.refresh())
        yield metrion, tctx, {"ok": token, "revoked": revoked, "limited": limited, "capped": capped_token,
                              "keyless": keyless_token, "mistaken": mistaken_token}
        metrion.store.done()


def anthropic_flow(headers, body=MESSAGES, path="/v1/messages"):
    return openai_flow(path=path, headers=headers, body=body, upstream=providers.get("anthropic").DEFAULT_UPSTREAM)


def gemini_flow(headers):
    return openai_flow(path="/v1beta/models/gemini-2.0-flash:generateContent", headers=headers,
                       body=b'{"contents":[]}', upstream=providers.get("gemini").DEFAULT_UPSTREAM)


def with_trailers(flow, trailers=((b"x-checksum", b"abc"),)):
    flow.request.trailers = http.Headers(list(trailers))
    return flow


def outcome(metrion: Metrion, flow, use_one_pass: bool):
    """Runs the request hook; returns what a user of the flow sees, and whether the one pass took it."""
    taken = []
    admit = metrion.one_pass.admit

    def spy(f):
        taken.append(admit(f))
        return taken[-1]

    metrion.one_pass.admit = spy if use_one_pass else (lambda f: False)
    try:
        pending = metrion.request(flow)
        if pending is not None:
            asyncio.run(pending)
    finally:
        metrion.one_pass.admit = admit
    quota = metrion.children[3]
    response = (flow.response.status_code, flow.response.content) if flow.response else None
    return (response, flow.request.headers.fields, flow.metadata.get("metrion"), dict(quota.used),
            {k: len(v) for k, v in quota.recent.items()}, flow.request.content,
            flow.id in metrion.store.inflight), bool(taken and taken[0])


def both(metrion: Metrion, make_flow, prepare=None):
    quota = metrion.children[3]
    results = []
    for use_one_pass in (False, True):
        quota._start_month(metrion.store.now())
        quota.used = {}
        quota.recent = {}
        if prepare:
            prepare(metrion)
        metrion.store.inflight.clear()
        results.append(outcome(metrion, make_flow(), use_one_pass))
    (chain, _), (one, taken) = results
    assert one == chain
    return taken, chain


def bearer(token, name=b"authorization", scheme=b"Bearer "):
    return [(name, scheme + token.encode()), (b"content-type", b"application/json")]


# (name, flow maker given the tokens, whether the one pass takes it)
CASES = [
    ("plain", lambda t: openai_flow(headers=bearer(t["ok"]), body=CHAT), True),
    ("scheme in lower case", lambda t: openai_flow(headers=bearer(t["ok"], scheme=b"bearer "), body=CHAT), True),
    ("header name in capitals",
     lambda t: openai_flow(headers=bearer(t["ok"], name=b"AUTHORIZATION"), body=CHAT), True),
    ("spaces around the token", lambda t: openai_flow(headers=bearer(" " + t["ok"] + "  "), body=CHAT), True),
    ("a GET", lambda t: openai_flow(path="/v1/models", headers=bearer(t["ok"]), body=b"", method="GET"), True),
    ("a query string",
     lambda t: openai_flow(path="/v1/chat/completions?x=1", headers=bearer(t["ok"]), body=CHAT), True),
    ("a requester", lambda t: openai_flow(headers=bearer(t["ok"]) + [(b"x-metrion-user", b"bob")], body=CHAT), False),
    ("compressed body",
     lambda t: openai_flow(headers=bearer(t["ok"]) + [(b"content-encoding", b"gzip")], body=CHAT), False),
    ("the token twice", lambda t: openai_flow(headers=bearer(t["ok"]) + bearer(t["ok"])[:1], body=CHAT), False),
    ("two credentials",
     lambda t: openai_flow(headers=bearer(t["ok"]) + [(b"Authorization", b"Bearer sk-x")], body=CHAT), False),
    ("no credential", lambda t: openai_flow(headers=[(b"content-type", b"application/json")], body=CHAT), False),
    ("unknown token", lambda t: openai_flow(headers=bearer("mtr_unknown0000000000000000"), body=CHAT), False),
    ("revoked token", lambda t: openai_flow(headers=bearer(t["revoked"]), body=CHAT), False),
    ("provider key", lambda t: openai_flow(headers=bearer("sk-test-passthrough-0001"), body=CHAT), False),
    ("token behind another scheme", lambda t: openai_flow(headers=bearer(t["ok"], scheme=b"Token "), body=CHAT), False),
    ("a token in another header",
     lambda t: openai_flow(headers=bearer(t["ok"]) + [(b"x-team-auth", t["ok"].encode())], body=CHAT), False),
    ("a token in the query",
     lambda t: openai_flow(path=f"/v1/chat/completions?state={t['ok']}", headers=bearer(t["ok"]), body=CHAT), False),
    ("a percent-encoded token in the query", lambda t: openai_flow(
        path=f"/v1/chat/completions?state=%6Dtr_{t['ok'][4:]}", headers=bearer(t["ok"]), body=CHAT), False),
    ("a token stored as the key", lambda t: openai_flow(headers=bearer(t["mistaken"]), body=CHAT), False),
    ("request trailers", lambda t: with_trailers(openai_flow(headers=bearer(t["ok"]), body=CHAT)), False),
    ("a token in the path", lambda t: openai_flow(path=f"/{t['ok']}/v1/chat/completions", headers=bearer(t["ok"]),
                                                  body=CHAT), False),
    ("missing field", lambda t: openai_flow(headers=bearer(t["ok"]), body=b'{"model":"x"}'), False),
    ("not JSON", lambda t: openai_flow(headers=bearer(t["ok"]), body=b"{nope"), False),
    ("account at its cap", lambda t: openai_flow(headers=bearer(t["capped"]), body=CHAT), False),
    ("no stored key", lambda t: openai_flow(headers=bearer(t["keyless"]), body=CHAT), False),
    ("anthropic, x-api-key", lambda t: anthropic_flow(
        [(b"x-api-key", t["ok"].encode()), (b"anthropic-version", b"2020-01-01")]), True),
    ("anthropic, bearer", lambda t: anthropic_flow(bearer(t["ok"])), True),
    ("anthropic, both slots", lambda t: anthropic_flow([(b"x-api-key", t["ok"].encode())] + bearer(t["ok"])), False),
    ("anthropic, no key stored for another account",
     lambda t: anthropic_flow([(b"x-api-key", t["capped"].encode())]), False),
    ("gemini (a query slot)", lambda t: gemini_flow([(b"x-goog-api-key", t["ok"].encode())]), False),
]


@pytest.mark.parametrize("name, make, one_pass_takes", CASES, ids=[c[0] for c in CASES])
def test_the_one_pass_leaves_the_request_as_the_chain_does(world, name, make, one_pass_takes):
    metrion, _, known = world
    taken, _ = both(metrion, lambda: make(known))
    assert taken == one_pass_takes


def test_over_the_token_rate_both_refuse_and_under_it_both_count(world):
    metrion, _, known = world

    def one_recent(m):
        m.children[3].recent[tokens_id(m, known["limited"])] = collections.deque([time.monotonic()])

    make = lambda: openai_flow(headers=bearer(known["limited"]), body=CHAT)  # noqa: E731
    taken, (response, *_rest) = both(metrion, make, one_recent)
    assert not taken and response[0] == 429
    taken, (response, *_rest) = both(metrion, make)
    assert taken and response is None


def tokens_id(metrion: Metrion, token: str) -> int:
    return metrion.store.directory.tokens[metrion.children[1]._hash(token)].token_id


def test_shutting_down_and_stream_usage_go_to_the_chain(world):
    metrion, tctx, known = world
    make = lambda: openai_flow(headers=bearer(known["ok"]), body=CHAT)  # noqa: E731
    metrion.store.closing = True
    taken, (response, *_rest) = both(metrion, make)
    assert not taken and response[0] == 503
    metrion.store.closing = False
    tctx.configure(metrion, metrion_stream_usage=True)
    taken, _ = both(metrion, lambda: openai_flow(headers=bearer(known["ok"]),
                                                 body=b'{"model":"m","messages":[],"stream":true}'))
    assert not taken


def test_a_new_month_goes_to_the_chain_which_starts_it(world):
    metrion, _, known = world
    quota = metrion.children[3]
    make = lambda: openai_flow(headers=bearer(known["ok"]), body=CHAT)  # noqa: E731

    def last_month(m):
        m.children[3].month_starts = m.children[3].month_ends = 0.0

    taken, _ = both(metrion, make, last_month)
    assert not taken and quota.month_starts > 0


def test_an_error_in_the_one_pass_leaves_the_request_to_the_chain(world, monkeypatch, caplog):
    metrion, _, known = world

    def broken(*args):
        raise UnicodeEncodeError("utf-8", known["ok"], 0, 1, "a message quoting the credential")

    both(metrion, lambda: openai_flow(headers=bearer(known["ok"]), body=CHAT))  # the token's hash known
    counted = dict(metrion.children[3].used)
    monkeypatch.setattr("addons.onepass.credential_in", broken)
    flow = openai_flow(headers=bearer(known["ok"]), body=CHAT)
    metrion.request(flow)
    # The chain took it from the start: forwarded with the key, counted once.
    assert flow.response is None and flow.request.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    account = flow.metadata["metrion"]["account_id"]
    assert metrion.children[3].used[account] == counted[account] + 1
    assert "the one pass failed" in caplog.text and known["ok"] not in caplog.text


def test_a_stored_key_that_cannot_be_sent_fails_closed_and_counts_nothing(world, caplog):
    """The one pass meets it while making the new headers, before it counts: the chain then
    meets it too, answers 500 and forwards nothing."""
    metrion, _, known = world
    both(metrion, lambda: openai_flow(headers=bearer(known["ok"]), body=CHAT))  # the token's hash known
    directory = metrion.store.directory
    account = directory.tokens[metrion.children[1]._hash(known["ok"])].account_id
    stored = directory.keys[(account, "openai")]
    directory.keys[(account, "openai")] = stored._replace(key="sk-\ud800-not-encodable")
    counted = dict(metrion.children[3].used)
    flow = openai_flow(headers=bearer(known["ok"]), body=CHAT)
    metrion.request(flow)
    assert flow.response.status_code == 500
    assert dict(metrion.children[3].used) == counted
    assert "the one pass failed" in caplog.text and known["ok"] not in caplog.text


def test_a_fixed_header_that_is_also_a_credential_slot_turns_the_one_pass_off_for_that_provider():
    from addons.onepass import OnePass
    from addons.router import Router

    router = Router()
    router.fixed_headers["anthropic"][b"x-api-key"] = "fixed"
    one_pass = OnePass(router, None, None, None)
    assert one_pass.slots["anthropic"] is None and one_pass.slots["openai"]


def test_with_another_request_hook_among_the_children_the_one_pass_is_off(world):
    metrion, _, known = world
    seen = []

    class Extra:
        def request(self, flow):
            seen.append(flow.id)

    metrion.add(Extra())
    assert not metrion.one_pass_on
    flow = openai_flow(headers=bearer(known["ok"]), body=CHAT)
    metrion.request(flow)
    assert seen == [flow.id] and flow.response is None
