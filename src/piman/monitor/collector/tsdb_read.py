"""The read side of the time-series store: matching series, reading their points, answering a
range query within :class:`~piman.monitor.collector.query.QueryLimits`.

Plain functions of a SQLite connection; :class:`~piman.monitor.collector.tsdb.Tsdb` runs them
on its reader thread, so a query never parses rows or builds its answer on the event loop.
Points are read into two arrays per series (timestamps in seconds, values; 16 bytes a row)
rather than tuples, and every row read is counted against the query's row budget, so a query
over a budget stops early instead of filling memory.
"""

from __future__ import annotations

import json
import math
import sqlite3
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from piman.fleet.metrics import Series
from piman.monitor.collector.query import (
    DEFAULT_LOOKBACK,
    QueryLimits,
    QueryTooLarge,
    labels_match,
)

__all__ = ["Points", "SeriesInfo", "answer_range", "find", "read_points", "resample"]

Points = tuple["array[float]", "array[float]"]  # timestamps (UNIX seconds), values


@dataclass(frozen=True, slots=True)
class SeriesInfo:
    id: int
    metric: str
    node: str
    labels: dict[str, str]


_UNBOUNDED = QueryLimits(series=2**62, points_per_series=2**62, points=2**62, rows=2**62)


class _Rows:
    """The rows a query may still read."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.left = math.inf if limit is None else limit

    def take(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise QueryTooLarge(
                f"the query would read more than {self.limit} rows; "
                "narrow it (a node, a shorter range)"
            )


def _value(v: float | None) -> float:
    return math.nan if v is None else v


def _add(out: dict[int, Points], sid: int, ts: float, value: float | None) -> None:
    points = out.get(sid)
    if points is None:
        points = out[sid] = (array("d"), array("d"))
    points[0].append(ts)
    points[1].append(_value(value))


def find(
    db: sqlite3.Connection,
    metric: str,
    matchers: Mapping[str, str] | None,
    limit: int | None = None,
) -> list[SeriesInfo]:
    """The series of ``metric`` that match; QueryTooLarge beyond ``limit`` of them."""
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
            out.append(SeriesInfo(sid, metric, node_, labels))
            if limit is not None and len(out) > limit:
                raise QueryTooLarge(
                    f"more than {limit} series match {metric}; name a node to narrow the query"
                )
    return out


def read_points(
    db: sqlite3.Connection,
    found: Iterable[SeriesInfo],
    start: float,
    end: float,
    rows: _Rows | None = None,
) -> dict[int, Points]:
    """Raw points of the given series in [start, end], by series id, in time order."""
    by_node: dict[str, list[int]] = {}
    for s in found:
        by_node.setdefault(s.node, []).append(s.id)
    out: dict[int, Points] = {}
    for node, ids in by_node.items():
        id_list = ",".join(str(i) for i in ids)
        cur = db.execute(
            "SELECT s.ts, s.series_id, s.value FROM scrapes c CROSS JOIN samples s"
            f" ON s.ts = c.ts AND s.series_id IN ({id_list})"
            " WHERE c.node = ? AND c.ts BETWEEN ? AND ? ORDER BY s.ts",
            (node, int(start * 1000), int(end * 1000)),
        )
        for ts, sid, value in cur:
            if rows is not None:
                rows.take()
            _add(out, sid, ts / 1000.0, value)
    return out


def _read_rollups(
    db: sqlite3.Connection,
    table: str,
    width: int,
    found: Iterable[SeriesInfo],
    start: float,
    end: float,
    rows: _Rows,
) -> dict[int, Points]:
    ids = ",".join(str(s.id) for s in found) or "NULL"
    first = int(start) // width * width
    if (end - first) / width <= 5000:  # seek each (bucket, series) pair
        buckets = ",".join(str(b) for b in range(first, int(end) + 1, width)) or "NULL"
        where = f"bucket IN ({buckets})"
    else:  # long ranges: scan the bucket range
        where = f"bucket BETWEEN {first} AND {int(end)}"
    out: dict[int, Points] = {}
    cur = db.execute(
        f"SELECT bucket, series_id, avg FROM {table} WHERE {where}"
        f" AND series_id IN ({ids}) ORDER BY bucket"
    )
    for bucket, sid, value in cur:
        rows.take()
        _add(out, sid, float(bucket + width), value)
    return out


def resample(
    points: Points, start: float, end: float, step: float, lookback: float
) -> list[tuple[float, float]]:
    """Prometheus' instant-vector rule at each step: newest point in (t - lookback, t]."""
    stamps, values = points
    out = []
    i, n = 0, len(stamps)
    t = start
    while t <= end + 1e-9:
        while i < n and stamps[i] <= t:
            i += 1
        if i and stamps[i - 1] > t - lookback:
            out.append((t, values[i - 1]))
        t += step
    return out


def answer_range(
    db: sqlite3.Connection,
    metric: str,
    matchers: Mapping[str, str] | None,
    start: float,
    end: float,
    step: float | None,
    *,
    raw_cut: float,
    rollup_cut: float,
    limits: QueryLimits | None = None,
) -> list[Series]:
    """``MetricsQuery.range`` on one connection (see :meth:`Tsdb.range`); QueryTooLarge when the
    query would pass a limit (None: no limits). ``raw_cut``/``rollup_cut``: oldest raw sample /
    rollup kept."""
    limits = limits or _UNBOUNDED
    if step is not None and (end - start) / step + 1 > limits.points_per_series:
        raise QueryTooLarge(
            f"more than {limits.points_per_series} points per series; use a larger step"
        )
    found = find(db, metric, matchers, limits.series)
    if not found:
        return []
    rows = _Rows(limits.rows)
    lookback = DEFAULT_LOOKBACK
    if start - lookback >= raw_cut:  # raw samples are still kept for the whole range
        points = read_points(db, found, start - lookback, end, rows)
    else:
        table, width = ("rollup_1h", 3600) if (step or 0) >= 3600 else ("rollup_1m", 60)
        lookback = max(lookback, 2.0 * width)
        low = max(start - width, rollup_cut)
        points = _read_rollups(db, table, width, found, low, min(end, raw_cut), rows)
        if end >= raw_cut:
            recent = read_points(db, found, raw_cut, end, rows)
            for sid, (stamps, values) in recent.items():
                old_stamps, old_values = points.get(sid, (array("d"), array("d")))
                keep = sum(1 for t in old_stamps if t < raw_cut)  # ordered by time
                points[sid] = (old_stamps[:keep] + stamps, old_values[:keep] + values)
    out = []
    total = 0
    empty: Points = (array("d"), array("d"))
    for s in found:
        pts = points.get(s.id, empty)
        if step is None:
            series = [(t, v) for t, v in zip(*pts, strict=True) if start <= t <= end]
            if len(series) > limits.points_per_series:
                raise QueryTooLarge(
                    f"more than {limits.points_per_series} points per series in "
                    f"{end - start:.0f} s of raw samples; give a step"
                )
        else:
            series = resample(pts, start, end, step, lookback)
        total += len(series)
        if total > limits.points:
            raise QueryTooLarge(
                f"more than {limits.points} points in the answer; "
                "narrow the query (a node, a shorter range, a larger step)"
            )
        if series:
            out.append(Series(metric, s.labels, series))
    return out
