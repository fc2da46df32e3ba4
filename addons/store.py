"""Store: the proxy's view of Metrion's state, shared by the other addons.

- Opens the data directory (`metrion_data_dir`) and the vault at start-up; a missing database
  or a wrong master key stops start-up with one clear line.
- Keeps `directory`, an in-memory snapshot of tokens, accounts and decrypted keys, and reloads
  it in a worker thread within `RELOAD_INTERVAL` of any change, so a revoked token stops
  working within a second and no hook ever reads the disk.
- Owns the writer thread that commits request rows; `done()` flushes it.
"""

import asyncio
import datetime
import logging
import os
import sqlite3
import time
from collections.abc import Callable

from mitmproxy import ctx, exceptions

from metrion_cli import db as dbmod
from metrion_cli import directory as directorymod
from metrion_cli.paths import Paths, resolve
from metrion_cli.quota import month_of
from metrion_cli.vault import MasterKeyError, Vault
from metrion_cli.writer import Writer

logger = logging.getLogger("metrion")

RELOAD_INTERVAL = 0.25


def log_key_errors(directory: directorymod.Directory) -> None:
    for stored in directory.keys.values():
        if stored.error:
            # A warning, not an error: mitmproxy stops at start-up on any error logged, and the
            # other keys must keep serving.
            logger.warning("metrion: %s; requests that need it get a 500", stored.error)


class Store:
    def __init__(self, clock: Callable[[], float] = time.time, data_dir: str | None = None) -> None:
        self.now = clock  # epoch seconds; injectable, so tests can cross a month boundary
        # The option's default. mitmproxy answers a failed option update by configuring the
        # previous values again: with `metrion serve`'s own directory as the default, an error
        # (wrong master key, say) is reported for that directory, not for ./data.
        self.default_data_dir = data_dir or os.environ.get("METRION_DATA_DIR", "data")
        self.paths: Paths | None = None
        self.vault: Vault | None = None
        self.directory = directorymod.Directory()
        self.writer: Writer | None = None
        self._reloader: asyncio.Task | None = None
        self._version_conn = None  # used only by the reload thread
        self._refreshing: asyncio.Future | None = None
        self.closing = False  # set on SIGTERM: new requests are turned away while in-flight ones finish
        # Flows routed and not yet recorded (Router adds, Recorder removes): the upstream
        # watchdog scans them, and at shutdown each still gets its row.
        self.inflight: dict[str, object] = {}

    def load(self, loader) -> None:
        loader.add_option(
            "metrion_data_dir", str, self.default_data_dir,
            "Metrion's data directory (metrion.db, vault.db), created by `metrion init`.",
        )
        loader.add_option(
            "metrion_queue_limit", int, 200_000,
            "Rows that may wait in memory while the database cannot be written (locked, disk "
            "full); past it, rows are dropped, counted and logged.",
        )

    def configure(self, updated) -> None:
        if "metrion_queue_limit" in updated:
            if ctx.options.metrion_queue_limit < 1:
                raise exceptions.OptionsError("metrion_queue_limit must be at least 1")
            if self.writer is not None:
                self.writer.max_queued = ctx.options.metrion_queue_limit
        if "metrion_data_dir" not in updated:
            return
        paths = resolve(ctx.options.metrion_data_dir)
        try:
            dbmod.upgrade(paths)
            vault = Vault.open(paths)
            directory = directorymod.load(paths, vault, usage_month=month_of(
                datetime.datetime.fromtimestamp(self.now(), datetime.timezone.utc)))
        except (dbmod.NotInitialised, MasterKeyError) as e:
            raise exceptions.OptionsError(f"metrion_data_dir={paths.data_dir}: {e}") from None
        except sqlite3.Error as e:  # e.g. a migration that cannot apply, a locked or damaged file
            raise exceptions.OptionsError(
                f"metrion_data_dir={paths.data_dir}: cannot open or upgrade the databases: {e}") from None
        self._close_writer()
        self._version_conn = None
        self.paths, self.vault, self.directory = paths, vault, directory
        log_key_errors(directory)
        self.writer = Writer(paths.metrion_db, max_queued=ctx.options.metrion_queue_limit).start()

    def running(self) -> None:
        if self._reloader is None:
            self._reloader = asyncio.get_running_loop().create_task(self._reload_forever())

    async def _reload_forever(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_INTERVAL)
            await self.refresh()  # on failure, it logs and keeps the last good snapshot

    async def refresh(self) -> None:
        """Reload now if anything changed: one reload in a worker thread, shared by all callers."""
        if self._refreshing is None:
            self._refreshing = asyncio.ensure_future(asyncio.to_thread(self._load_if_changed))
            self._refreshing.add_done_callback(self._refreshed)
        await asyncio.wait([self._refreshing])

    def _refreshed(self, task: asyncio.Future) -> None:
        self._refreshing = None
        if task.cancelled():
            return
        if task.exception() is not None:  # keep serving with the last good snapshot
            logger.error("metrion: could not reload accounts and keys: %s", task.exception())
        elif task.result() is not None:
            self.directory = task.result()
            log_key_errors(self.directory)

    def _load_if_changed(self) -> directorymod.Directory | None:
        assert self.paths and self.vault
        if self._version_conn is None:
            self._version_conn = dbmod.connect(self.paths.metrion_db)
        version = directorymod.read_version(self._version_conn, self.vault.db.conn)
        if version == self.directory.version:
            return None
        return directorymod.load(self.paths, self.vault)

    def put_row(self, row: tuple) -> None:
        """A row as `Writer.put_values` takes it."""
        if self.writer is not None:
            self.writer.put_values(row)

    def put_row_later(self, build, source) -> None:
        """A row for the writer's thread to build, as `Writer.put_later` takes it."""
        if self.writer is not None:
            self.writer.put_later(build, source)

    def done(self) -> None:
        if self._reloader is not None:
            self._reloader.cancel()
            self._reloader = None
        self._close_writer()

    def _close_writer(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
