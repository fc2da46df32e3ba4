"""The database cannot be written for a while: requests keep flowing, rows wait in a bounded
queue, and what the bound drops is counted and logged."""

import sqlite3
import threading
import time

import httpx2 as httpx

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def lock_database(data_dir, seconds: float) -> threading.Thread:
    ready = threading.Event()

    def hold():
        conn = sqlite3.connect(data_dir / "metrion.db", isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        ready.set()
        time.sleep(seconds)
        conn.execute("ROLLBACK")
        conn.close()
    thread = threading.Thread(target=hold)
    thread.start()
    ready.wait()
    return thread


def send(gateway, token, n) -> list[float]:
    latencies = []
    with httpx.Client(timeout=10) as http:
        for _ in range(n):
            started = time.monotonic()
            r = http.post(gateway.url() + "/v1/chat/completions", json=BODY,
                          headers={"authorization": f"Bearer {token}"})
            assert r.status_code == 200
            latencies.append(time.monotonic() - started)
    return latencies


def test_requests_flow_while_the_database_is_locked(gateway, acme, data_dir):
    holder = lock_database(data_dir, 3)
    latencies = send(gateway, acme.token, 30)
    assert max(latencies) < 1.0, "a request waited on the database"
    assert len(gateway.rows()) == 0  # nothing could be written yet
    holder.join()
    assert len(gateway.wait_rows(30, timeout=10)) == 30


def test_past_the_queue_limit_rows_are_counted_and_logged(acme, fake_openai, start_gateway, data_dir):
    gateway = start_gateway({"openai": fake_openai.url}, extra=["--set", "metrion_queue_limit=5"])
    holder = lock_database(data_dir, 3)
    send(gateway, acme.token, 20)
    holder.join()
    time.sleep(0.5)
    gateway.stop()
    kept = len(gateway.rows())
    assert 5 <= kept < 20
    log = "".join(gateway.output)
    assert "queue full" in log
    assert f"{20 - kept} rows dropped in all" in log


def test_a_value_sqlite_cannot_store_does_not_stop_the_log(gateway, acme, data_dir, run_cli):
    # A lone surrogate escape in the model (valid JSON, not storable as UTF-8 text) used to kill
    # the writer with its transaction open: no row written after it, the database locked.
    with httpx.Client(timeout=10) as http:
        refused = http.post(gateway.url() + "/v1/chat/completions", content=b'{"model":"\\ud800x","messages":[]}',
                            headers={"authorization": "Bearer mtr_not-a-real-token", "content-type": "application/json"})
        assert refused.status_code == 401
    send(gateway, acme.token, 1)
    rows = gateway.wait_rows(2)
    assert [r["status"] for r in rows] == [401, 200]
    assert rows[0]["model"] == "\\ud800x"  # stored escaped
    run_cli("tokens", "create", "acme", "--name", "after")  # the database is not left locked
