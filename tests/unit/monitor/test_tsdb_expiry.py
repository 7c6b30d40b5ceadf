"""Series that stop reporting are forgotten once ``retention`` has passed: in memory, on disk, after
a restart, and in the scraper's caches (a series that comes back later is a new series)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from piman.monitor.collector.scrape import Scraper, ScrapeTarget, _TargetState
from piman.monitor.collector.tsdb import TargetBatch, Tsdb

T0 = 1_700_000_000.0
HOUR = 3600.0


def _rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    db = sqlite3.connect(path)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


async def test_a_series_silent_for_retention_is_dropped_with_its_node_events(
    tmp_path: Path,
) -> None:
    path = tmp_path / "metrics.db"
    db = Tsdb(path, retention=HOUR)
    await db.open()
    try:
        live = db.series_id("piman", "a", "a:9110", "node_load1", ())
        gone = db.series_id("piman", "b", "b:9110", "node_load1", ())
        await db.write(
            [
                TargetBatch("a", T0, [(live, 1.0)]),
                TargetBatch("b", T0, [(gone, 2.0)], events={"cpu_percent": 3.0}),
            ],
            now=T0,
        )
        assert db.series_count == 2
        t = T0
        while t < T0 + 2.5 * HOUR:  # only a reports from now on
            t += 600.0
            await db.write([TargetBatch("a", t, [(live, 1.0)])], now=t)
        assert db.series_count == 1
        assert await db.latest_events("b") is None
        assert [s.labels["node"] for s in await db.range("node_load1", None, T0, t)] == ["a"]
    finally:
        await db.close()
    assert _rows(path, "SELECT node FROM series") == [("a",)]
    assert _rows(path, "SELECT node FROM events") == []
    again = Tsdb(path, retention=HOUR)
    await again.open()
    try:
        assert again.series_count == 1
        assert again.series_id("piman", "a", "a:9110", "node_load1", ()) == live
        back = again.series_id("piman", "b", "b:9110", "node_load1", ())
        assert back != gone  # a new series, not the forgotten one
    finally:
        await again.close()


async def test_a_series_kept_alive_by_reports_survives_restarts(tmp_path: Path) -> None:
    """The last report is remembered on disk: a restart neither forgets nor immortalises."""
    path = tmp_path / "metrics.db"
    t = T0
    for _ in range(4):  # four restarts over 4 hours, a reporting every 10 minutes
        db = Tsdb(path, retention=HOUR)
        await db.open()
        try:
            sid = db.series_id("piman", "a", "a:9110", "node_load1", ())
            for _ in range(6):
                t += 600.0
                await db.write([TargetBatch("a", t, [(sid, 1.0)])], now=t)
        finally:
            await db.close()
    assert _rows(path, "SELECT node FROM series") == [("a",)]
    db = Tsdb(path, retention=HOUR)
    await db.open()
    try:
        await db.write([], now=t + 60.0)  # reported a minute ago, before the restart
        assert db.series_count == 1
        await db.write([], now=t + 2 * HOUR)  # silent for longer than retention
        assert db.series_count == 0
    finally:
        await db.close()
    assert _rows(path, "SELECT count(*) FROM series") == [(0,)]


class _Fetcher:
    def __init__(self) -> None:
        self.body = ""

    async def get(self, url: str, **_: object) -> tuple[int, str]:
        return 200, self.body

    async def aclose(self) -> None:
        return None


async def test_the_scraper_forgets_dropped_series_and_stores_them_anew(tmp_path: Path) -> None:
    db = Tsdb(tmp_path / "metrics.db", retention=HOUR)
    await db.open()
    try:
        fetcher = _Fetcher()
        target = ScrapeTarget("pi", "http://pi:9110/metrics", None)

        async def targets() -> list[ScrapeTarget]:
            return [target]

        scraper = Scraper(db, targets, interval=600.0, timeout=5.0, fetcher=fetcher)
        state = scraper._states[target] = _TargetState(target)  # as serve() keeps it

        async def cycle(now: float) -> None:
            scraper._pending.append(await scraper.scrape(state, now))
            await scraper.flush(now=now)

        fetcher.body = "kept 1\ncomes_back 1\n"
        await cycle(T0)
        fetcher.body = "kept 1\n"
        t = T0
        while t < T0 + 2.5 * HOUR:
            t += 600.0
            await cycle(t)
        assert await db.range("comes_back", None, T0 - 1, t) == []
        fetcher.body = "kept 1\ncomes_back 7\n"
        t += 600.0
        await cycle(t)
        [back] = await db.latest("comes_back", at=t)
        assert back.value == 7.0
        [up] = await db.latest("up", at=t)
        assert up.value == 1.0
    finally:
        await db.close()
