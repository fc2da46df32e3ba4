"""An in-memory snapshot of who may call what, read by the proxy's hooks without touching disk.

`load()` reads both databases and decrypts every stored key; it runs at start-up and then in a
worker thread whenever a trigger-maintained version number changes (see migrations.py).
"""

import sqlite3
from dataclasses import dataclass, field
from typing import NamedTuple

from . import accounts as accountsmod
from .db import connect
from .paths import Paths
from .vault import DecryptError, Vault


class TokenEntry(NamedTuple):
    token_id: int
    account_id: int
    revoked: bool
    rpm: int | None


class StoredKey(NamedTuple):
    key: str | None        # None when it could not be decrypted
    fingerprint: str
    error: str | None


class AccountEntry(NamedTuple):
    name: str
    plan: str
    monthly_cap: int | None  # the effective cap: override, else the plan's; None = no cap
    rpm: int | None          # per-token requests/minute; None = instance default, 0 = none


@dataclass
class Directory:
    tokens: dict[str, TokenEntry] = field(default_factory=dict)            # sha256 -> entry
    keys: dict[tuple[int, str], StoredKey] = field(default_factory=dict)   # (account, provider)
    fingerprints: dict[str, int] = field(default_factory=dict)             # key fingerprint -> account
    accounts: dict[int, AccountEntry] = field(default_factory=dict)
    default_account_id: int | None = None
    usage_month: str = ""                                                  # YYYY-MM of requests_this_month
    requests_this_month: dict[int, int] = field(default_factory=dict)     # account -> forwarded
    instance_secret: bytes = b""
    version: tuple[int, int] = (0, 0)


def read_version(metrion: sqlite3.Connection, vault: sqlite3.Connection) -> tuple[int, int]:
    return (
        metrion.execute("SELECT value FROM meta WHERE key = 'config_version'").fetchone()[0],
        vault.execute("SELECT value FROM vault_meta WHERE key = 'config_version'").fetchone()[0],
    )


def load(paths: Paths, vault: Vault, usage_month: str | None = None) -> Directory:
    """usage_month (YYYY-MM): also read each account's forwarded requests of that month."""
    conn = connect(paths.metrion_db)
    conn.row_factory = sqlite3.Row
    try:
        conn.execute("BEGIN")  # one consistent read of all tables
        version = read_version(conn, vault.db.conn)
        directory = Directory(version=version, instance_secret=vault.instance_secret)
        for row in conn.execute("SELECT id, name, plan, monthly_cap, uncapped, rpm FROM accounts"):
            entry = AccountEntry(row["name"], row["plan"], accountsmod.monthly_cap(dict(row)), row["rpm"])
            directory.accounts[row["id"]] = entry
            if row["name"] == accountsmod.DEFAULT_ACCOUNT:
                directory.default_account_id = row["id"]
        for row in conn.execute("SELECT id, account_id, sha256, revoked, rpm FROM tokens"):
            directory.tokens[row["sha256"]] = TokenEntry(
                row["id"], row["account_id"], row["revoked"] is not None, row["rpm"])
        for row in conn.execute("SELECT account_id, fingerprint FROM registered_keys"):
            directory.fingerprints[row["fingerprint"]] = row["account_id"]
        directory.usage_month = month = usage_month or ""
        for row in conn.execute("SELECT account_id, requests FROM usage_monthly WHERE month = ?", [month]):
            directory.requests_this_month[row["account_id"]] = row["requests"]
        conn.execute("COMMIT")
    finally:
        conn.close()
    for row in vault.rows():
        try:
            stored = StoredKey(vault.decrypt_row(row), row["fingerprint"], None)
        except DecryptError as e:
            stored = StoredKey(None, row["fingerprint"], str(e))
        directory.keys[(row["account_id"], row["provider"])] = stored
        directory.fingerprints.setdefault(row["fingerprint"], row["account_id"])
    return directory
