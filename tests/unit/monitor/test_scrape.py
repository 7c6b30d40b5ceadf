"""The scraper against a fake HTTP layer: synthetic series, labels, failures, isolation."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from piman.monitor.collector.expfmt import format_sample, parse
from piman.monitor.collector.scrape import Scraper, ScrapeTarget, _TargetState, targets_for
from piman.monitor.collector.snapshot import NodeSnapshots
from piman.monitor.collector.tsdb import TargetBatch, Tsdb
from piman.web.ui.pages import sparkline

BODY = """\
# TYPE node_load1 gauge
node_load1 0.5
node_cpu_seconds_total{cpu="0",mode="idle"} 100
clash{job="theirs",instance="x"} 7
"""
NOW = time.time() // 60 * 60  # recent: older samples would already be expired
EVENTS = {"time": 1.0, "cpu_percent": 12.5, "temperature_celsius": 55.0, "throttled": "0x50005"}


class FakeFetcher:
    """URL → (status, body) or an exception; ``slow`` URLs never answer."""

    def __init__(self, answers: dict[str, tuple[int, str] | Exception], slow: set[str]) -> None:
        self.answers = answers
        self.slow = slow

    async def get(self, url: str, **_: object) -> tuple[int, str]:
        if url in self.slow:
            await asyncio.sleep(3600)
        answer = self.answers.get(url, ConnectionRefusedError("refused"))
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def aclose(self) -> None:
        return None


def _target(node: str) -> ScrapeTarget:
    return ScrapeTarget(node, f"http://{node}:9110/metrics", f"http://{node}:9110/events")


@pytest.fixture
async def tsdb(tmp_path: Path) -> AsyncIterator[Tsdb]:
    db = Tsdb(tmp_path / "metrics.db")
    await db.open()
    try:
        yield db
    finally:
        await db.close()


def _scraper(tsdb: Tsdb, fetcher: FakeFetcher, targets: list[ScrapeTarget]) -> Scraper:
    async def source() -> list[ScrapeTarget]:
        return targets

    return Scraper(tsdb, source, interval=1.0, timeout=0.2, fetcher=fetcher, forward=True)


async def _scrape_all(scraper: Scraper, targets: list[ScrapeTarget], now: float) -> None:
    batches = await asyncio.gather(*(scraper.scrape(_TargetState(t), now) for t in targets))
    scraper._pending.extend(batches)
    await scraper.flush()


async def test_healthy_dead_slow_and_broken_targets_each_get_their_up(tsdb: Tsdb) -> None:
    ok, dead, slow, broken, http500 = (_target(n) for n in ("ok", "dead", "slow", "broken", "e"))
    fetcher = FakeFetcher(
        {
            ok.metrics_url: (200, BODY),
            str(ok.events_url): (200, json.dumps(EVENTS)),
            broken.metrics_url: (200, "this is { not metrics"),
            http500.metrics_url: (500, "oops"),
        },
        slow={slow.metrics_url},
    )
    targets = [ok, dead, slow, broken, http500]
    scraper = _scraper(tsdb, fetcher, targets)
    await _scrape_all(scraper, targets, now=NOW)
    ups = {s.labels["node"]: s.value for s in await tsdb.latest("up", at=NOW)}
    assert ups == {"ok": 1.0, "dead": 0.0, "slow": 0.0, "broken": 0.0, "e": 0.0}
    counts = {
        s.labels["node"]: s.value for s in await tsdb.latest("scrape_samples_scraped", at=NOW)
    }
    assert counts == {"ok": 3.0, "dead": 0.0, "slow": 0.0, "broken": 0.0, "e": 0.0}
    durations = await tsdb.latest("scrape_duration_seconds", {"node": "slow"}, at=NOW)
    assert 0.2 <= durations[0].value < 1.0  # the slow one was cut at its own deadline


async def test_target_labels_are_added_and_clashing_ones_kept_as_exported(tsdb: Tsdb) -> None:
    ok = _target("ok")
    scraper = _scraper(tsdb, FakeFetcher({ok.metrics_url: (200, BODY)}, set()), [ok])
    await _scrape_all(scraper, [ok], now=NOW)
    [load] = await tsdb.latest("node_load1", at=NOW)
    assert load.labels == {"job": "piman", "instance": "ok:9110", "node": "ok"}
    [clash] = await tsdb.latest("clash", at=NOW)
    assert clash.labels == {
        "exported_job": "theirs",
        "exported_instance": "x",
        "job": "piman",
        "instance": "ok:9110",
        "node": "ok",
    }


async def test_events_fields_become_series_and_the_snapshot(tsdb: Tsdb) -> None:
    ok = _target("ok")
    fetcher = FakeFetcher(
        {ok.metrics_url: (200, BODY), str(ok.events_url): (200, json.dumps(EVENTS))}, set()
    )
    scraper = _scraper(tsdb, fetcher, [ok])
    snapshots = NodeSnapshots()
    scraper.on_flush.append(snapshots.refresh)
    await _scrape_all(scraper, [ok], now=NOW)
    assert await tsdb.latest_events("ok") == EVENTS
    [temp] = await tsdb.latest("temperature_celsius", at=NOW)
    assert temp.labels["job"] == "piman_events"
    assert temp.value == 55.0
    [throttled] = await tsdb.latest("throttled", at=NOW)
    assert throttled.value == 0x50005
    snap = snapshots["ok"]
    assert (snap.up, snap.cpu, snap.temperature, snap.memory) == (True, 12.5, 55.0, None)
    assert sparkline(snap.cpu_history) == "0.0,17.5"


async def test_exposition_for_forwarding_has_all_labels_and_timestamps(tsdb: Tsdb) -> None:
    ok = _target("ok")
    scraper = _scraper(tsdb, FakeFetcher({ok.metrics_url: (200, BODY)}, set()), [ok])
    batch = await scraper.scrape(_TargetState(ok), 1000.5)  # timestamps as given
    text = scraper.exposition([batch])
    assert 'node_load1{instance="ok:9110",job="piman",node="ok"} 0.5 1000500\n' in text
    assert 'up{instance="ok:9110",job="piman",node="ok"} 1 1000500\n' in text


async def test_serve_scrapes_every_interval_and_writes_once_per_cycle(tsdb: Tsdb) -> None:
    ok, dead = _target("ok"), _target("dead")
    scraper = _scraper(tsdb, FakeFetcher({ok.metrics_url: (200, BODY)}, set()), [ok, dead])
    task = asyncio.create_task(scraper.serve())
    try:
        async with asyncio.timeout(20):
            while True:
                ups = await tsdb.range("up", {"node": "ok"}, 0, 1e10)
                if ups and len(ups[0].points) >= 2:
                    break
                await asyncio.sleep(0.1)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert scraper.cycles >= 2
    [dead_up] = await tsdb.latest("up", {"node": "dead"})
    assert dead_up.value == 0.0


@dataclass
class _N:
    name: str
    ip: str | None
    agent_url: str | None


def test_targets_come_from_agent_url_or_ip_and_port() -> None:
    got = targets_for(
        [
            _N("a", "10.0.0.1", None),
            _N("b", "10.0.0.2", "https://b.example:9443/custom"),
            _N("c", None, None),
        ],
        9110,
    )
    assert got == [
        ScrapeTarget("a", "http://10.0.0.1:9110/metrics", "http://10.0.0.1:9110/events"),
        ScrapeTarget("b", "https://b.example:9443/custom", "https://b.example:9443/events"),
    ]
    assert got[0].instance == "10.0.0.1:9110"


def test_sparkline_scales_values_and_skips_gaps() -> None:
    assert sparkline([0.0, None, 100.0]) == "0.0,20.0 80.0,0.0"
    assert sparkline([]) == ""


def test_targets_are_spread_over_the_interval(tmp_path: Path) -> None:
    scraper = _scraper(Tsdb(tmp_path / "x.db"), FakeFetcher({}, set()), [])
    phases = [scraper.phase(_target(f"n{i}")) for i in range(200)]
    assert all(0 <= p < 1.0 for p in phases)
    assert len({int(p * 10) for p in phases}) == 10  # every tenth of the interval is used


_line_values = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**12), 10**12)


@given(
    st.lists(
        st.tuples(
            st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True),
            st.dictionaries(
                st.from_regex(r"[a-z][a-z0-9_]{0,5}", fullmatch=True),
                st.text(max_size=6),
                max_size=3,
            ),
        ),
        min_size=1,
        max_size=12,
        unique_by=lambda t: (t[0], tuple(sorted(t[1].items()))),
    ),
    st.lists(st.lists(_line_values, min_size=12, max_size=12), min_size=1, max_size=3),
)
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_ingest_fast_path_reads_what_the_full_parser_reads(
    tmp_path: Path,
    series: list[tuple[str, dict[str, str]]],
    scrapes: list[list[float | int]],
) -> None:
    """Scraping the same series again (fast path) gives exactly expfmt.parse's samples."""
    scraper = _scraper(Tsdb(tmp_path / "never-opened.db"), FakeFetcher({}, set()), [])
    state = _TargetState(_target("n"))
    names = {}
    for values in scrapes:
        body = "".join(
            format_sample(name, sorted(labels.items()), float(v)) + "\n"
            for (name, labels), v in zip(series, values, strict=False)
        )
        batch = TargetBatch("n", 0.0)
        scraper._ingest(state, body, batch)
        got = batch.samples
        for key, sid in scraper.tsdb._ids.items():
            names[sid] = (key[2], key[3])
        expected = [(s.name, s.labels, s.value) for s in parse(body)]
        ours = [(*names[sid], value) for sid, value in got]
        assert len(ours) == len(expected)
        for (n1, l1, v1), (n2, l2, v2) in zip(ours, expected, strict=True):
            assert (n1, l1) == (n2, l2)
            assert v1 == v2 or (math.isnan(v1) and math.isnan(v2))


async def test_a_scrape_in_flight_during_a_flush_lands_in_the_next_cycle(tsdb: Tsdb) -> None:
    ok = _target("ok")
    release = asyncio.Event()

    class Held(FakeFetcher):
        async def get(self, url: str, **kwargs: object) -> tuple[int, str]:
            await release.wait()
            return await super().get(url, **kwargs)

    scraper = _scraper(tsdb, Held({ok.metrics_url: (200, BODY)}, set()), [ok])
    scraper.interval, scraper.timeout = 600.0, 30.0  # one scrape in this test
    state = _TargetState(ok)
    loop = asyncio.get_running_loop()
    epoch = loop.time() - scraper.phase(ok) + 0.01  # first scrape due in 10 ms
    task = asyncio.create_task(scraper._target_loop(state, epoch))
    try:
        await asyncio.sleep(0.2)  # the scrape is waiting for its answer
        assert await scraper.flush() == []
        release.set()
        async with asyncio.timeout(5):  # the batch must not land in the flushed list
            while True:
                if scraper._pending:
                    break
                await asyncio.sleep(0.01)
        [batch] = await scraper.flush()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert batch.node == "ok"
    [up] = await tsdb.latest("up", {"node": "ok"})
    assert up.value == 1.0
