"""The Writer never stops on a row it cannot store or count: the row is stored escaped and
the rows after it are written."""

import time

from metrion_cli import db as dbmod
from metrion_cli.paths import resolve
from metrion_cli.writer import Writer


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
