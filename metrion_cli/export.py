"""One account as JSON: the account, its tokens (display prefixes only), its monthly usage and
every request it made, oldest first.

Streamed row by row to a binary file, so a million logged requests cost the same memory as ten.
Nothing secret is in the database to leak: tokens are kept as hashes (not exported) and provider
keys live in the vault, which an export never opens.
"""

from typing import BinaryIO

import orjson
from sqlite_utils import Database

from . import accounts
from .db import now_iso

TOKEN_FIELDS = ("id", "prefix", "name", "created", "revoked", "rpm")


def export_account(db: Database, name_or_id: str | int, out: BinaryIO) -> int:
    """Writes the account's JSON document to `out`; returns how many requests it holds."""
    account = accounts.get(db, name_or_id)
    head = {
        "exported_at": now_iso(),
        "account": {"id": account["id"], "name": account["name"], "plan": account["plan"],
                    "monthly_cap": accounts.monthly_cap(account), "created": account["created"]},
        "tokens": [{k: t.get(k) for k in TOKEN_FIELDS} for t in db.query(
            "SELECT * FROM tokens WHERE account_id = ? ORDER BY id", [account["id"]])],
        "usage": list(db.query(
            "SELECT month, requests, input_tokens, output_tokens FROM usage_monthly "
            "WHERE account_id = ? ORDER BY month", [account["id"]])),
    }
    out.write(orjson.dumps(head)[:-1] + b',"requests":[')
    cursor = db.conn.execute("SELECT * FROM requests WHERE account_id = ? ORDER BY ts, id", [account["id"]])
    columns = [d[0] for d in cursor.description]
    count = 0
    for row in cursor:
        out.write((b"\n" if count == 0 else b",\n") + orjson.dumps(dict(zip(columns, row))))
        count += 1
    out.write(b"\n]}\n")
    return count
