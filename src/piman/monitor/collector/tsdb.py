"""The embedded time-series store: SQLite in ``data_dir/metrics.db``, beside the main database.

Theory of operation
-------------------
- ``series(id, metric, job, node, instance, labels)``: one row per series; ``labels`` is the JSON
  object of the scraped labels (the target labels ``job``/``instance``/``node`` are columns).
  Ids are allocated in memory by :meth:`Tsdb.series_id` (a dict lookup on the hot path) and the
  rows written with the next cycle.
- ``series.last_seen``: when the series last reported, written every ``min(1 h, retention/4)``
  for the series written since (from the in-memory newest sample times). A series silent for
  ``retention`` is forgotten then: its row, its place in the in-memory index and arrays (its
  rollups stay unreachable until they age out), and the scraper's caches
  (:meth:`Tsdb.write` returns the ids forgotten). A series seen again later is a new one. On
  open, series silent for ``retention`` before the newest report are not loaded.
  So the index holds what reported within ``retention``, not everything ever scraped.
- ``samples(ts, series_id, value)`` WITHOUT ROWID, primary key ``(ts, series_id)``; ``ts`` is
  the target's scrape start in integer milliseconds (exposition timestamps are ignored, like
  Prometheus' ``honor_timestamps: false``); NaN is stored as NULL.
- ``scrapes(node, ts)``: the scrape times of each node. A node's series over a range are read
  by seeking ``(ts, series_id)`` for each of its scrape times, so the time-first key serves
  per-node queries without a second index.
- ``rollup_1m`` / ``rollup_1h(bucket, series_id, min, max, avg, n)``: built from raw samples
  once a minute (hour) is complete, kept for ``rollup_retention``; raw samples are kept for
  ``retention``. ``events(node, ts, body)``: each node's latest ``/events`` JSON.
- One transaction per scrape cycle (:meth:`Tsdb.write`), WAL, ``synchronous=NORMAL``. All
  writes run on one writer thread with its own connection; reads on a reader thread with
  another connection (WAL lets them run side by side), answers built there too
  (:mod:`.tsdb_read`), within the :class:`~.query.QueryLimits` a caller gives. The newest
  sample of every series is also kept in two arrays indexed by series id (16 bytes a
  series), so :meth:`Tsdb.latest`
  at the current time needs no disk read (measured: ``up`` of 2,000 nodes from disk, 0.17 s of
  CPU; from the arrays, a few ms); older times seek each node's scrapes in the lookback.

Key order, measured (bench of 100,000 series = 200 nodes × 500, one insert per cycle, ts
spread per node, Python 3.11 / SQLite 3.40 on this machine)::

    key                 µs/sample cycles 1-3   cycles 78-80   bytes/sample   one node, 80 cycles
    (ts, series_id)     1.03                   1.04           24.8           2.2 ms
    (series_id, ts)     0.98                   6.52           23.9           4.0 ms

Time-first inserts append at the end of the B-tree and stay flat; series-first inserts land
on every leaf page of the table each cycle and slow down as the table grows. Hence
``(ts, series_id)``.

Whole store, from bench/collector.py (node_exporter payloads, 500-2,000 agents, 15 s):
about 0.45 µs of writer-thread CPU per sample for the insert (500 rows per ``INSERT``
statement; 1.05 µs with one row per execute, measured on 1 M samples), plus about 2.4 s per
minute of rollups at 2,000 agents (one ``GROUP BY series_id`` per minute over ~4 M rows;
most of it is the sort, and computing them in Python instead measured no cheaper, since
inserting the 1 M rollup rows alone costs ~1.1 s); 42-50 bytes
per sample on disk counting the series table and both rollups over the short runs (the raw
rows alone are ~25 bytes), against 16-20 for VictoriaMetrics fed the same samples. SQLite
rows do not compress, so long retentions of big fleets cost disk: at 2,000 agents a day of
raw samples is ~150 GB (6 G samples); keep ``retention`` short there and rely on the rollups.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sqlite3
import time
from array import array
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from piman.errors import StoreError
from piman.fleet.metrics import Sample, Series
from piman.monitor.collector.query import DEFAULT_LOOKBACK, QueryLimits, events_from_series
from piman.monitor.collector.tsdb_read import SeriesInfo, answer_range, find, read_points
from piman.monitor.collector.tsdb_tables import (
    SCHEMA,
    TargetBatch,
    add_last_seen,
    connect,
    insert_samples,
)
from piman.private_files import make_private

__all__ = ["TargetBatch", "Tsdb"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
LabelTuple = tuple[tuple[str, str], ...]
SeriesKey = tuple[str, str, str, LabelTuple]  # job, node, metric, labels


def _nan(v: float | None) -> float:
    return math.nan if v is None else v


class Tsdb:
    """The store. ``await open()`` before use, ``await close()`` after; implements MetricsQuery."""

    def __init__(
        self,
        path: Path,
        *,
        retention: float = 15 * 86400.0,
        rollup_retention: float = 400 * 86400.0,
        grace: float = 60.0,
    ) -> None:
        self.path = path
        self.grace = grace  # how late a sample may be written after its minute ended
        self.retention = retention
        self.rollup_retention = rollup_retention
        self._ids: dict[SeriesKey, int] = {}
        self._new: list[tuple[int, str, str, str, str, str]] = []
        self._next_id = 1
        self._events: dict[str, dict[str, Any]] = {}
        self._event_ts: dict[str, float] = {}
        # By series id: its key (None: unused or forgotten), its last report as written in
        # series.last_seen (or its creation), its newest sample (ts NaN: not since opened).
        self._keys: list[SeriesKey | None] = [None]
        self._seen = array("d", [math.nan])
        self._latest_ts = array("d")
        self._latest_value = array("d")
        self._forgotten: list[tuple[int, str]] = []  # (id, node), from the writer thread
        self._writer: ThreadPoolExecutor | None = None
        self._reader: ThreadPoolExecutor | None = None
        self.ready = asyncio.Event()  # set while open; readers wait for it
        self._wdb: sqlite3.Connection | None = None
        self._rdb: sqlite3.Connection | None = None
        self.last_write: float = 0.0
        self.samples_written = 0
        self.cpu_insert = 0.0  # writer-thread CPU seconds: inserting, rollups + expiry + commit
        self.cpu_maintain = 0.0

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Create or open the file and load the series index."""
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="tsdb-writer")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="tsdb-reader")
        await self._on_writer(self._open)
        loop = asyncio.get_running_loop()
        self._rdb = await loop.run_in_executor(self._reader, connect, self.path)
        self.ready.set()

    def _open(self) -> None:
        try:
            make_private(self.path, "-wal", "-shm", "-journal")  # 0600, whatever the umask
            db = connect(self.path)
            db.executescript(SCHEMA)
        except (sqlite3.Error, OSError) as err:
            raise StoreError(f"cannot open metrics store {self.path}: {err}") from err
        self._wdb = db
        try:
            add_last_seen(db, time.time())
            newest = db.execute("SELECT max(last_seen) FROM series").fetchone()[0]
            if newest is not None:  # silent for retention before the newest report: gone
                cut = newest - self.retention
                db.execute("DELETE FROM series WHERE last_seen < ?", (cut,))
                db.execute("DELETE FROM events WHERE ts < ?", (cut,))
            rows = db.execute(
                "SELECT id, metric, job, node, labels, last_seen FROM series"
            ).fetchall()
            events = db.execute("SELECT node, ts, body FROM events").fetchall()
        except sqlite3.Error as err:
            raise StoreError(f"cannot read metrics store {self.path}: {err}") from err
        next_id = self._meta(db, "next_series_id") or 1
        self._next_id = max(next_id, max((row[0] for row in rows), default=0) + 1)
        self._keys = [None] * self._next_id
        self._seen = array("d", [math.nan]) * self._next_id
        for sid, metric, job, node, labels, last_seen in rows:
            key = (job, node, metric, tuple(sorted(json.loads(labels).items())))
            self._ids[key] = sid
            self._keys[sid] = key
            self._seen[sid] = last_seen
        for node, ts, body in events:
            self._events[node] = json.loads(body)
            self._event_ts[node] = ts
        logger.info("tsdb opened %s with %d series", self.path, len(self._ids))

    async def close(self) -> None:
        """Close both connections and stop the threads."""
        self.ready.clear()
        loop = asyncio.get_running_loop()
        if self._rdb is not None:
            await loop.run_in_executor(self._reader, self._rdb.close)
            self._rdb = None
        if self._wdb is not None:
            db = self._wdb
            await self._on_writer(db.close)
            self._wdb = None
        for pool in (self._writer, self._reader):
            if pool is not None:
                pool.shutdown(wait=True)
        self._writer = self._reader = None

    async def _on_writer(self, fn: Any, *args: Any) -> Any:
        if self._writer is None:
            raise StoreError(f"metrics store {self.path} is not open")
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)

    async def _on_reader(self, fn: Any, *args: Any) -> Any:
        await self.ready.wait()
        return await asyncio.get_running_loop().run_in_executor(self._reader, fn, *args)

    @property
    def series_count(self) -> int:
        """Series known (written or about to be)."""
        return len(self._ids)

    # -- write side --------------------------------------------------------------------------

    def series_id(self, job: str, node: str, instance: str, metric: str, labels: LabelTuple) -> int:
        """The id of a series, allocated (and written with the next cycle) when new."""
        key = (job, node, metric, labels)
        sid = self._ids.get(key)
        if sid is None:
            sid = self._ids[key] = self._next_id
            self._keys.append(key)
            self._seen.append(math.nan)  # set when its row is written
            self._next_id += 1
            self._new.append((sid, metric, job, node, instance, json.dumps(dict(labels))))
        return sid

    async def write(
        self, batches: Sequence[TargetBatch], now: float | None = None
    ) -> list[tuple[int, str]]:
        """Store one scrape cycle in one transaction, then roll up and expire what is due.

        Returns the series forgotten by this write, as ``(id, node)`` (see the module
        docstring): callers that cache series ids drop those.
        """
        new, self._new = self._new, []
        try:
            await self._on_writer(self._write, batches, new, time.time() if now is None else now)
        except BaseException:
            self._new[:0] = new  # written with the next cycle instead
            raise
        forgotten, self._forgotten = self._forgotten, []
        for sid, _node in forgotten:
            key = self._keys[sid]
            if key is not None:
                self._keys[sid] = None
                self._ids.pop(key, None)
        if forgotten:
            logger.info(
                "tsdb: forgot %d series that did not report for %.0f s",
                len(forgotten),
                self.retention,
            )
        return forgotten

    def _write(
        self,
        batches: Sequence[TargetBatch],
        new: list[tuple[int, str, str, str, str, str]],
        now: float,
    ) -> None:
        db = self._wdb
        assert db is not None, "Tsdb.open() first"
        t0 = time.thread_time()
        missing = self._next_id - len(self._latest_ts)
        if missing > 0:
            self._latest_ts.extend([math.nan] * missing)
            self._latest_value.extend([math.nan] * missing)
        latest_ts, latest_value = self._latest_ts, self._latest_value
        scrapes = []
        events = []
        count = 0
        for batch in batches:
            scrapes.append((batch.node, int(batch.ts * 1000)))
            count += len(batch)
            ts = batch.ts
            for sid, value in zip(batch.ids, batch.values, strict=True):
                latest_ts[sid] = ts
                latest_value[sid] = value
            if batch.events is not None:
                events.append((batch.node, batch.ts, json.dumps(batch.events)))
                self._events[batch.node] = batch.events
                self._event_ts[batch.node] = batch.ts
        try:
            db.execute("BEGIN")
            db.executemany(
                "INSERT INTO series VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(*row, int(now)) for row in new],
            )
            for row in new:
                self._seen[row[0]] = now
            insert_samples(db, batches, count)
            db.executemany("INSERT OR IGNORE INTO scrapes VALUES (?, ?)", scrapes)
            db.executemany("INSERT OR REPLACE INTO events VALUES (?, ?, ?)", events)
            t1 = time.thread_time()
            self._maintain(db, now)
            forgotten = self._forget(db, now)
            db.execute("COMMIT")
            t2 = time.thread_time()
        except sqlite3.Error as err:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise StoreError(f"metrics store write failed: {err}") from err
        self._forgotten = forgotten
        self.last_write = now
        self.samples_written += count
        self.cpu_insert += t1 - t0
        self.cpu_maintain += t2 - t1

    def _meta(self, db: sqlite3.Connection, key: str) -> int | None:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else int(row[0])

    def _maintain(self, db: sqlite3.Connection, now: float) -> None:
        """Roll up complete minutes/hours (after ``grace`` for late targets); expire."""
        done_1m = int(now - max(self.grace, 60.0)) // 60 * 60  # earlier minutes are complete
        since = self._meta(db, "rollup_1m")
        if since is None:
            first = db.execute("SELECT min(ts) FROM samples").fetchone()[0]
            since = done_1m if first is None else int(first) // 60000 * 60
        if done_1m > since:
            # One minute per statement: GROUP BY series_id alone sorts less (measured: 2.7 s
            # instead of 3.7 s for a minute of 2,000 nodes).
            m = since
            while m < done_1m:
                first = db.execute(
                    "SELECT min(ts) FROM samples WHERE ts >= ? AND ts < ?",
                    (m * 1000, done_1m * 1000),
                ).fetchone()[0]
                if first is None:
                    break
                m = int(first) // 60000 * 60
                db.execute(
                    "INSERT OR REPLACE INTO rollup_1m SELECT ?, series_id, min(value), max(value),"
                    " avg(value), count(*) FROM samples WHERE ts >= ? AND ts < ?"
                    " GROUP BY series_id",
                    (m, m * 1000, (m + 60) * 1000),
                )
                m += 60
            db.execute("INSERT OR REPLACE INTO meta VALUES ('rollup_1m', ?)", (done_1m,))
            done_1h = done_1m // 3600 * 3600
            since_h = self._meta(db, "rollup_1h")
            h = since // 3600 * 3600 if since_h is None else since_h
            while h < done_1h:
                first = db.execute(
                    "SELECT min(bucket) FROM rollup_1m WHERE bucket >= ? AND bucket < ?",
                    (h, done_1h),
                ).fetchone()[0]
                if first is None:
                    break
                h = int(first) // 3600 * 3600
                db.execute(
                    "INSERT OR REPLACE INTO rollup_1h SELECT ?, series_id, min(min), max(max),"
                    " sum(avg * n) / sum(n), sum(n) FROM rollup_1m"
                    " WHERE bucket >= ? AND bucket < ? GROUP BY series_id",
                    (h, h, h + 3600),
                )
                h += 3600
            if done_1h > (since_h or 0):
                db.execute("INSERT OR REPLACE INTO meta VALUES ('rollup_1h', ?)", (done_1h,))
        raw_cut = int((now - self.retention) * 1000)
        db.execute("DELETE FROM samples WHERE ts < ?", (raw_cut,))
        db.execute("DELETE FROM scrapes WHERE ts < ?", (raw_cut,))
        roll_cut = int(now - self.rollup_retention)
        db.execute("DELETE FROM rollup_1m WHERE bucket < ?", (roll_cut,))
        db.execute("DELETE FROM rollup_1h WHERE bucket < ?", (roll_cut,))

    def _forget(self, db: sqlite3.Connection, now: float) -> list[tuple[int, str]]:
        """Every ``min(1 h, retention/4)``: write ``last_seen`` of the series that reported
        since, and delete those silent for ``retention``. Returns the latter as (id, node); the
        loop drops them from the index after the commit (the index is the loop's)."""
        period = min(3600.0, self.retention / 4)
        mark = self._meta(db, "series_seen")
        if mark is not None and now - mark < period:
            return []
        keys, seen, latest = self._keys, self._seen, self._latest_ts
        cut = now - self.retention
        reported = []
        forgotten = []
        for sid in range(1, min(len(keys), len(seen), len(latest))):
            key = keys[sid]
            if key is None:
                continue
            last = seen[sid]
            if last != last:  # allocated after this write began: not stored yet
                continue
            ts = latest[sid]
            if ts > last:  # reported since last_seen was written (NaN compares False)
                reported.append((int(ts), sid))
                seen[sid] = last = ts
            if last < cut:
                forgotten.append((sid, key[1]))
        db.executemany("UPDATE series SET last_seen = ? WHERE id = ?", reported)
        for i in range(0, len(forgotten), 500):
            ids = ",".join(str(sid) for sid, _ in forgotten[i : i + 500])
            db.execute(f"DELETE FROM series WHERE id IN ({ids})")
        db.execute("DELETE FROM events WHERE ts < ?", (cut,))
        for node in [n for n, ts in self._event_ts.items() if ts < cut]:
            del self._event_ts[node]
            self._events.pop(node, None)
        db.execute("INSERT OR REPLACE INTO meta VALUES ('series_seen', ?)", (int(now),))
        # Ids are never reused: a forgotten series' rollups still carry its id.
        db.execute("INSERT OR REPLACE INTO meta VALUES ('next_series_id', ?)", (len(keys),))
        return forgotten

    # -- read side (MetricsQuery) ------------------------------------------------------------

    def _find(self, metric: str, matchers: Mapping[str, str] | None) -> list[SeriesInfo]:
        db = self._rdb
        assert db is not None, "Tsdb.open() first"
        return find(db, metric, matchers)

    async def latest(
        self,
        metric: str,
        matchers: Mapping[str, str] | None = None,
        *,
        at: float | None = None,
        lookback: float = DEFAULT_LOOKBACK,
    ) -> list[Sample]:
        """Newest sample of each matching series in ``(at - lookback, at]``."""
        found = await self._on_reader(self._find, metric, matchers)
        at = time.time() if at is None else at
        out = []
        older = []  # series whose newest sample is after `at`, or unknown: read from disk
        latest_ts, latest_value = self._latest_ts, self._latest_value
        for s in found:
            ts = latest_ts[s.id] if s.id < len(latest_ts) else math.nan
            if ts <= at:  # the newest sample is the answer, if fresh enough
                if ts > at - lookback:
                    out.append(Sample(metric, s.labels, ts, latest_value[s.id]))
            else:
                older.append(s)
        if older:
            points = await self._on_reader(self._points, older, at - lookback, at)
            for s in older:
                stamps, values = points.get(s.id, ((), ()))
                if stamps and stamps[-1] > at - lookback:
                    out.append(Sample(metric, s.labels, stamps[-1], values[-1]))
        return out

    def _points(
        self, found: list[SeriesInfo], start: float, end: float
    ) -> dict[int, tuple[Sequence[float], Sequence[float]]]:
        db = self._rdb
        assert db is not None, "Tsdb.open() first"
        return dict(read_points(db, found, start, end))

    async def range(
        self,
        metric: str,
        matchers: Mapping[str, str] | None,
        start: float,
        end: float,
        step: float | None = None,
        *,
        limits: QueryLimits | None = None,
    ) -> list[Series]:
        """Points of each matching series in ``[start, end]`` (see MetricsQuery.range).

        Ranges that start before the raw retention are served from the rollups' averages
        (1-hour buckets when ``step`` ≥ 1 h, else 1-minute), each point stamped at its
        bucket's end. The whole query, answer included, runs on the reader thread.
        QueryTooLarge past ``limits``: a query from a user gives them (``query_range``
        does); the manager's own readers (alert catch-up, per-node events) bound their
        ranges themselves and pass none.
        """
        raw_cut = self.last_write - self.retention if self.last_write else -math.inf
        rollup_cut = self.last_write - self.rollup_retention if self.last_write else -math.inf

        def run() -> list[Series]:
            db = self._rdb
            assert db is not None, "Tsdb.open() first"
            return answer_range(
                db,
                metric,
                matchers,
                start,
                end,
                step,
                raw_cut=raw_cut,
                rollup_cut=rollup_cut,
                limits=limits,
            )

        series: list[Series] = await self._on_reader(run)
        return series

    async def rollups(
        self, metric: str, matchers: Mapping[str, str] | None, start: float, end: float
    ) -> list[tuple[dict[str, str], list[tuple[int, float, float, float]]]]:
        """1-minute rollups ``(bucket, min, max, avg)`` of each matching series (for tests/UI)."""
        found = await self._on_reader(self._find, metric, matchers)

        def read() -> list[tuple[dict[str, str], list[tuple[int, float, float, float]]]]:
            db = self._rdb
            assert db is not None
            res = []
            for s in found:
                rows = db.execute(
                    "SELECT bucket, min, max, avg FROM rollup_1m WHERE bucket BETWEEN ? AND ?"
                    " AND series_id = ? ORDER BY bucket",
                    (int(start), int(end), s.id),
                ).fetchall()
                res.append((s.labels, [(b, _nan(a), _nan(c), _nan(d)) for b, a, c, d in rows]))
            return res

        result: list[tuple[dict[str, str], list[tuple[int, float, float, float]]]]
        result = await self._on_reader(read)
        return result

    async def latest_events(self, node: str) -> dict[str, Any] | None:
        """The latest /events JSON of a node, or None."""
        return self._events.get(node)

    async def events_range(self, node: str, start: float, end: float) -> list[dict[str, Any]]:
        """The stored /events fields of a node per scrape time in [start, end]."""
        return await events_from_series(self, node, start, end)

    async def size_bytes(self) -> int:
        """Bytes the store uses on disk after a WAL checkpoint."""

        def measure() -> int:
            db = self._wdb
            assert db is not None
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            page_size = db.execute("PRAGMA page_size").fetchone()[0]
            pages = db.execute("PRAGMA page_count").fetchone()[0]
            free = db.execute("PRAGMA freelist_count").fetchone()[0]
            return int(page_size * (pages - free))

        size: int = await self._on_writer(measure)
        return size
