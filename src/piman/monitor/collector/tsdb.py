"""The embedded time-series store: SQLite in ``data_dir/metrics.db``, beside the main database.

Theory of operation
-------------------
- ``series(id, metric, job, node, instance, labels)``: one row per series; ``labels`` is the JSON
  object of the scraped labels (the target labels ``job``/``instance``/``node`` are columns).
  Ids are allocated in memory by :meth:`Tsdb.series_id` (a dict lookup on the hot path) and the
  rows written with the next cycle.
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
  another connection (WAL lets them run side by side). The newest sample of every series
  is also kept in two arrays indexed by series id (16 bytes a series), so :meth:`Tsdb.latest`
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
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from piman.errors import StoreError
from piman.fleet.metrics import Sample, Series
from piman.monitor.collector.query import DEFAULT_LOOKBACK, events_from_series, labels_match
from piman.monitor.collector.tsdb_tables import SCHEMA, TargetBatch, connect, insert_samples

__all__ = ["TargetBatch", "Tsdb"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
LabelTuple = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class _SeriesInfo:
    id: int
    metric: str
    node: str
    labels: dict[str, str]


def _value(v: float | None) -> float:
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
        self._ids: dict[tuple[str, str, str, LabelTuple], int] = {}
        self._new: list[tuple[int, str, str, str, str, str]] = []
        self._next_id = 1
        self._events: dict[str, dict[str, Any]] = {}
        # Newest sample of each series by id (ts NaN: not written since opened).
        self._latest_ts = array("d")
        self._latest_value = array("d")
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
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = connect(self.path)
            db.executescript(SCHEMA)
        except (sqlite3.Error, OSError) as err:
            raise StoreError(f"cannot open metrics store {self.path}: {err}") from err
        self._wdb = db
        for sid, metric, job, node, labels in db.execute(
            "SELECT id, metric, job, node, labels FROM series"
        ):
            items = tuple(sorted(json.loads(labels).items()))
            self._ids[(job, node, metric, items)] = sid
            self._next_id = max(self._next_id, sid + 1)
        for node, body in db.execute("SELECT node, body FROM events"):
            self._events[node] = json.loads(body)
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
            self._next_id += 1
            self._new.append((sid, metric, job, node, instance, json.dumps(dict(labels))))
        return sid

    async def write(self, batches: Sequence[TargetBatch], now: float | None = None) -> None:
        """Store one scrape cycle in one transaction, then roll up and expire what is due."""
        new, self._new = self._new, []
        try:
            await self._on_writer(self._write, batches, new, time.time() if now is None else now)
        except BaseException:
            self._new[:0] = new  # written with the next cycle instead
            raise

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
        try:
            db.execute("BEGIN")
            db.executemany("INSERT INTO series VALUES (?, ?, ?, ?, ?, ?)", new)
            insert_samples(db, batches, count)
            db.executemany("INSERT OR IGNORE INTO scrapes VALUES (?, ?)", scrapes)
            db.executemany("INSERT OR REPLACE INTO events VALUES (?, ?, ?)", events)
            t1 = time.thread_time()
            self._maintain(db, now)
            db.execute("COMMIT")
            t2 = time.thread_time()
        except sqlite3.Error as err:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise StoreError(f"metrics store write failed: {err}") from err
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

    # -- read side (MetricsQuery) ------------------------------------------------------------

    def _find(self, metric: str, matchers: Mapping[str, str] | None) -> list[_SeriesInfo]:
        db = self._rdb
        assert db is not None, "Tsdb.open() first"
        node = (matchers or {}).get("node")
        if node:
            cur = db.execute(
                "SELECT id, job, node, instance, labels FROM series WHERE metric = ? AND node = ?",
                (metric, node),
            )
        else:
            cur = db.execute(
                "SELECT id, job, node, instance, labels FROM series WHERE metric = ?", (metric,)
            )
        out = []
        for sid, job, node_, instance, text in cur:
            labels = json.loads(text)
            labels.update(job=job, instance=instance, node=node_)
            if labels_match(labels, matchers):
                out.append(_SeriesInfo(sid, metric, node_, labels))
        return out

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
            out += [
                Sample(metric, s.labels, pts[-1][0], pts[-1][1])
                for s in older
                if (pts := [p for p in points.get(s.id, ()) if p[0] > at - lookback])
            ]
        return out

    def _points(
        self, found: Iterable[_SeriesInfo], start: float, end: float
    ) -> dict[int, list[tuple[float, float]]]:
        """Raw points of the given series in [start, end], by series id, in time order."""
        db = self._rdb
        assert db is not None
        by_node: dict[str, list[int]] = {}
        for s in found:
            by_node.setdefault(s.node, []).append(s.id)
        out: dict[int, list[tuple[float, float]]] = {}
        for node, ids in by_node.items():
            id_list = ",".join(str(i) for i in ids)
            cur = db.execute(
                "SELECT s.ts, s.series_id, s.value FROM scrapes c CROSS JOIN samples s"
                f" ON s.ts = c.ts AND s.series_id IN ({id_list})"
                " WHERE c.node = ? AND c.ts BETWEEN ? AND ? ORDER BY s.ts",
                (node, int(start * 1000), int(end * 1000)),
            )
            for ts, sid, value in cur:
                out.setdefault(sid, []).append((ts / 1000.0, _value(value)))
        return out

    def _rollup_points(
        self, table: str, width: int, found: Iterable[_SeriesInfo], start: float, end: float
    ) -> dict[int, list[tuple[float, float]]]:
        db = self._rdb
        assert db is not None
        ids = ",".join(str(s.id) for s in found) or "NULL"
        first = int(start) // width * width
        if (end - first) / width <= 5000:  # seek each (bucket, series) pair
            buckets = ",".join(str(b) for b in range(first, int(end) + 1, width)) or "NULL"
            where = f"bucket IN ({buckets})"
        else:  # long ranges: scan the bucket range
            where = f"bucket BETWEEN {first} AND {int(end)}"
        out: dict[int, list[tuple[float, float]]] = {}
        cur = db.execute(
            f"SELECT bucket, series_id, avg FROM {table} WHERE {where}"
            f" AND series_id IN ({ids}) ORDER BY bucket"
        )
        for bucket, sid, value in cur:
            out.setdefault(sid, []).append((float(bucket + width), _value(value)))
        return out

    async def range(
        self,
        metric: str,
        matchers: Mapping[str, str] | None,
        start: float,
        end: float,
        step: float | None = None,
    ) -> list[Series]:
        """Points of each matching series in ``[start, end]`` (see MetricsQuery.range).

        Ranges that start before the raw retention are served from the rollups' averages
        (1-hour buckets when ``step`` ≥ 1 h, else 1-minute), each point stamped at its
        bucket's end.
        """
        found = await self._on_reader(self._find, metric, matchers)
        if not found:
            return []
        lookback = DEFAULT_LOOKBACK
        raw_cut = self.last_write - self.retention if self.last_write else -math.inf
        if start - lookback >= raw_cut:  # raw samples are still kept for the whole range
            points = await self._on_reader(self._points, found, start - lookback, end)
        else:
            table, width = ("rollup_1h", 3600) if (step or 0) >= 3600 else ("rollup_1m", 60)
            lookback = max(lookback, 2.0 * width)
            low = max(start - width, self.last_write - self.rollup_retention)
            points = await self._on_reader(
                self._rollup_points, table, width, found, low, min(end, raw_cut)
            )
            if end >= raw_cut:
                recent = await self._on_reader(self._points, found, raw_cut, end)
                for sid, pts in recent.items():
                    kept = [p for p in points.get(sid, []) if p[0] < raw_cut]
                    points[sid] = kept + pts
        out = []
        for s in found:
            pts = points.get(s.id, [])
            if step is None:
                pts = [p for p in pts if start <= p[0] <= end]
            else:
                pts = _resample(pts, start, end, step, lookback)
            if pts:
                out.append(Series(metric, s.labels, pts))
        return out

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
                res.append(
                    (s.labels, [(b, _value(a), _value(c), _value(d)) for b, a, c, d in rows])
                )
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


def _resample(
    points: list[tuple[float, float]], start: float, end: float, step: float, lookback: float
) -> list[tuple[float, float]]:
    """Prometheus' instant-vector rule at each step: newest point in (t - lookback, t]."""
    out = []
    i, n = 0, len(points)
    t = start
    while t <= end + 1e-9:
        while i < n and points[i][0] <= t:
            i += 1
        if i and points[i - 1][0] > t - lookback:
            out.append((t, points[i - 1][1]))
        t += step
    return out
