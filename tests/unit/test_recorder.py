"""The Recorder's response side: how it decides to buffer or tap an answer, and the row it leaves.

The rows go through the Store's real writer into a real SQLite file; the flows are mitmproxy's
test flows, admitted by Metrion's own request hook first.
"""

import asyncio
import sqlite3
import time

import pytest
from hypothesis import given, settings, strategies as st
from mitmproxy import flow as mflow, http
from mitmproxy.test import taddons

from addons.metrion import Metrion
from addons.recorder import MAX_BUFFERED, MAX_READ_LATER, BodyTap, Recorder, SSETap
from addons.store import Store
from metrion_cli.paths import resolve

from .helpers import data_dir_with_acme, openai_flow

OPENAI_KEY = "sk-test-recorder-openai-0001"
ANSWER = (b'{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o-mini-2024-07-18",'
          b'"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}')

# Header fields as servers send them: lower or mixed case, sometimes twice.
_FIELDS = [
    (b"content-type", b"application/json"), (b"Content-Type", b"application/json"),
    (b"content-type", b"text/event-stream"), (b"Content-Type", b"text/event-stream; charset=utf-8"),
    (b"content-length", b"120"), (b"Content-Length", b"120"), (b"CONTENT-LENGTH", b"0"),
    (b"content-length", str(MAX_BUFFERED).encode()), (b"content-length", str(MAX_BUFFERED + 1).encode()),
    (b"content-length", b"5000000"), (b"content-encoding", b"gzip"), (b"x-request-id", b"req_1"),
    (b"X-Request-Id", b"req_2"), (b"date", b"Mon, 07 Dec 2026 17:00:00 GMT"),
]


def answer(fields, content=b"", status=200):
    now = time.time()
    return http.Response(b"HTTP/1.1", status, b"OK", http.Headers(fields), content, None, now, now)


def expected_handling(fields) -> str:
    """What mitmproxy's own header lookup (names folded, repeated values joined) says."""
    headers = http.Headers(fields)
    if headers.get("content-type", "").startswith("text/event-stream"):
        return "tap the stream"
    length = headers.get("content-length", "x")
    return "buffer" if length.isdigit() and int(length) <= MAX_BUFFERED else "tap the body"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_FIELDS), max_size=6))
def test_buffers_or_taps_as_the_answers_headers_say_whatever_their_case(fields):
    recorder = Recorder(Store())
    flow = openai_flow()
    flow.metadata["metrion"] = {"provider": "openai"}
    flow.response = answer(fields)
    recorder.responseheaders(flow)
    tap = flow.metadata["metrion"].get("tap")
    handling = {SSETap: "tap the stream", BodyTap: "tap the body", type(None): "buffer"}[type(tap)]
    assert handling == expected_handling(fields)
    assert (flow.response.stream is not False) == (tap is not None)


@pytest.fixture
def serving(data_dir):
    """Metrion configured over a data directory with account acme (its OpenAI key, a token)."""
    _, token = data_dir_with_acme(data_dir, OPENAI_KEY)
    metrion = Metrion(data_dir=str(data_dir))
    with taddons.context(metrion) as tctx:
        tctx.configure(metrion, metrion_data_dir=str(data_dir))
        yield metrion, token
        metrion.store.done()


def admitted(metrion: Metrion, token: str, body: bytes = b'{"model":"gpt-4o-mini","messages":[]}'):
    flow = openai_flow(headers={"authorization": f"Bearer {token}"}, body=body)
    assert metrion.request(flow) is None and flow.response is None
    return flow


def rows(data_dir) -> list[dict]:
    conn = sqlite3.connect(resolve(data_dir).metrion_db)
    conn.row_factory = sqlite3.Row
    return [dict(r) for r in conn.execute("SELECT * FROM requests ORDER BY id")]


def finish(metrion: Metrion, flows_and_answers, after_hook=lambda flow: None) -> None:
    """Each flow's answer through the response hooks, on a running loop, then the writer's flush."""
    async def answer_all():
        for flow, response in flows_and_answers:
            flow.response = response
            metrion.responseheaders(flow)
            metrion.response(flow)
            after_hook(flow)
        await asyncio.sleep(0)  # what the response hook left for just after it

    asyncio.run(answer_all())
    metrion.store.done()


def test_an_answered_request_leaves_its_row_with_usage_and_request_id(serving, data_dir):
    metrion, token = serving
    small = admitted(metrion, token)
    # Bodies past MAX_READ_LATER are read on the event loop, not queued: a row either way.
    large_answer = ANSWER[:-1] + b',"padding":"' + b"x" * MAX_READ_LATER + b'"}'
    large = admitted(metrion, token)
    finish(metrion, [
        (small, answer([(b"content-type", b"application/json"), (b"x-request-id", b"req_small"),
                        (b"content-length", str(len(ANSWER)).encode())], ANSWER)),
        (large, answer([(b"Content-Type", b"application/json"), (b"X-Request-Id", b"req_large"),
                        (b"Content-Length", str(len(large_answer)).encode())], large_answer)),
    ])
    by_request_id = {r["upstream_request_id"]: r for r in rows(data_dir)}
    assert set(by_request_id) == {"req_small", "req_large"}
    for row in by_request_id.values():
        assert (row["status"], row["model"], row["input_tokens"], row["output_tokens"]) == (
            200, "gpt-4o-mini-2024-07-18", 12, 3)
        assert row["mode"] == "stored" and row["client_aborted"] == 0 and row["error"] is None
    assert by_request_id["req_large"]["response_bytes"] == len(large_answer)
    assert metrion.store.inflight == {}


def test_a_client_that_left_as_the_answer_was_sent_is_in_its_row(serving, data_dir):
    # mitmproxy notices it only after the response hook returns: it sets flow.error and calls
    # no error hook. The row is read after that.
    def client_leaves(flow):
        flow.client_conn.timestamp_end = time.time()
        flow.error = mflow.Error("Client disconnected.")

    metrion, token = serving
    flow = admitted(metrion, token)
    finish(metrion, [(flow, answer([(b"content-type", b"application/json"),
                                    (b"content-length", str(len(ANSWER)).encode())], ANSWER))],
           after_hook=client_leaves)
    [row] = rows(data_dir)
    assert row["client_aborted"] == 1 and row["error"] == "Client disconnected."
    assert (row["status"], row["input_tokens"]) == (200, 12)


def test_the_rows_values_are_taken_only_once_the_hooks_step_is_over(serving, data_dir):
    # In that step, after the response hook, mitmproxy notices a client that left and later
    # scripts' hooks run: values taken in the hook itself would miss them. What the writer is
    # handed holds the flow's values, not the flow.
    metrion, token = serving
    flow = admitted(metrion, token)
    handed, put_row_later = [], metrion.store.put_row_later
    metrion.store.put_row_later = lambda build, source: (handed.append(source), put_row_later(build, source))

    async def step():
        flow.response = answer([(b"content-type", b"application/json"),
                                (b"content-length", str(len(ANSWER)).encode())], ANSWER)
        metrion.responseheaders(flow)
        metrion.response(flow)
        during = list(handed)
        flow.client_conn.timestamp_end = time.time()  # mitmproxy notices the client left
        flow.error = mflow.Error("Client disconnected.")
        await asyncio.sleep(0)
        return during, list(handed)

    during, after = asyncio.run(step())
    assert during == [] and len(after) == 1
    assert isinstance(after[0], tuple) and flow not in after[0] and after[0][0] is flow.metadata["metrion"]
    metrion.store.done()
    [row] = rows(data_dir)
    assert (row["status"], row["input_tokens"], row["client_aborted"]) == (200, 12, 1)


def test_a_shutdown_right_after_the_response_hook_still_leaves_the_row(serving, data_dir):
    # Between the response hook and its values being taken just after the step, the flow is
    # still in flight: a shutdown there records it, and the hand-over then finds it recorded.
    metrion, token = serving

    async def answered_then_shut_down():
        flow = admitted(metrion, token)
        flow.response = answer([(b"content-type", b"application/json"), (b"x-request-id", b"req_last"),
                                (b"content-length", str(len(ANSWER)).encode())], ANSWER)
        metrion.responseheaders(flow)
        metrion.response(flow)
        metrion.done()  # the Recorder's done(), then the Store's: the writer's final flush
        await asyncio.sleep(0)

    asyncio.run(answered_then_shut_down())
    [row] = rows(data_dir)
    assert (row["upstream_request_id"], row["status"], row["input_tokens"], row["error"]) == (
        "req_last", 200, 12, None)
