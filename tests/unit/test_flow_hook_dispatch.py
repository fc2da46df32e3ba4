"""The lean Master's flow-event dispatch (metrion_cli.serve.FlowHookDispatch) against what
mitmproxy's own AddonManager.handle_lifecycle does: the same hooks, in the same order, with
the same error handling. Each case runs both and compares."""

import asyncio
import logging

import pytest
from mitmproxy import exceptions, master, options
from mitmproxy.proxy.layers.http import HttpRequestHook, HttpResponseHook
from mitmproxy.proxy.server_hooks import ClientConnectedHook
from mitmproxy.test import tflow

from metrion_cli.serve import FlowHookDispatch


class Recording:
    def __init__(self, name: str, calls: list, *, fail: bool = False, halt: bool = False,
                 awaits: bool = False) -> None:
        self.name, self.calls, self.fail, self.halt, self.awaits = name, calls, fail, halt, awaits

    def request(self, flow):
        if self.awaits:
            return self._later("request")
        self.calls.append((self.name, "request"))
        if self.fail:
            raise ValueError(f"{self.name} broke")
        if self.halt:
            raise exceptions.AddonHalt()

    async def _later(self, what):
        await asyncio.sleep(0.01)
        self.calls.append((self.name, what))

    def update(self, flows):
        self.calls.append((self.name, f"update {len(flows)}"))

    def client_connected(self, client):
        self.calls.append((self.name, "client_connected"))


class Parent:
    """An addon with sub-addons (mitmproxy walks `addons` after the parent)."""

    def __init__(self, calls: list) -> None:
        self.calls = calls
        self.addons = [Recording("child", calls)]

    def request(self, flow):
        self.calls.append(("parent", "request"))


def run(make_addons, events, fast: bool):
    """The calls the addons saw, with mitmproxy's dispatch or with FlowHookDispatch."""

    async def go():
        proxy = master.Master(options.Options())
        if fast:
            FlowHookDispatch(proxy.addons).install()
        calls: list = []
        proxy.addons.add(*make_addons(calls))
        for event in events():
            await proxy.addons.handle_lifecycle(event)
        await proxy.done()  # takes the Master's log handler off again
        return calls

    return asyncio.run(go())


def same_calls(make_addons, events):
    mitmproxy_calls = run(make_addons, events, fast=False)
    ours = run(make_addons, events, fast=True)
    assert ours == mitmproxy_calls
    return ours


def test_hooks_run_in_chain_order_with_sub_addons_and_updates():
    calls = same_calls(
        lambda calls: [Recording("a", calls), Parent(calls), Recording("b", calls)],
        lambda: [HttpRequestHook(tflow.tflow())])
    assert calls == [("a", "request"), ("parent", "request"), ("child", "request"), ("b", "request"),
                     ("a", "update 1"), ("child", "update 1"), ("b", "update 1")]


def test_a_coroutine_hook_is_finished_before_the_next_addon_runs():
    calls = same_calls(lambda calls: [Recording("slow", calls, awaits=True), Recording("next", calls)],
                       lambda: [HttpRequestHook(tflow.tflow())])
    assert calls[:2] == [("slow", "request"), ("next", "request")]


def test_an_error_is_logged_and_the_next_addon_still_runs(caplog):
    with caplog.at_level(logging.ERROR):
        calls = same_calls(lambda calls: [Recording("broken", calls, fail=True), Recording("next", calls)],
                           lambda: [HttpRequestHook(tflow.tflow())])
    assert ("next", "request") in calls
    assert [r.getMessage() for r in caplog.records].count("Addon error: broken broke") == 2  # both runs


def test_addon_halt_stops_the_event_for_later_addons():
    calls = same_calls(lambda calls: [Recording("stopper", calls, halt=True), Recording("later", calls)],
                       lambda: [HttpRequestHook(tflow.tflow())])
    assert ("later", "request") not in calls


def test_events_without_a_flow_get_no_update():
    calls = same_calls(lambda calls: [Recording("a", calls)],
                       lambda: [ClientConnectedHook(tflow.tclient_conn())])
    assert calls == [("a", "client_connected")]


@pytest.mark.parametrize("fast", [False, True])
def test_an_addon_added_after_the_first_event_gets_the_next_one(fast):
    async def go():
        proxy = master.Master(options.Options())
        if fast:
            FlowHookDispatch(proxy.addons).install()
        calls: list = []
        proxy.addons.add(Recording("first", calls))
        await proxy.addons.handle_lifecycle(HttpResponseHook(tflow.tflow(resp=True)))
        late = Recording("late", calls)
        proxy.addons.add(late)
        await proxy.addons.handle_lifecycle(HttpRequestHook(tflow.tflow()))
        proxy.addons.remove(late)
        await proxy.addons.handle_lifecycle(HttpRequestHook(tflow.tflow()))
        await proxy.done()
        return calls

    calls = asyncio.run(go())
    assert [c for c in calls if c[1] == "request"] == [("first", "request"), ("late", "request"),
                                                       ("first", "request")]


class Broken:
    """A parent whose request hook raises, with a child that has one too."""

    def __init__(self, calls: list) -> None:
        self.calls = calls
        self.addons = [Recording("broken-child", calls)]

    def request(self, flow):
        self.calls.append(("broken", "request"))
        raise ValueError("parent broke")


class NotAHook:
    """An addon with a non-callable attribute under a hook's name."""

    request = "not callable"


def test_a_failing_parent_skips_its_children_for_that_event_only():
    calls = same_calls(lambda calls: [Broken(calls), Recording("next", calls)],
                       lambda: [HttpRequestHook(tflow.tflow()), HttpRequestHook(tflow.tflow())])
    assert calls.count(("broken-child", "request")) == 0
    assert calls.count(("next", "request")) == 2


def test_a_non_callable_hook_is_logged_at_each_event_and_the_rest_still_run(caplog):
    with caplog.at_level(logging.ERROR):
        calls = same_calls(lambda calls: [Recording("a", calls), NotAHook(), Recording("b", calls)],
                           lambda: [HttpRequestHook(tflow.tflow()), HttpRequestHook(tflow.tflow())])
    assert [c for c in calls if c[1] == "request"] == [("a", "request"), ("b", "request")] * 2
    assert sum("not callable" in r.getMessage() for r in caplog.records) == 4  # 2 events, both runs
