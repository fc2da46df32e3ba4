import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons

from addons.router import Router, clean_requester, parse_upstreams

from .helpers import openai_flow


def test_routes_by_the_listeners_upstream_and_strips_metrion_headers():
    router = Router()
    with taddons.context(router) as tctx:
        tctx.configure(router, metrion_upstream=["openai=http://127.0.0.1:9001"])
        flow = openai_flow(upstream="http://127.0.0.1:9001",
                           headers={"x-metrion-user": "bob", "X-Metrion-Token": "mtr_x", "x-other": "1"})
        router.request(flow)
        assert flow.response is None
        assert flow.metadata["metrion"]["provider"] == "openai"
        assert flow.metadata["metrion"]["requester"] == "bob"
        assert flow.metadata["metrion"]["metrion_token"] == "mtr_x"
        assert "x-metrion-user" not in flow.request.headers and "x-metrion-token" not in flow.request.headers
        assert flow.request.headers["x-other"] == "1"


def test_public_api_upstream_needs_no_option():
    router = Router()
    with taddons.context(router):
        flow = openai_flow()
        router.request(flow)
        assert flow.metadata["metrion"]["provider"] == "openai"


def test_unknown_listener_gets_404_and_is_not_forwarded():
    router = Router()
    with taddons.context(router):
        flow = openai_flow(upstream="http://127.0.0.1:9999")
        router.request(flow)
        assert flow.response.status_code == 404
        assert "no provider" in flow.response.text


@pytest.mark.parametrize("spec, message", [
    ("openai", "PROVIDER=URL"), ("nope=http://x", "unknown provider"), ("openai=ftp://x", "http"),
])
def test_bad_upstream_option_is_an_options_error(spec, message):
    router = Router()
    with taddons.context(router) as tctx:
        with pytest.raises(exceptions.OptionsError, match=message):
            tctx.configure(router, metrion_upstream=[spec])


def test_parse_upstreams_fills_defaults():
    assert parse_upstreams([])["openai"] == "https://api.openai.com"


def test_requester_is_escaped_and_bounded():
    assert clean_requester("a\x00b\nc") == "a\\x00b\\x0ac"
    assert len(clean_requester("x" * 10_000)) == 200


def test_metrion_dispatches_its_children_in_order_and_awaits_a_coroutine():
    import asyncio

    from addons.metrion import Metrion

    calls = []

    class Sync:
        def __init__(self, name):
            self.name = name

        def request(self, flow):
            calls.append(self.name)

    class Async:
        def request(self, flow):
            async def later():
                calls.append("async")
            return later()

    metrion = Metrion()
    metrion.children = [Sync("a"), Async(), Sync("b")]
    metrion._prepare()
    pending = metrion.request(openai_flow())  # no credential: not one for the one pass
    assert calls == ["a"]  # the rest waits for the coroutine
    asyncio.run(pending)
    assert calls == ["a", "async", "b"]


def test_a_response_hook_of_one_child_is_called_directly_and_of_several_in_order():
    from addons.metrion import Metrion
    from addons.recorder import Recorder

    metrion = Metrion()
    recorder = next(c for c in metrion.children if isinstance(c, Recorder))
    assert metrion.responseheaders == recorder.responseheaders
    assert metrion.response == recorder.response

    calls = []

    class Watcher:
        def __init__(self, name):
            self.name = name

        def responseheaders(self, flow):
            calls.append(self.name)

    metrion.add(Watcher("first"))
    metrion.add(Watcher("second"))
    assert metrion.responseheaders != recorder.responseheaders
    metrion.responseheaders(openai_flow())  # the Recorder's finds no metadata and returns
    assert calls == ["first", "second"]
