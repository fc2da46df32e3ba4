"""Store: the proxy's view of Metrion's state, shared by the other addons.

- Opens the data directory (`metrion_data_dir`) and the vault at start-up; a missing database
  or a wrong master key stops start-up with one clear line.
- Keeps `directory`, an in-memory snapshot of tokens, accounts and decrypted keys. A thread of
  its own looks for changes every `RELOAD_INTERVAL` and loads the new snapshot, so a revoked
  token stops working within a second and no hook ever reads the disk. The event loop hears
  from that thread only when something changed: asking from the loop through a worker thread
  (`asyncio.to_thread`) four times a second cost the loop ~2.1 ms of CPU a second and the worker
  ~0.7 ms (measured idle, /proc schedstat); now the loop spends nothing on it, and
  the thread ~1 ms a second.
- Owns the writer thread that commits request rows; `done()` flushes it.
"""

import asyncio
import datetime
import logging
import os
import sqlite3
import threading
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
        self._watcher: threading.Thread | None = None
        self._stop_watching = threading.Event()
        # One check at a time (the watcher's, or a refresh()'s in a worker thread): they share
        # the version connection, and their loads are numbered in the order they read.
        self._check_lock = threading.Lock()
        self._version_conn = None
        self._loaded_version: tuple[int, int] | None = None  # of the last snapshot loaded
        self._loads = self._installed = 0  # snapshots loaded; the number of the one in use
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
        # Configuring already reads both databases on the loop; a check under way (a few ms)
        # finishes first, so its snapshot is numbered below this one and never installed.
        with self._check_lock:
            self._version_conn = None
            self._loaded_version = directory.version
            self._loads += 1
            self._installed = self._loads
        self.paths, self.vault, self.directory = paths, vault, directory
        log_key_errors(directory)
        self.writer = Writer(paths.metrion_db, max_queued=ctx.options.metrion_queue_limit).start()

    def running(self) -> None:
        if self._watcher is None:
            self._stop_watching.clear()
            self._watcher = threading.Thread(target=self._watch, args=(asyncio.get_running_loop(),),
                                             name="metrion-reload", daemon=True)
            self._watcher.start()

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        while not self._stop_watching.wait(RELOAD_INTERVAL):
            try:
                loaded, error = self._load_if_changed(), None
            except Exception as e:  # noqa: BLE001 (logged on the loop; the last good snapshot stays)
                loaded, error = None, e
            if loaded is None and error is None:
                continue
            try:
                loop.call_soon_threadsafe(self._install, loaded, error)
            except RuntimeError:  # the loop is closed: the proxy is gone
                return

    async def refresh(self) -> None:
        """Reload now if anything changed: one check in a worker thread, shared by all callers."""
        if self._refreshing is None:
            self._refreshing = asyncio.ensure_future(asyncio.to_thread(self._load_if_changed))
            self._refreshing.add_done_callback(self._refreshed)
        await asyncio.wait([self._refreshing])

    def _refreshed(self, task: asyncio.Future) -> None:
        self._refreshing = None
        if not task.cancelled():
            self._install(None if task.exception() else task.result(), task.exception())

    def _install(self, loaded: tuple[int, directorymod.Directory] | None, error: BaseException | None) -> None:
        if error is not None:  # keep serving with the last good snapshot
            logger.error("metrion: could not reload accounts and keys: %s", error)
            return
        if loaded is None:  # nothing changed
            return
        number, directory = loaded
        # Two checks may finish in either order: the later-loaded snapshot wins.
        if number > self._installed:
            self._installed = number
            self.directory = directory
            log_key_errors(directory)

    def _load_if_changed(self) -> tuple[int, directorymod.Directory] | None:
        """(its number, the new snapshot) when accounts, tokens or keys changed since the last
        load; None when nothing did. Runs off the event loop."""
        with self._check_lock:
            paths, vault = self.paths, self.vault
            assert paths and vault
            if self._version_conn is None:
                self._version_conn = dbmod.connect(paths.metrion_db)
            if directorymod.read_version(self._version_conn, vault.db.conn) == self._loaded_version:
                return None
            directory = directorymod.load(paths, vault)
            self._loaded_version = directory.version
            self._loads += 1
            return self._loads, directory

    def put_row(self, row: tuple) -> None:
        """A row as `Writer.put_values` takes it."""
        if self.writer is not None:
            self.writer.put_values(row)

    def put_row_later(self, build, source) -> None:
        """A row for the writer's thread to build, as `Writer.put_later` takes it."""
        if self.writer is not None:
            self.writer.put_later(build, source)

    def done(self) -> None:
        if self._watcher is not None:
            self._stop_watching.set()
            self._watcher.join(5)
            self._watcher = None
        self._close_writer()

    def _close_writer(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
