"""Quota with an injected clock: a month boundary crossed without waiting."""

import asyncio
import datetime
import json

import pytest
from mitmproxy.test import taddons

from addons.credentials import Credentials
from addons.quota import Quota
from addons.router import Router
from addons.store import Store
from metrion_cli import accounts

from .helpers import data_dir_with_acme, openai_flow


class Clock:
    def __init__(self, moment):
        self.moment = moment

    def __call__(self):
        return self.moment.timestamp()


@pytest.fixture
def chain(data_dir):
    db, token = data_dir_with_acme(data_dir, "sk-test-quota-unit-0001")
    accounts.set_cap(db, "acme", 2)
    clock = Clock(datetime.datetime(2026, 11, 30, 23, 59, 58, tzinfo=datetime.timezone.utc))
    store = Store(clock)
    addons = [store, Router(), Credentials(store), Quota(store)]
    with taddons.context(*addons) as tctx:
        tctx.configure(store, metrion_data_dir=str(data_dir))

        def send():
            flow = openai_flow(headers={"authorization": f"Bearer {token}"})
            for addon in addons[1:]:
                result = addon.request(flow)
                if asyncio.iscoroutine(result):
                    asyncio.run(result)
            return flow

        yield send, clock, store
        store.done()


def test_cap_then_rollover_at_the_first(chain):
    send, clock, _ = chain
    assert [send().response for _ in range(2)] == [None, None]
    refused = send().response
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "2"  # 23:59:58 -> 00:00:00
    assert "2026-12-01T00:00:00Z" in json.loads(refused.content)["error"]["message"]
    clock.moment = datetime.datetime(2026, 12, 1, 0, 0, 1, tzinfo=datetime.timezone.utc)
    assert send().response is None
    flow = send()
    assert flow.response is None and flow.metadata["metrion"]["month"] == "2026-12"
    assert send().response.status_code == 429


def test_a_crash_inside_quota_fails_closed(chain, monkeypatch):
    send, _, store = chain
    monkeypatch.setattr(store, "now", lambda: 1 / 0)
    response = send().response
    assert response.status_code == 500 and "Quota" in json.loads(response.content)["error"]["message"]
