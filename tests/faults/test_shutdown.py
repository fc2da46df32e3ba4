"""Stopping under load: SIGTERM loses no row of an answered request; SIGKILL leaves an intact
database and loses at most one writer batch."""

import sqlite3
import threading
import time

import httpx2 as httpx

from metrion_cli.fakes import Behaviour

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def load(gateway, token, stop: threading.Event, answered: list, workers: int = 8):
    def worker():
        with httpx.Client(timeout=10) as http:
            while not stop.is_set():
                try:
                    r = http.post(gateway.url() + "/v1/chat/completions", json=BODY,
                                  headers={"authorization": f"Bearer {token}"})
                except httpx.HTTPError:
                    return  # the proxy went away
                answered.append(r.headers.get("x-request-id"))
    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    return threads


def request_ids(data_dir) -> set[str]:
    with sqlite3.connect(data_dir / "metrion.db") as conn:
        return {r[0] for r in conn.execute("SELECT upstream_request_id FROM requests")}


def test_sigterm_under_load_flushes_every_answered_row(acme, run_cli, fake_openai, start_gateway, data_dir):
    run_cli("quota", "rpm", "acme", "none")
    fake_openai.behaviour = Behaviour(first_byte_delay=0.005)
    gateway = start_gateway({"openai": fake_openai.url})
    stop, answered = threading.Event(), []
    threads = load(gateway, acme.token, stop, answered)
    time.sleep(2)
    gateway.stop()  # SIGTERM while requests are in flight; asserts a clean exit
    stop.set()
    for t in threads:
        t.join()
    answered_ids = {i for i in answered if i}
    assert len(answered_ids) > 100
    missing = answered_ids - request_ids(data_dir)
    assert not missing, f"{len(missing)} answered requests have no row"


def test_sigkill_under_load_leaves_an_intact_database(acme, run_cli, fake_openai, start_gateway, data_dir):
    run_cli("quota", "rpm", "acme", "none")
    gateway = start_gateway({"openai": fake_openai.url})
    stop, answered = threading.Event(), []
    threads = load(gateway, acme.token, stop, answered)
    time.sleep(2)
    gateway.kill()
    stop.set()
    for t in threads:
        t.join()
    with sqlite3.connect(data_dir / "metrion.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    answered_ids = {i for i in answered if i}
    lost = answered_ids - request_ids(data_dir)
    print(f"SIGKILL: {len(lost)} of {len(answered_ids)} answered requests lost their row")
    assert len(lost) <= 2000  # at most one writer batch (250 ms of traffic, or batch_size rows)
