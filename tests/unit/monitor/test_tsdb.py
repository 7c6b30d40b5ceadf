"""The SQLite time-series store: what is written reads back, rollups, retention, restarts."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from piman.monitor.collector.query import EVENTS_JOB, MemoryQuery, MetricsQuery
from piman.monitor.collector.tsdb import TargetBatch, Tsdb

T0 = 1_700_000_000.0  # a minute boundary + 20 s: 1_699_999_980 is one


@pytest.fixture
async def tsdb(tmp_path: Path) -> AsyncIterator[Tsdb]:
    db = Tsdb(tmp_path / "metrics.db", retention=3600.0, rollup_retention=86400.0)
    await db.open()
    try:
        yield db
    finally:
        await db.close()


def _temp(db: Tsdb, node: str) -> int:
    return db.series_id("piman", node, f"{node}:9110", "node_temp", (("sensor", "soc"),))


def _up(db: Tsdb, node: str) -> int:
    return db.series_id("piman", node, f"{node}:9110", "up", ())


async def _cycles(db: Tsdb, n: int, start: float = T0, step: float = 15.0) -> None:
    for i in range(n):
        ts = start + i * step
        await db.write(
            [
                TargetBatch("a", ts, [(_temp(db, "a"), 40.0 + i), (_up(db, "a"), 1.0)]),
                TargetBatch("b", ts + 3, [(_temp(db, "b"), 60.0 + i), (_up(db, "b"), 0.0)]),
            ],
            now=ts + 5,
        )


def test_tsdb_implements_the_query_protocol(tmp_path: Path) -> None:
    assert isinstance(Tsdb(tmp_path / "m.db"), MetricsQuery)
    assert isinstance(MemoryQuery(), MetricsQuery)


async def test_series_ids_are_stable_and_distinct(tsdb: Tsdb) -> None:
    assert _temp(tsdb, "a") == _temp(tsdb, "a")
    assert _temp(tsdb, "a") != _temp(tsdb, "b")


async def test_range_returns_what_was_written_with_target_labels(tsdb: Tsdb) -> None:
    await _cycles(tsdb, 4)
    series = await tsdb.range("node_temp", {"node": "a"}, T0, T0 + 100)
    assert len(series) == 1
    assert series[0].labels == {
        "sensor": "soc",
        "job": "piman",
        "instance": "a:9110",
        "node": "a",
    }
    assert series[0].points == [(T0 + 15 * i, 40.0 + i) for i in range(4)]
    both = await tsdb.range("node_temp", None, T0, T0 + 100)
    assert sorted(s.labels["node"] for s in both) == ["a", "b"]


async def test_range_with_step_takes_the_newest_sample_before_each_step(tsdb: Tsdb) -> None:
    await _cycles(tsdb, 4)
    [series] = await tsdb.range("node_temp", {"node": "a"}, T0 + 10, T0 + 50, step=20)
    assert series.points == [(T0 + 10, 40.0), (T0 + 30, 42.0), (T0 + 50, 43.0)]


async def test_latest_is_the_newest_fresh_sample_per_series(tsdb: Tsdb) -> None:
    await _cycles(tsdb, 3)
    now = T0 + 40
    ups = {s.labels["node"]: s.value for s in await tsdb.latest("up", at=now)}
    assert ups == {"a": 1.0, "b": 0.0}
    # In the past (read from disk rather than memory).
    [old] = await tsdb.latest("node_temp", {"node": "a"}, at=T0 + 16)
    assert (old.ts, old.value) == (T0 + 15, 41.0)
    # Stale: nothing within the lookback.
    assert await tsdb.latest("up", at=T0 + 1000, lookback=300) == []


async def test_matchers_select_on_scraped_and_target_labels(tsdb: Tsdb) -> None:
    await _cycles(tsdb, 1)
    assert await tsdb.range("node_temp", {"sensor": "gpu"}, T0, T0 + 10) == []
    assert len(await tsdb.range("node_temp", {"sensor": "soc", "job": "piman"}, T0, T0 + 10)) == 2
    assert await tsdb.range("node_temp", {"missing": ""}, T0, T0 + 10) != []


async def test_nan_and_infinities_survive(tsdb: Tsdb) -> None:
    sid = tsdb.series_id("piman", "a", "a:1", "odd", ())
    await tsdb.write([TargetBatch("a", T0, [(sid, math.nan)])], now=T0)
    await tsdb.write([TargetBatch("a", T0 + 15, [(sid, math.inf)])], now=T0 + 15)
    [series] = await tsdb.range("odd", None, T0, T0 + 20)
    assert math.isnan(series.points[0][1])
    assert series.points[1][1] == math.inf


async def test_events_are_kept_per_node_and_their_fields_are_series(tsdb: Tsdb) -> None:
    sid = tsdb.series_id(EVENTS_JOB, "a", "a:9110", "temperature_celsius", ())
    body = {"time": T0, "cpu_percent": 3.5, "temperature_celsius": 81.0}
    await tsdb.write([TargetBatch("a", T0, [(sid, 81.0)], events=body)], now=T0)
    assert await tsdb.latest_events("a") == body
    assert await tsdb.latest_events("nope") is None
    [hot] = await tsdb.latest("temperature_celsius", at=T0 + 1)
    assert hot.value == 81.0
    assert await tsdb.events_range("a", T0 - 1, T0 + 1) == [
        {"time": T0, "temperature_celsius": 81.0}
    ]


async def test_one_minute_and_one_hour_rollups_hold_min_max_avg(tsdb: Tsdb) -> None:
    start = 1_699_999_980.0  # a minute boundary
    await _cycles(tsdb, 8, start=start)  # two whole minutes: 40..43 and 44..47 for node a
    later = start + 3600 * 2 + 200  # everything is complete now; a still reports (a series
    # silent for `retention` would be forgotten, rollups and all)
    await tsdb.write([TargetBatch("a", later, [(_temp(tsdb, "a"), 50.0)])], now=later)
    [(labels, points)] = await tsdb.rollups("node_temp", {"node": "a"}, start, start + 120)
    assert labels["node"] == "a"
    assert points == [
        (int(start), 40.0, 43.0, 41.5),
        (int(start) + 60, 44.0, 47.0, 45.5),
    ]
    db = sqlite3.connect(tsdb.path)
    try:
        rows = db.execute(
            "SELECT bucket, min, max, avg, n FROM rollup_1h WHERE series_id = ?",
            (_temp(tsdb, "a"),),
        ).fetchall()
    finally:
        db.close()
    assert rows == [(int(start) // 3600 * 3600, 40.0, 47.0, 43.5, 8)]


async def test_old_raw_samples_expire_and_ranges_fall_back_to_rollups(tsdb: Tsdb) -> None:
    start = 1_699_999_980.0
    await _cycles(tsdb, 8, start=start)
    later = start + 7200  # raw retention is one hour; a still reports
    await tsdb.write([TargetBatch("a", later, [(_temp(tsdb, "a"), 50.0)])], now=later)
    db = sqlite3.connect(tsdb.path)
    try:
        assert db.execute("SELECT count(*) FROM samples").fetchone() == (1,)  # `later`'s
    finally:
        db.close()
    [series] = await tsdb.range("node_temp", {"node": "a"}, start, start + 120, step=60)
    # Served from 1-minute averages, each stamped at its bucket's end.
    assert series.points == [(start + 60, 41.5), (start + 120, 45.5)]


async def test_a_reopened_store_keeps_series_samples_and_events(tmp_path: Path) -> None:
    path = tmp_path / "metrics.db"
    db = Tsdb(path)
    await db.open()
    sid = _temp(db, "a")
    await db.write([TargetBatch("a", T0, [(sid, 42.0)], events={"cpu_percent": 1.0})], now=T0)
    await db.close()
    again = Tsdb(path)
    await again.open()
    try:
        assert _temp(again, "a") == sid
        assert _temp(again, "b") != sid
        [series] = await again.range("node_temp", None, T0 - 1, T0 + 1)
        assert series.points == [(T0, 42.0)]
        [sample] = await again.latest("node_temp", at=T0 + 1)  # from disk after a restart
        assert (sample.ts, sample.value) == (T0, 42.0)
        assert await again.latest_events("a") == {"cpu_percent": 1.0}
    finally:
        await again.close()


async def test_memory_query_fake_agrees_with_the_store(tsdb: Tsdb) -> None:
    fake = MemoryQuery()
    for i in range(4):
        ts = T0 + 15 * i
        sid = _temp(tsdb, "a")
        await tsdb.write([TargetBatch("a", ts, [(sid, 40.0 + i)])], now=ts)
        fake.add(
            "node_temp",
            {"sensor": "soc", "job": "piman", "instance": "a:9110", "node": "a"},
            ts,
            40.0 + i,
        )
    for args in [(T0, T0 + 60, None), (T0 + 5, T0 + 50, 10.0)]:
        ours = await tsdb.range("node_temp", {"node": "a"}, *args)
        theirs = await fake.range("node_temp", {"node": "a"}, *args)
        assert [(dict(s.labels), s.points) for s in ours] == [
            (dict(s.labels), s.points) for s in theirs
        ]


async def test_a_cycle_larger_than_one_insert_statement_is_stored_whole(tsdb: Tsdb) -> None:
    # 3 nodes x 401 samples: several multi-row statements plus a tail, cut across batches.
    ids = {
        node: [
            tsdb.series_id("piman", node, f"{node}:1", "m", (("i", str(i)),)) for i in range(401)
        ]
        for node in ("a", "b", "c")
    }
    batches = [
        TargetBatch(node, T0 + k, [(sid, float(i) + k) for i, sid in enumerate(ids[node])])
        for k, node in enumerate(("a", "b", "c"))
    ]
    batches[1].values[7] = math.nan
    # The same (time, series) twice in one cycle: the last value wins, as row by row.
    batches.append(TargetBatch("c", T0 + 2, [(ids["c"][0], -1.0)]))
    await tsdb.write(batches, now=T0 + 5)
    assert tsdb.samples_written == 3 * 401 + 1
    series = await tsdb.range("m", None, T0, T0 + 10)
    got = {(s.labels["node"], s.labels["i"]): s.points for s in series}
    assert len(got) == 3 * 401
    assert got[("a", "400")] == [(T0, 400.0)]
    assert got[("b", "3")] == [(T0 + 1, 4.0)]
    assert math.isnan(got[("b", "7")][0][1])
    assert got[("c", "0")] == [(T0 + 2, -1.0)]
    assert got[("c", "1")] == [(T0 + 2, 3.0)]
