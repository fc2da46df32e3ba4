"""Stored keys under attack or rotation: a tampered ciphertext fails closed, a rotation under
load fails no request, and the old master key decrypts nothing afterwards."""

import sqlite3
import threading
import time

import httpx2 as httpx
import pytest

from metrion_cli.paths import resolve
from cryptography.exceptions import InvalidTag

from metrion_cli.vault import MasterKeyError, Vault, _aad, _open, _parse_keyring, format_key

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def test_tampered_ciphertext_gets_500_and_a_log_line(acme, fake_openai, start_gateway, data_dir):
    with sqlite3.connect(data_dir / "vault.db") as conn:
        blob = bytearray(conn.execute("SELECT ciphertext FROM provider_keys").fetchone()[0])
        blob[20] ^= 0x01
        conn.execute("UPDATE provider_keys SET ciphertext = ?", [bytes(blob)])
    gateway = start_gateway({"openai": fake_openai.url})
    r = httpx.post(gateway.url() + "/v1/chat/completions", json=BODY,
                   headers={"authorization": f"Bearer {acme.token}"})
    assert r.status_code == 500
    assert r.json()["error"]["type"] == "server_error"
    assert "could not be decrypted" in r.json()["error"]["message"]
    assert fake_openai.received == []
    assert "failed authentication (tampered or moved)" in "".join(gateway.output)
    [row] = gateway.wait_rows(1)
    assert row["status"] == 500 and row["forwarded"] == 0


@pytest.fixture
def key_file_env(tmp_path, monkeypatch):
    monkeypatch.delenv("METRION_SECRET_KEY")
    path = tmp_path / "config" / "secret.key"
    monkeypatch.setenv("METRION_SECRET_KEY_FILE", str(path))
    return path


def test_rotation_under_load_fails_nothing_and_retires_the_old_key(key_file_env, acme, run_cli, fake_openai,
                                                                   start_gateway, data_dir, monkeypatch):
    run_cli("quota", "rpm", "acme", "none")
    old_keyring = _parse_keyring(key_file_env.read_text(), "old")
    gateway = start_gateway({"openai": fake_openai.url})
    statuses, stop = [], threading.Event()

    def load():
        with httpx.Client(timeout=10) as http:
            while not stop.is_set():
                statuses.append(http.post(gateway.url() + "/v1/chat/completions", json=BODY,
                                          headers={"authorization": f"Bearer {acme.token}"}).status_code)
    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    assert "master key version 2" in run_cli("vault", "rotate").output
    time.sleep(1.0)  # past a reload
    stop.set()
    for t in threads:
        t.join()
    assert len(statuses) > 50 and set(statuses) == {200}
    assert {r.header("authorization") for r in fake_openai.received} == {f"Bearer {acme.keys['openai']}"}
    assert list(_parse_keyring(key_file_env.read_text(), "new")) == [2]

    rows = Vault.open(resolve(data_dir)).rows()
    for row in rows:
        with pytest.raises(InvalidTag):
            _open(old_keyring[1], row["ciphertext"], _aad(row["account_id"], row["provider"]))
    monkeypatch.setenv("METRION_SECRET_KEY", format_key(1, old_keyring[1]))
    with pytest.raises(MasterKeyError, match="does not match"):
        Vault.open(resolve(data_dir))
    monkeypatch.delenv("METRION_SECRET_KEY")
    # and a fresh start with the new key serves as before
    gateway.stop()
    again = start_gateway({"openai": fake_openai.url})
    assert httpx.post(again.url() + "/v1/chat/completions", json=BODY,
                      headers={"authorization": f"Bearer {acme.token}"}).status_code == 200


def test_rotation_refuses_a_key_from_the_environment(acme, run_cli):
    result = run_cli("vault", "rotate", ok=False)
    assert result.exit_code == 1 and "METRION_SECRET_KEY_FILE" in result.output
