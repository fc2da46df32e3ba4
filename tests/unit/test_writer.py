"""The Writer never stops on a row it cannot store or count (the row is stored escaped and
the rows after it are written), and its thread yields the core to the proxy's."""

import os
import sys
import threading
import time

import pytest

from metrion_cli import db as dbmod
from metrion_cli.paths import resolve
from metrion_cli.writer import NICE_INCREMENT, ROWS_PER_INSERT, Writer, row_values


def row(**fields) -> dict:
    return {"ts": "2026-12-01T10:00:00.000Z", "account_id": None, "provider": "openai", "method": "POST",
            "endpoint": "/v1/chat/completions", "model": "gpt-4o-mini", "status": 200, "forwarded": 1,
            "latency_ms": 5.0, "streamed": 0, "mode": "stored", "client_aborted": 0, **fields}


def test_an_unhashable_value_is_stored_escaped_and_the_writer_goes_on(data_dir):
    paths = resolve(data_dir)
    dbmod.initialise(paths)
    writer = Writer(paths.metrion_db, interval=0.01).start()
    writer.put(row(model=["not", "a", "name"], requester={"who": "x"}))
    deadline = time.monotonic() + 10
    while writer.written < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    writer.put(row(requester="after"))
    writer.close()
    db = dbmod.open_metrion(paths)
    stored = [(r["model"], r["requester"]) for r in db.query("SELECT model, requester FROM requests ORDER BY id")]
    assert stored == [("['not', 'a', 'name']", "{'who': 'x'}"), ("gpt-4o-mini", "after")]
    counted = {(r["facet"], r["value"]): r["requests"] for r in db.query("SELECT * FROM request_facets")}
    assert counted[("requester", "after")] == 1 and counted[("model", "['not', 'a', 'name']")] == 1


def test_a_batch_of_many_rows_is_stored_whole_and_in_order_even_with_a_value_to_escape(data_dir):
    # Rows go in several to a statement, the remainder one by one: every row lands, in the
    # order put, each with its own values, and a bad value in a full statement is escaped.
    paths = resolve(data_dir)
    dbmod.initialise(paths)
    count = 2 * ROWS_PER_INSERT + 5
    writer = Writer(paths.metrion_db, interval=0.05, batch_size=count)
    for i in range(count):
        model = "bad\udc80" if i == ROWS_PER_INSERT + 3 else f"model-{i}"
        writer.put(row(requester=f"user-{i}", model=model, input_tokens=i, account_id=1, month="2026-12"))
    writer.start().close()
    db = dbmod.open_metrion(paths)
    stored = [(r["requester"], r["model"], r["input_tokens"])
              for r in db.query("SELECT requester, model, input_tokens FROM requests ORDER BY id")]
    assert stored == [(f"user-{i}", "bad\\udc80" if i == ROWS_PER_INSERT + 3 else f"model-{i}", i)
                      for i in range(count)]
    usage = list(db.query("SELECT month, requests, input_tokens FROM usage_monthly WHERE account_id = 1"))
    assert usage == [{"month": "2026-12", "requests": count, "input_tokens": sum(range(count))}]
    assert writer.written == count and writer.dropped == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_the_writer_thread_runs_nicer_than_the_proxy_and_only_it(data_dir):
    paths = resolve(data_dir)
    dbmod.initialise(paths)
    own = os.getpriority(os.PRIO_PROCESS, 0)
    if own >= 19:
        pytest.skip("the tests already run at the lowest priority: nothing to lower")
    writer = Writer(paths.metrion_db).start()
    try:
        deadline = time.monotonic() + 10
        while os.getpriority(os.PRIO_PROCESS, writer._thread.native_id) == own and time.monotonic() < deadline:
            time.sleep(0.01)
        assert os.getpriority(os.PRIO_PROCESS, writer._thread.native_id) == min(19, own + NICE_INCREMENT)
        assert os.getpriority(os.PRIO_PROCESS, 0) == own  # the proxy's own thread keeps its priority
        writer.put(row(requester="nice"))
    finally:
        writer.close()
    assert writer.written == 1


def test_rows_put_later_are_built_in_the_writer_thread_and_a_failing_build_loses_only_its_row(data_dir):
    paths = resolve(data_dir)
    dbmod.initialise(paths)
    built_in = []

    def build(requester):
        built_in.append(threading.current_thread().name)
        if requester == "broken":
            raise ValueError("cannot build this one")
        return row_values(row(requester=requester))

    writer = Writer(paths.metrion_db, interval=0.01).start()
    for requester in ("first", "broken", "third"):
        writer.put_later(build, requester)
    writer.close()
    db = dbmod.open_metrion(paths)
    assert [r["requester"] for r in db.query("SELECT requester FROM requests ORDER BY id")] == ["first", "third"]
    assert writer.dropped == 1
    assert set(built_in) == {"metrion-writer"}
