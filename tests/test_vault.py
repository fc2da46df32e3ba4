import pytest

from metrion_cli import db as dbmod
from metrion_cli.paths import resolve
from metrion_cli.vault import DecryptError, MasterKeyError, Vault, format_key, load_keyring


@pytest.fixture
def vault(data_dir):
    paths = resolve(data_dir)
    dbmod.initialise(paths)
    return Vault.open(paths)


def test_round_trip_and_last4(vault):
    row = vault.put(7, "openai", "sk-test-roundtrip-abcd")
    assert row["last4"] == "abcd"
    [stored] = vault.rows()
    assert vault.decrypt_row(stored) == "sk-test-roundtrip-abcd"


def test_ciphertext_copied_to_another_row_does_not_decrypt(vault):
    vault.put(1, "openai", "sk-test-account-one-1111")
    vault.put(2, "openai", "sk-test-account-two-2222")
    vault.db.execute("UPDATE provider_keys SET ciphertext = (SELECT ciphertext FROM provider_keys "
                     "WHERE account_id = 1) WHERE account_id = 2")
    row = next(r for r in vault.rows() if r["account_id"] == 2)
    with pytest.raises(DecryptError, match="failed authentication"):
        vault.decrypt_row(row)


def test_wrong_master_key_is_detected_at_open(vault, data_dir, monkeypatch):
    monkeypatch.setenv("METRION_SECRET_KEY", format_key(1, b"\x02" * 32))
    with pytest.raises(MasterKeyError, match="does not match") as info:
        Vault.open(resolve(data_dir))
    assert "METRION_SECRET_KEY" in str(info.value)


def test_malformed_master_key(monkeypatch):
    monkeypatch.setenv("METRION_SECRET_KEY", "not-a-key")
    with pytest.raises(MasterKeyError, match="malformed"):
        load_keyring()


def test_fingerprint_is_stable_and_reveals_nothing(vault):
    fp = vault.fingerprint("sk-test-fingerprint-key")
    assert fp == vault.fingerprint("sk-test-fingerprint-key") and len(fp) == 16
    assert fp != vault.fingerprint("sk-test-fingerprint-kez")
