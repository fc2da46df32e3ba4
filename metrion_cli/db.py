"""Opening Metrion's two SQLite files with the same pragmas everywhere."""

import contextlib
import datetime
import fcntl
import os
import sqlite3
import time
from pathlib import Path

from sqlite_utils import Database

from . import migrations
from .paths import Paths


class NotInitialised(Exception):
    pass


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def isoformat(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


_second_prefix: tuple[int, str] = (-1, "")


def iso_from_epoch(seconds: float) -> str:
    """UTC ISO 8601 with milliseconds, as isoformat(); called once per request, so the
    formatted second is kept and only the milliseconds are added."""
    global _second_prefix
    whole = int(seconds)
    prefix = _second_prefix  # read once: the writer's thread and the event loop both call this
    if prefix[0] != whole:
        prefix = _second_prefix = (whole, time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(whole)))
    return f"{prefix[1]}{int((seconds - whole) * 1000):03d}Z"


def now_iso() -> str:
    return isoformat(utcnow())


def connect(path: Path) -> sqlite3.Connection:
    # Autocommit mode: transactions are explicit (BEGIN, or Database.atomic()).
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    # WAL: readers (Datasette, the CLI, the proxy's refresher) never block the writer.
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def _require(path: Path) -> None:
    if not path.exists():
        raise NotInitialised(
            f"no Metrion database at {path}: run `metrion init` (or pass --data-dir)"
        )


def open_metrion(paths: Paths) -> Database:
    _require(paths.metrion_db)
    return Database(connect(paths.metrion_db))


@contextlib.contextmanager
def _migrating(paths: Paths):
    """One process at a time applies migrations (`serve` and `ui` may start together; a
    migration's script commits as it goes, so SQLite's own lock cannot serialise it)."""
    with open(paths.data_dir / ".migrating.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def upgrade(paths: Paths) -> None:
    """Apply pending migrations of an existing metrion.db (a newer Metrion on an older data
    directory): the writer and the dashboard rely on the latest tables."""
    _require(paths.metrion_db)
    with _migrating(paths):
        db = open_metrion(paths)
        try:
            migrations.metrion.apply(db)
        finally:
            db.conn.close()


def open_vault(paths: Paths) -> Database:
    _require(paths.vault_db)
    return Database(connect(paths.vault_db))


def initialise(paths: Paths) -> None:
    """Create both databases if missing and apply pending migrations. Idempotent."""
    paths.data_dir.mkdir(parents=True, exist_ok=True)
    with _migrating(paths):
        db = Database(connect(paths.metrion_db))
        migrations.metrion.apply(db)
        db.conn.close()
    fresh_vault = not paths.vault_db.exists()
    if fresh_vault:
        # Created 0600 before SQLite writes anything into it.
        os.close(os.open(paths.vault_db, os.O_CREAT | os.O_WRONLY, 0o600))
    os.chmod(paths.vault_db, 0o600)
    vault = Database(connect(paths.vault_db))
    migrations.vault.apply(vault)
    vault.conn.close()
