"""Metrion tokens (`mtr_...`): shown once, stored only as SHA-256 plus a display prefix."""

import hashlib
import re
import secrets
import urllib.parse

from sqlite_utils import Database

from .db import now_iso

TOKEN_PREFIX = "mtr_"
TOKEN_PREFIX_BYTES = TOKEN_PREFIX.encode()  # as it appears in raw header fields and paths
DISPLAY_CHARS = 12  # "mtr_" + 8 characters: enough to tell tokens apart, useless to an attacker
# A token in a longer text: `mtr_` starting a word. Provider keys are made of letters, digits,
# `_` and `-`, so inside one (`sk-proj-...mtr_...`) it is part of the key; after anything else
# it starts a Metrion token.
TOKEN_IN_TEXT = re.compile(r"(?<![A-Za-z0-9_-])mtr_[A-Za-z0-9_-]*")


def hide_tokens(text: str) -> str:
    """`text` (a URL path, for a row or a log line) with each Metrion token in it, percent-encoded
    or not, cut to `mtr_(hidden)`; unchanged when it holds none."""
    if TOKEN_PREFIX not in text and "%" not in text:
        return text
    decoded = urllib.parse.unquote(text)
    return TOKEN_IN_TEXT.sub("mtr_(hidden)", decoded) if TOKEN_IN_TEXT.search(decoded) else text


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def is_token(value: str) -> bool:
    return value.startswith(TOKEN_PREFIX)


def create(db: Database, account_id: int, name: str | None = None, rpm: int | None = None) -> tuple[str, dict]:
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    db["tokens"].insert({
        "account_id": account_id, "sha256": hash_token(token), "prefix": token[:DISPLAY_CHARS],
        "name": name, "rpm": rpm, "created": now_iso(), "revoked": None,
    })
    return token, get(db, token[:DISPLAY_CHARS])


def get(db: Database, id_or_prefix: str | int) -> dict:
    """A token by id, display prefix, or the whole token (which is hashed, never stored)."""
    key = str(id_or_prefix)
    if is_token(key) and len(key) > DISPLAY_CHARS:
        rows = list(db.query("SELECT * FROM tokens WHERE sha256 = ?", [hash_token(key)]))
    elif key.isdigit():
        rows = list(db.query("SELECT * FROM tokens WHERE id = ?", [int(key)]))
    else:
        rows = list(db.query("SELECT * FROM tokens WHERE prefix = ?", [key]))
    if not rows:
        raise LookupError(f"no token {key[:DISPLAY_CHARS]!r} (see `metrion tokens list`)")
    if len(rows) > 1:
        raise LookupError(f"{key!r} matches {len(rows)} tokens; use the token id")
    return rows[0]


def revoke(db: Database, id_or_prefix: str | int) -> dict:
    token = get(db, id_or_prefix)
    if token["revoked"] is None:
        db.execute("UPDATE tokens SET revoked = ? WHERE id = ?", [now_iso(), token["id"]])
    return get(db, token["id"])


def rotate(db: Database, id_or_prefix: str | int) -> tuple[str, dict]:
    """A new token with the same account, name and limits; the old one is revoked at once."""
    old = get(db, id_or_prefix)
    if old["revoked"] is not None:
        raise ValueError(f"token {old['prefix']} is already revoked")
    with db.atomic():
        revoke(db, old["id"])
        return create(db, old["account_id"], old["name"], old["rpm"])


def listing(db: Database, account_id: int | None = None) -> list[dict]:
    where, params = ("WHERE t.account_id = ?", [account_id]) if account_id is not None else ("", [])
    return list(db.query(
        "SELECT t.id, t.prefix, a.name AS account, t.name, t.rpm, t.created, t.revoked "
        f"FROM tokens t JOIN accounts a ON a.id = t.account_id {where} ORDER BY t.id", params
    ))
