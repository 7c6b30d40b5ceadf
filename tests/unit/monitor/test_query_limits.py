"""Range queries on the store are bounded: points per series, points and series per answer, rows
read. A query over a bound fails with QueryTooLarge (one line), it is never answered in part.
``QueryLimits()`` are the limits of a user's query (``/api/v1/query_range``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from piman.monitor.collector.query import QueryLimits, QueryTooLarge
from piman.monitor.collector.tsdb import TargetBatch, Tsdb

T0 = 1_700_000_000.0


async def _fill(db: Tsdb, series: int, points: int, step: float = 15.0) -> float:
    ids = [db.series_id("piman", "a", "a:9110", "m", (("i", str(i)),)) for i in range(series)]
    batches = [
        TargetBatch("a", T0 + k * step, [(sid, float(k)) for sid in ids]) for k in range(points)
    ]
    end = T0 + (points - 1) * step
    await db.write(batches, now=end)
    return end


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Tsdb]:
    db = Tsdb(tmp_path / "metrics.db", retention=30 * 86400.0)
    await db.open()
    try:
        yield db
    finally:
        await db.close()


async def test_raw_points_per_series_are_capped_without_a_step(store: Tsdb) -> None:
    end = await _fill(store, 1, 11_001)  # 46 h of 15 s samples
    user = QueryLimits()
    with pytest.raises(QueryTooLarge, match="11000 points per series"):
        await store.range("m", None, T0, end, limits=user)
    # The same range with a step is fine, and so is a shorter raw one.
    [stepped] = await store.range("m", None, T0, end, step=60.0, limits=user)
    assert len(stepped.points) == 2751
    [raw] = await store.range("m", None, end - 3600, end, limits=user)
    assert len(raw.points) == 241
    with pytest.raises(QueryTooLarge, match="use a larger step"):
        await store.range("m", None, T0, end, step=10.0, limits=user)


SMALL = QueryLimits(series=4, points=1000, rows=2000)


@pytest.fixture
async def small(tmp_path: Path) -> AsyncIterator[Tsdb]:
    db = Tsdb(tmp_path / "m.db")
    await db.open()
    try:
        yield db
    finally:
        await db.close()


async def test_series_per_answer_are_capped(small: Tsdb) -> None:
    end = await _fill(small, 5, 10)
    with pytest.raises(QueryTooLarge, match="more than 4 series"):
        await small.range("m", None, T0, end, limits=SMALL)
    assert len(await small.range("m", {"i": "4"}, T0, end, limits=SMALL)) == 1


async def test_points_per_answer_are_capped(small: Tsdb) -> None:
    end = await _fill(small, 4, 300)  # 1,200 points
    with pytest.raises(QueryTooLarge, match="more than 1000 points"):
        await small.range("m", None, T0, end, limits=SMALL)
    assert len(await small.range("m", None, T0, T0 + 15 * 199, limits=SMALL)) == 4  # 800 points


async def test_rows_read_are_capped_even_for_a_short_answer(small: Tsdb) -> None:
    end = await _fill(small, 1, 3000)  # 3,000 raw rows for a 2-point answer
    with pytest.raises(QueryTooLarge, match="more than 2000 rows"):
        await small.range("m", None, T0, end, step=end - T0, limits=SMALL)


async def test_the_managers_own_readers_are_not_cut(small: Tsdb) -> None:
    """Alert catch-up and per-node events bound their ranges themselves: no limits given."""
    end = await _fill(small, 5, 300)
    assert len(await small.range("m", None, T0, end)) == 5
