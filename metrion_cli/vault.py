"""Provider keys encrypted at rest (AES-256-GCM) under a master key kept outside data/.

The master key comes from `METRION_SECRET_KEY` or from a 0600 file (`METRION_SECRET_KEY_FILE`,
default in the user's config dir). Both hold lines `v<N>:<base64url of 32 bytes>`; a bare
base64url value is version 1. The newest version seals, every listed version opens.
"""

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlite_utils import Database

from . import db as dbmod
from .paths import Paths, default_secret_key_file

_CHECK_PLAINTEXT = b"metrion master key check"
_INSTANCE_SECRET_AAD = b"metrion instance secret"
FIX = (
    "set METRION_SECRET_KEY (or METRION_SECRET_KEY_FILE) to the master key this data directory "
    "was initialised with"
)


class MasterKeyError(Exception):
    """A missing or wrong master key; the message names the fix and holds no key material."""


class DecryptError(Exception):
    """A stored key that cannot be opened (tampered, moved to another row, or an unknown version)."""


def _parse_keyring(text: str, source: str) -> dict[int, bytes]:
    keyring: dict[int, bytes] = {}
    for line in text.split():
        version, _, encoded = line.rpartition(":")
        try:
            number = int(version.removeprefix("v")) if version else 1
            raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        except ValueError:
            raw, number = b"", 0
        if len(raw) != 32 or number < 1:
            raise MasterKeyError(
                f"the master key in {source} is malformed (expected v<N>:<base64url of 32 bytes>)"
            )
        keyring[number] = raw
    if not keyring:
        raise MasterKeyError(f"the master key in {source} is empty")
    return keyring


def format_key(version: int, raw: bytes) -> str:
    return f"v{version}:" + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def load_keyring(create: bool = False) -> dict[int, bytes]:
    env = os.environ.get("METRION_SECRET_KEY")
    if env:
        return _parse_keyring(env, "METRION_SECRET_KEY")
    path = default_secret_key_file()
    if not path.exists():
        if not create:
            raise MasterKeyError(f"no master key: {path} does not exist; {FIX}")
        write_key_file(path, {1: secrets.token_bytes(32)})
    return _parse_keyring(path.read_text(), str(path))


def write_key_file(path: Path, keyring: dict[int, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(format_key(v, k) for v, k in sorted(keyring.items())) + "\n")
    os.replace(tmp, path)


def _aad(account_id: int, provider: str) -> bytes:
    return f"metrion provider key|{account_id}|{provider}".encode()


def _seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = secrets.token_bytes(12)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def _open(key: bytes, blob: bytes, aad: bytes) -> bytes:
    return AESGCM(key).decrypt(blob[:12], blob[12:], aad)


class Vault:
    def __init__(self, db: Database, keyring: dict[int, bytes]):
        self.db = db
        self.keyring = keyring
        self.current_version = max(keyring)
        self._instance_secret: bytes | None = None

    @classmethod
    def open(cls, paths: Paths, create: bool = False) -> "Vault":
        vault = cls(dbmod.open_vault(paths), load_keyring(create=create))
        vault._check_or_register()
        return vault

    def _check_or_register(self) -> None:
        rows = {r["version"]: r["check_blob"] for r in self.db["master_keys"].rows}
        if not rows:
            with self.db.atomic():
                for version, key in self.keyring.items():
                    self.db["master_keys"].insert(
                        {"version": version, "check_blob": _seal(key, _CHECK_PLAINTEXT, b"check"),
                         "created": dbmod.now_iso()}
                    )
                self.db["sealed_secrets"].insert({
                    "name": "instance_secret", "key_version": self.current_version,
                    "ciphertext": _seal(self.keyring[self.current_version], secrets.token_bytes(32),
                                        _INSTANCE_SECRET_AAD),
                })
            return
        known = [v for v in rows if v in self.keyring]
        if not known:
            raise MasterKeyError(f"the master key does not match vault.db; {FIX}")
        for version in known:
            try:
                _open(self.keyring[version], rows[version], b"check")
            except InvalidTag:
                raise MasterKeyError(f"the master key (version {version}) does not match vault.db; {FIX}") from None

    @property
    def instance_secret(self) -> bytes:
        if self._instance_secret is None:
            version, blob = self.db.execute(
                "SELECT key_version, ciphertext FROM sealed_secrets WHERE name = 'instance_secret'"
            ).fetchone()
            try:
                self._instance_secret = _open(self.keyring[version], blob, _INSTANCE_SECRET_AAD)
            except (KeyError, InvalidTag):
                raise MasterKeyError(f"the master key cannot open vault.db's instance secret; {FIX}") from None
        return self._instance_secret

    def fingerprint(self, key: str) -> str:
        """HMAC-SHA256 of a provider key with the instance secret: identifies, never reveals."""
        return fingerprint(self.instance_secret, key)

    def put(self, account_id: int, provider: str, key: str) -> dict:
        blob = _seal(self.keyring[self.current_version], key.encode(), _aad(account_id, provider))
        row = {
            "account_id": account_id, "provider": provider, "ciphertext": blob,
            "key_version": self.current_version, "last4": key[-4:],
            "fingerprint": self.fingerprint(key), "created": dbmod.now_iso(),
        }
        with self.db.atomic():
            self.db.execute(
                "DELETE FROM provider_keys WHERE account_id = ? AND provider = ?", [account_id, provider]
            )
            self.db["provider_keys"].insert(row)
        return row

    def remove(self, account_id: int, provider: str) -> bool:
        with self.db.atomic():
            cursor = self.db.execute(
                "DELETE FROM provider_keys WHERE account_id = ? AND provider = ?", [account_id, provider]
            )
        return cursor.rowcount > 0

    def listing(self) -> list[dict]:
        return list(self.db.query(
            "SELECT account_id, provider, last4, fingerprint, key_version, created FROM provider_keys "
            "ORDER BY account_id, provider"
        ))

    def decrypt_row(self, row: dict) -> str:
        if row["key_version"] not in self.keyring:
            self._reload_keyring()  # rotated since we started: the key file has the new version
        key = self.keyring.get(row["key_version"])
        if key is None:
            raise DecryptError(f"stored key for account {row['account_id']}/{row['provider']} "
                               f"needs master key version {row['key_version']}, which is not loaded")
        try:
            return _open(key, row["ciphertext"], _aad(row["account_id"], row["provider"])).decode()
        except InvalidTag:
            raise DecryptError(f"stored key for account {row['account_id']}/{row['provider']} "
                               "failed authentication (tampered or moved)") from None

    def rows(self) -> list[dict]:
        return list(self.db.query(
            "SELECT account_id, provider, ciphertext, key_version, fingerprint FROM provider_keys"
        ))

    def _reload_keyring(self) -> None:
        try:
            self.keyring = {**self.keyring, **load_keyring()}
        except MasterKeyError:
            pass

    def rotate(self) -> int:
        """A new master key version; every stored key and the instance secret are re-encrypted
        with it in one transaction, and the old versions are dropped. Returns the new version.

        The key file is written first with old and new versions, so that no crash can leave a
        ciphertext without its key, and a proxy still running finds the new version on reload.
        """
        if os.environ.get("METRION_SECRET_KEY"):
            raise MasterKeyError("the master key comes from METRION_SECRET_KEY: rotation writes the "
                                 "new key to a key file; unset it and use METRION_SECRET_KEY_FILE")
        path = default_secret_key_file()
        known = [r["version"] for r in self.db["master_keys"].rows]
        version = max([*known, *self.keyring]) + 1
        new_key = secrets.token_bytes(32)
        write_key_file(path, {**self.keyring, version: new_key})
        with self.db.atomic():
            for row in self.rows():
                plaintext = self.decrypt_row(row).encode()
                self.db.execute(
                    "UPDATE provider_keys SET ciphertext = ?, key_version = ? WHERE account_id = ? AND provider = ?",
                    [_seal(new_key, plaintext, _aad(row["account_id"], row["provider"])), version,
                     row["account_id"], row["provider"]])
            self.db.execute(
                "UPDATE sealed_secrets SET ciphertext = ?, key_version = ? WHERE name = 'instance_secret'",
                [_seal(new_key, self.instance_secret, _INSTANCE_SECRET_AAD), version])
            self.db.execute("DELETE FROM master_keys")
            self.db["master_keys"].insert({"version": version, "created": dbmod.now_iso(),
                                           "check_blob": _seal(new_key, _CHECK_PLAINTEXT, b"check")})
        write_key_file(path, {version: new_key})
        self.keyring, self.current_version = {version: new_key}, version
        return version



def fingerprint(secret: bytes, key: str) -> str:
    # surrogateescape: a header's bytes that are not UTF-8 arrive as surrogates, and must give
    # a fingerprint, not an exception whose message would carry the key.
    return hmac.new(secret, key.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()[:16]
