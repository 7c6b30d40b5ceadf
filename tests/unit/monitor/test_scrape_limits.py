"""A hostile agent against the scraper: every scrape is bounded, and a scrape over a bound fails
with ``up`` 0 and a reason in the log, without touching the store or the other targets.

The numbers in the bodies are above the default limits of ``monitoring:`` (sample_limit,
series_limit, label_limit, label_name_length_limit, label_value_length_limit), so these tests
also hold the defaults to something a Pi never reaches and a rogue agent always does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from piman.monitor.collector.scrape import Scraper, ScrapeTarget, _TargetState
from piman.monitor.collector.tsdb import Tsdb
from piman.monitor.service import CollectorMetrics

NOW = time.time() // 60 * 60
GOOD = 'node_load1 0.5\nnode_cpu_seconds_total{cpu="0",mode="idle"} 100\n'


class Fetcher:
    """URL → (status, body); records the URLs asked."""

    def __init__(self, answers: dict[str, tuple[int, str]]) -> None:
        self.answers = answers

    async def get(self, url: str, **_: object) -> tuple[int, str]:
        if url not in self.answers:
            raise ConnectionRefusedError("refused")
        return self.answers[url]

    async def aclose(self) -> None:
        return None


def _target(node: str) -> ScrapeTarget:
    return ScrapeTarget(node, f"http://{node}:9110/metrics", f"http://{node}:9110/events")


@pytest.fixture
async def tsdb(tmp_path: Path) -> AsyncIterator[Tsdb]:
    db = Tsdb(tmp_path / "metrics.db", retention=3600.0)
    await db.open()
    try:
        yield db
    finally:
        await db.close()


def _scraper(tsdb: Tsdb, answers: dict[str, tuple[int, str]]) -> Scraper:
    async def none() -> list[ScrapeTarget]:
        return []

    return Scraper(tsdb, none, interval=15.0, timeout=10.0, fetcher=Fetcher(answers))


async def _cycle(scraper: Scraper, states: list[_TargetState], now: float) -> None:
    batches = await asyncio.gather(*(scraper.scrape(s, now) for s in states))
    scraper._pending.extend(batches)
    await scraper.flush()


async def _ups(tsdb: Tsdb, now: float) -> dict[str, float]:
    return {s.labels["node"]: s.value for s in await tsdb.latest("up", at=now)}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        # one known series a million times over: the samples, not the series, are the problem
        ("node_load1 1\n" * 20_001, "sample_limit"),
        ("".join(f'rogue{{i="{i}"}} 1\n' for i in range(20_001)), "series_limit"),
        ("rogue{" + ",".join(f'l{i}="x"' for i in range(100)) + "} 1\n", "label_limit"),
        ('rogue{big="' + "x" * 100_000 + '"} 1\n', "label_value_length_limit"),
        ("rogue{" + "l" * 10_000 + '="x"} 1\n', "label_name_length_limit"),
        # the metric name is the value of the label __name__, as in Prometheus
        ("r" * 10_000 + " 1\n", "label_value_length_limit"),
    ],
    ids=["samples", "series", "labels", "label-value", "label-name", "metric-name"],
)
async def test_a_scrape_over_a_limit_fails_alone_with_up_0_and_its_reason(
    tsdb: Tsdb, body: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    rogue, ok = _target("rogue"), _target("ok")
    scraper = _scraper(tsdb, {rogue.metrics_url: (200, GOOD), ok.metrics_url: (200, GOOD)})
    states = [_TargetState(rogue), _TargetState(ok)]
    await _cycle(scraper, states, NOW)  # both fine first: the rogue has series already
    series_before = tsdb.series_count
    scraper.fetcher.answers[rogue.metrics_url] = (200, body)  # type: ignore[union-attr]
    with caplog.at_level(logging.WARNING, logger="piman.monitor.collector"):
        await _cycle(scraper, states, NOW + 15)
    assert await _ups(tsdb, NOW + 15) == {"rogue": 0.0, "ok": 1.0}
    [scraped] = await tsdb.latest("scrape_samples_scraped", {"node": "rogue"}, at=NOW + 15)
    assert scraped.value == 0.0
    # Nothing of the bad body reached the store, and it allocated no series.
    assert await tsdb.latest("rogue", at=NOW + 15) == []
    assert tsdb.series_count == series_before
    [load] = await tsdb.latest("node_load1", {"node": "rogue"}, at=NOW + 15)
    assert load.ts == NOW  # the last good scrape's
    messages = [r.getMessage() for r in caplog.records if "node=rogue" in r.getMessage()]
    assert any(reason in m for m in messages), messages
    assert all("Traceback" not in m for m in messages)
    # The rogue behaves again: so does its up.
    scraper.fetcher.answers[rogue.metrics_url] = (200, GOOD)  # type: ignore[union-attr]
    await _cycle(scraper, states, NOW + 30)
    assert await _ups(tsdb, NOW + 30) == {"rogue": 1.0, "ok": 1.0}


async def test_series_are_counted_per_target_across_scrapes(tsdb: Tsdb) -> None:
    """New series a few at a time still stop at series_limit (5,000 by default)."""
    rogue = _target("rogue")
    scraper = _scraper(tsdb, {})
    state = _TargetState(rogue)
    answers = scraper.fetcher.answers  # type: ignore[union-attr]
    ups = []
    for k in range(6):  # 1,000 new series a scrape
        body = "".join(f'rogue{{i="{k * 1000 + i}"}} 1\n' for i in range(1000))
        answers[rogue.metrics_url] = (200, body)
        await _cycle(scraper, [state], NOW + 15 * k)
        ups.append((await _ups(tsdb, NOW + 15 * k))["rogue"])
    assert ups == [1.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    assert len(await tsdb.latest("rogue", at=NOW + 60)) == 5000


async def test_events_nested_too_deep_do_not_kill_the_target(tsdb: Tsdb) -> None:
    """``[[[[…`` as /events raised RecursionError out of scrape() and ended the target's task."""
    rogue = _target("rogue")
    scraper = _scraper(
        tsdb, {rogue.metrics_url: (200, GOOD), str(rogue.events_url): (200, "[" * 50_000)}
    )
    await _cycle(scraper, [_TargetState(rogue)], NOW)
    assert await _ups(tsdb, NOW) == {"rogue": 1.0}
    assert await tsdb.latest_events("rogue") is None


async def test_oversized_events_are_ignored(tsdb: Tsdb) -> None:
    rogue = _target("rogue")
    events = json.dumps({"cpu_percent": 1.0, "junk": "x" * (1 << 20)})
    scraper = _scraper(tsdb, {rogue.metrics_url: (200, GOOD), str(rogue.events_url): (200, events)})
    await _cycle(scraper, [_TargetState(rogue)], NOW)
    assert await _ups(tsdb, NOW) == {"rogue": 1.0}
    assert await tsdb.latest_events("rogue") is None


class _Recorded(str):
    """A body that records the thread splitting it into lines (parsing)."""

    threads: list[int]

    def split(self, *args: object, **kwargs: object) -> list[str]:  # type: ignore[override]
        self.threads.append(threading.get_ident())
        return super().split(*args, **kwargs)  # type: ignore[arg-type]


async def test_bodies_are_parsed_off_the_event_loop(tsdb: Tsdb) -> None:
    rogue = _target("rogue")
    body = _Recorded("".join(f'm{{i="{i}"}} {i}\n' for i in range(3000)))
    body.threads = []
    scraper = _scraper(tsdb, {rogue.metrics_url: (200, body)})
    await _cycle(scraper, [_TargetState(rogue)], NOW)
    assert await _ups(tsdb, NOW) == {"rogue": 1.0}
    assert body.threads, "the body was never split into lines"
    assert threading.get_ident() not in body.threads


async def test_a_failing_scrape_never_ends_the_target_loop(
    tsdb: Tsdb, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever a scrape raises (a bug, a peer we did not foresee), the next one still runs."""
    calls = []
    third = asyncio.Event()

    class Broken:
        async def get(self, url: str, **_: object) -> tuple[int, str]:
            calls.append(url)
            if len(calls) >= 3:
                third.set()
            if len(calls) == 1:
                raise RuntimeError("unforeseen")
            return 200, GOOD

        async def aclose(self) -> None:
            return None

    target = _target("odd")

    async def targets() -> list[ScrapeTarget]:
        return [target]

    scraper = Scraper(tsdb, targets, interval=0.2, timeout=0.1, fetcher=Broken())
    state = _TargetState(target)
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(scraper._target_loop(state, loop.time()))
    try:
        async with asyncio.timeout(20):  # the loop goes on after the failure
            await third.wait()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(calls) >= 3
    assert scraper._pending[0].values[-3] == 0.0  # the failed scrape counted as up 0


async def test_the_manager_counts_failed_scrapes_by_reason(tsdb: Tsdb) -> None:
    rogue, ok = _target("rogue"), _target("ok")
    scraper = _scraper(
        tsdb, {rogue.metrics_url: (200, "node_load1 1\n" * 20_001), ok.metrics_url: (200, GOOD)}
    )
    registry = CollectorRegistry()
    scraper.on_flush.append(CollectorMetrics(registry, tsdb).update)
    await _cycle(scraper, [_TargetState(rogue), _TargetState(ok)], NOW)
    failed = registry.get_sample_value(
        "piman_collector_scrape_failures_total", {"reason": "sample_limit"}
    )
    assert failed == 1.0
    assert registry.get_sample_value("piman_collector_targets", {"state": "down"}) == 1.0
