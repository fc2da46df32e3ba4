"""The one thread that writes request rows: batches, one transaction each, usage in the same one.

The proxy's hooks call `put()` (a non-blocking append) and never wait on SQLite. The thread
commits every `interval` seconds or `batch_size` rows, whichever comes first, and `close()`
flushes what is queued. The same transaction keeps `usage_monthly`, `latency_histogram`,
`request_facets` and `request_facet_combinations`.
`put()` does not wake the thread for each row: at a thousand rows a second, a wake-up per row
(a blocking queue) cost the proxy more CPU than writing the rows. Every 250 ms rather than
every 50: each commit costs the proxy's core a fixed amount besides its rows (measured under
load, ~1.5% of the proxy's requests/s), and a row a quarter second old is as good on a
dashboard; a SIGKILL loses at most that batch. When the database is locked or the disk is full,
rows wait in memory up to `max_queued`; beyond that new rows are counted as dropped and logged,
never silently lost.

A row may also be queued unbuilt (`put_later`): a function and what it reads, called in this
thread. The proxy puts its rows so, as what it took from the finished request. Built one at a
time between requests, where every piece of code a row needs has gone cold, a row cost 25-38 µs
under load; built back to back every 250 ms on the loop, 15-22 µs; here, 19-27 µs (two runs of
the machine's varying speed), and off the event loop. On the whole proxy
(old and new code loaded at once, requests per CPU-second) it read +0.3 to +1.1%, inside that
measurement's own ±2%; streams gained about a point in `make bench`. The thread builds
everything queued at each wake-up, whether or not the database takes the rows, so nothing waits
unbuilt for longer than one wake-up (while the database is locked, a wake-up may wait out
SQLite's 5 s busy timeout).

On Linux the thread runs `NICE_INCREMENT` steps nicer than the proxy. When it shares a core with
the event loop, a commit (a few ms of CPU every 250 ms) otherwise holds off the requests that
arrive meanwhile: measured at c=1 with both threads on one core, 5 s runs, the proxy's p99 over
the lean Master's went from +0.5–1.7 ms (median of 10 runs +0.9) to +0.3–1.0 ms (median of 10
+0.5). Nicer still (19) starves it at saturation: it fell 15,000 rows behind in 20 s at c=16;
at +10 it kept up (one batch behind at the end, as without it).
"""

import collections
import logging
import operator
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from itertools import chain
from pathlib import Path

from .db import connect
from .latency import bucket_of, upper_ms

logger = logging.getLogger("metrion.writer")

NICE_INCREMENT = 10

REQUEST_COLUMNS = (
    "ts", "account_id", "token_id", "provider", "method", "endpoint", "model", "status",
    "streamed", "forwarded", "input_tokens", "output_tokens", "cached_tokens",
    "cache_write_tokens", "reasoning_tokens", "total_tokens", "usage_raw", "usage_note",
    "ttfb_ms", "latency_ms", "request_bytes", "response_bytes", "requester", "mode",
    "key_fingerprint", "upstream_request_id", "error", "client_aborted",
)
_ROW_PLACES = f"({', '.join('?' * len(REQUEST_COLUMNS))})"
_INSERT = f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)}) VALUES {_ROW_PLACES}"
# Rows go in ROWS_PER_INSERT to a statement: one step for many rows, and one release of the
# GIL instead of one a row (each a chance for the event loop and this thread to swap the
# core). 28 columns x 32 rows stays under SQLite's oldest limit of 999 parameters.
ROWS_PER_INSERT = 32
_INSERT_MANY = _INSERT + f", {_ROW_PLACES}" * (ROWS_PER_INSERT - 1)
_UPSERT_USAGE = (
    "INSERT INTO usage_monthly (account_id, month, requests, input_tokens, output_tokens) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (account_id, month) DO UPDATE SET "
    "requests = requests + excluded.requests, input_tokens = input_tokens + excluded.input_tokens, "
    "output_tokens = output_tokens + excluded.output_tokens"
)
_UPSERT_LATENCY = (
    "INSERT INTO latency_histogram (day, provider, model, le_ms, requests) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (day, provider, model, le_ms) DO UPDATE SET requests = requests + excluded.requests"
)
_UPSERT_FACET = (
    "INSERT INTO request_facets (facet, value, requests) VALUES (?, ?, ?) "
    "ON CONFLICT (facet, value) DO UPDATE SET requests = requests + excluded.requests"
)
# The Logs page's facets (metrion_cli/dashboard), counted per value in request_facets and per
# combination of values in request_facet_combinations.
FACET_COLUMNS = ("requester", "provider", "model", "status")
_FACETS = tuple((REQUEST_COLUMNS.index(c), c) for c in FACET_COLUMNS)
_COMBINATION = operator.itemgetter(*(REQUEST_COLUMNS.index(c) for c in FACET_COLUMNS))
# NULL is one of the values (no requester): matched with IS, hence no UNIQUE key to upsert on.
_ADD_COMBINATION = (
    "UPDATE request_facet_combinations SET requests = requests + ? "
    f"WHERE {' AND '.join(f'{c} IS ?' for c in FACET_COLUMNS)}"
)
_NEW_COMBINATION = (
    f"INSERT INTO request_facet_combinations ({', '.join(FACET_COLUMNS)}, requests) VALUES (?, ?, ?, ?, ?)"
)
_TS, _ACCOUNT, _PROVIDER, _MODEL, _FORWARDED, _INPUT, _OUTPUT, _LATENCY = (
    REQUEST_COLUMNS.index(c) for c in ("ts", "account_id", "provider", "model", "forwarded",
                                       "input_tokens", "output_tokens", "latency_ms"))


def row_values(row: dict) -> tuple:
    """A row dict (REQUEST_COLUMNS keys, missing ones NULL, plus "month") as `put_values` takes it."""
    return (*map(row.get, REQUEST_COLUMNS), row.get("month"))


class Writer:
    def __init__(self, path: Path, interval: float = 0.25, batch_size: int = 2000,
                 max_queued: int = 200_000):
        self.path = path
        self.interval = interval
        self.batch_size = batch_size
        self.max_queued = max_queued
        self._queue: collections.deque = collections.deque()  # appends are thread-safe
        self._built: collections.deque[tuple] = collections.deque()  # the thread's, built rows
        self._wake = threading.Event()  # set for a full batch or to stop
        self._stopping = False
        self._pending: list[tuple] = []  # rows taken off the queue but not yet committed
        self.written = 0
        self.dropped = 0
        self.failures = 0
        self._thread = threading.Thread(target=self._run, name="metrion-writer", daemon=True)
        self._conn: sqlite3.Connection | None = None

    def start(self) -> "Writer":
        self._conn = connect(self.path)
        self._thread.start()
        return self

    def put(self, row: dict) -> None:
        """A row as a dict keyed by REQUEST_COLUMNS (missing ones are NULL), plus an optional
        "month" (YYYY-MM) it counts in."""
        self.put_values(row_values(row))

    def put_values(self, values: tuple) -> None:
        """A row as a tuple: the REQUEST_COLUMNS values in order, then the month it counts in
        (the one Quota counted it in, by its clock), or None for the month of its ts. The
        proxy's form: no dict built and taken apart again per request."""
        if len(self._queue) + len(self._built) + len(self._pending) >= self.max_queued:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.error("metrion writer: queue full, %d rows dropped so far", self.dropped)
            return
        self._queue.append(values)
        if len(self._queue) >= self.batch_size:
            self._wake.set()

    def put_later(self, build: Callable[[object], tuple], source: object) -> None:
        """A row to build in the writer's thread: `build(source)` gives the values as
        `put_values` takes them. `build` must not raise (a row it fails to build is logged and
        counted as dropped), and nothing may change `source` once it is put."""
        self.put_values([build, source])  # a list: what _build_queued builds

    def close(self, timeout: float = 30.0) -> None:
        """Flush everything queued, then stop the thread."""
        if self._thread.is_alive():
            self._stopping = True
            self._wake.set()
            self._thread.join(timeout)
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self.dropped:
            logger.error("metrion writer: %d rows dropped in all (queue full, or not storable)", self.dropped)

    def _run(self) -> None:
        _lower_own_priority()
        while True:
            stopping = self._stopping  # read first: every row put before close() is queued by now
            self._take()
            if self._pending and not self._commit():
                if stopping and self.failures > 20:
                    logger.error("metrion writer: giving up, %d rows not written",
                                 len(self._pending) + len(self._built) + len(self._queue))
                    return
                time.sleep(min(1.0, 0.05 * self.failures))
                continue
            if stopping and not self._queue and not self._built:
                return
            if len(self._queue) + len(self._built) < self.batch_size and not stopping:
                self._wake.wait(self.interval)
                self._wake.clear()

    def _take(self) -> None:
        """Builds every queued row, then moves built rows to the pending batch, up to batch_size."""
        self._build_queued()
        pending, built = self._pending, self._built
        for _ in range(min(len(built), self.batch_size - len(pending))):
            pending.append(built.popleft())

    def _build_queued(self) -> None:
        queued, built = self._queue, self._built
        for n in range(len(queued)):
            item = queued.popleft()
            if item.__class__ is list:  # put_later's
                if n % 32 == 31:
                    # Building holds the GIL: let the event loop in now and then, not only
                    # when the interpreter's 5 ms switch interval forces it.
                    time.sleep(0)
                try:
                    item = item[0](item[1])
                except Exception as e:  # noqa: BLE001 (logged and counted, never silent)
                    self.dropped += 1
                    logger.error("metrion writer: a row could not be built, dropped: %r", e)
                    continue
            built.append(item)

    def _commit(self) -> bool:
        batch = self._pending
        try:
            self._write(batch)
        except (ValueError, OverflowError, TypeError, sqlite3.InterfaceError, sqlite3.ProgrammingError) as e:
            # A value SQLite cannot take: a lone surrogate (a client's undecodable bytes in a
            # path, header or model name), an integer past 64 bits, a list or dict (unhashable:
            # it cannot be counted either). Retried at once with such values escaped; an error
            # here must never stop the thread with the lock held.
            self._rollback()
            logger.warning("metrion writer: %d rows held values SQLite cannot store (%s); "
                           "storing them escaped", len(batch), e)
            batch = self._pending = [storable(row) for row in batch]
            try:
                self._write(batch)
            except Exception as again:  # noqa: BLE001 (logged and counted, never silent)
                self._rollback()
                self.dropped += len(batch)
                self._pending = []
                logger.error("metrion writer: %d rows dropped, they cannot be stored: %r", len(batch), again)
                return True
        except sqlite3.Error as e:
            self._rollback()
            self.failures += 1
            if self.failures == 1 or self.failures % 50 == 0:
                logger.error("metrion writer: %d rows wait, database error: %s", len(batch), e)
            return False
        if self.failures:
            logger.warning("metrion writer: database writable again after %d failed attempts", self.failures)
        self.failures = 0
        self.written += len(batch)
        self._pending = []
        return True

    def _write(self, batch: list[tuple]) -> None:
        usage: dict[tuple[int, str], list[int]] = {}
        latency: collections.Counter[tuple[str, str, str, float]] = collections.Counter()
        facets = []
        for index, column in _FACETS:
            # Counted by Counter's C loop over the column: a Python step per row and facet
            # cost ~0.5 µs a row (5% of the writer's time).
            counts = collections.Counter(map(operator.itemgetter(index), batch))
            counts.pop(None, None)
            facets.extend((column, value, n) for value, n in counts.items())
        combinations = collections.Counter(map(_COMBINATION, batch))
        for row in batch:
            if row[_FORWARDED] and isinstance(row[_LATENCY], (int, float)) and row[_PROVIDER]:
                latency[(row[_TS][:10], row[_PROVIDER], row[_MODEL] or "", upper_ms(bucket_of(row[_LATENCY])))] += 1
            if row[_ACCOUNT] is None:
                continue
            totals = usage.setdefault((row[_ACCOUNT], row[-1] or row[_TS][:7]), [0, 0, 0])
            totals[0] += 1 if row[_FORWARDED] else 0
            totals[1] += row[_INPUT] or 0
            totals[2] += row[_OUTPUT] or 0
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        whole = len(batch) - len(batch) % ROWS_PER_INSERT
        for start in range(0, whole, ROWS_PER_INSERT):
            rows = batch[start:start + ROWS_PER_INSERT]
            conn.execute(_INSERT_MANY, [*chain.from_iterable(row[:-1] for row in rows)])
        conn.executemany(_INSERT, [row[:-1] for row in batch[whole:]])
        conn.executemany(_UPSERT_USAGE, [(a, m, *t) for (a, m), t in usage.items()])
        conn.executemany(_UPSERT_LATENCY, [(*key, n) for key, n in latency.items()])
        conn.executemany(_UPSERT_FACET, facets)
        for combination, n in combinations.items():
            if not conn.execute(_ADD_COMBINATION, (n, *combination)).rowcount:
                conn.execute(_NEW_COMBINATION, (*combination, n))
        conn.execute("COMMIT")

    def _rollback(self) -> None:
        if self._conn is not None and self._conn.in_transaction:
            self._conn.execute("ROLLBACK")


def _lower_own_priority() -> None:
    """The calling thread, and only it, NICE_INCREMENT steps nicer (Linux: a thread id passed to
    setpriority names that thread alone; elsewhere it would name a process, so nothing is done)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + NICE_INCREMENT))
    except OSError as e:  # a sandbox that forbids it: the rows are written all the same
        logger.warning("metrion writer: could not lower its priority: %s", e)


def storable(row: tuple) -> tuple:
    """The row with every value SQLite can store: text with lone surrogates escaped
    (\\udc80), integers past 64 bits as text."""
    return tuple(_storable(value) for value in row)


def _storable(value):
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, bool) or value is None or isinstance(value, (float, bytes)):
        return value
    if isinstance(value, int):
        return value if -2**63 <= value < 2**63 else str(value)
    return str(value)
