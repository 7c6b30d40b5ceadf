"""Catch-up over the real time-series store (SQLite file), reopened as after a restart."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from piman.monitor.alerting.book import GroupSettings
from piman.monitor.alerting.evaluator import AlertService, QuerySource
from piman.monitor.alerting.rules import Rule
from piman.monitor.collector.query import EVENTS_JOB, SCRAPE_JOB
from piman.monitor.collector.tsdb import TargetBatch, Tsdb
from piman.store import Store

RULES = [
    Rule.parse("HotSoC", "temperature_celsius >= 80", 60, {"severity": "warning"}),
    Rule.parse("NodeDown", 'up{job="piman"} == 0', 30, {"severity": "critical"}),
]


def make_service(store: Store, tsdb: Tsdb, now: list[float]) -> AlertService:
    return AlertService(
        RULES,
        store.alerts,
        QuerySource(tsdb, lookback=60),
        GroupSettings(group_by=("alertname", "node"), group_wait=0, group_interval=15),
        interval=15,
        receivers=["webhook:http://receiver"],
        clock=lambda: now[0],
        ready=tsdb.ready.wait,
        fresh=lambda: tsdb.last_write,
    )


async def test_catch_up_over_the_stored_gap_after_a_restart(tmp_path: Path) -> None:
    t0 = time.time() - 1800
    now = [t0]
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'piman.db'}")
    await store.open()
    tsdb = Tsdb(tmp_path / "metrics.db")
    await tsdb.open()
    try:
        temp = tsdb.series_id(EVENTS_JOB, "pi1", "127.0.0.1:9110", "temperature_celsius", ())
        up = tsdb.series_id(SCRAPE_JOB, "pi1", "127.0.0.1:9110", "up", ())
        await tsdb.write([TargetBatch("pi1", t0, [(temp, 50.0), (up, 1.0)])], now=t0)
        svc = make_service(store, tsdb, now)
        await svc.start()
        assert await svc.tick(t0) == []
        # The evaluator stops here; scrapes go on for 10 minutes: hot for 2 minutes, and the
        # node stops answering for 45 s at the end.
        for i in range(1, 41):
            t = t0 + 15 * i
            hot = 90.0 if 10 <= i < 18 else 50.0
            alive = 0.0 if i >= 36 else 1.0
            await tsdb.write([TargetBatch("pi1", t, [(temp, hot), (up, alive)])], now=t)
        await tsdb.close()

        # Restart: a new store object over the same file, and a new evaluator.
        tsdb = Tsdb(tmp_path / "metrics.db")
        await tsdb.open()
        now[0] = t0 + 15 * 41
        svc = make_service(store, tsdb, now)
        notes = await svc.start()
        assert [(n.group_labels["alertname"], n.alerts[0].status, n.late) for n in notes] == [
            ("HotSoC", "firing", True),
            ("HotSoC", "resolved", True),
            ("NodeDown", "firing", True),
        ]
        assert notes[0].alerts[0].starts_at == pytest.approx(t0 + 15 * 14, abs=0.01)  # stored in ms
        assert notes[1].alerts[0].ends_at == pytest.approx(t0 + 15 * 18, abs=0.01)
        assert notes[2].alerts[0].starts_at == pytest.approx(
            t0 + 15 * 38, abs=0.01
        )  # down at i=36, for 30 s
        queued = await store.alerts.outbox(pending_only=True)
        assert len(queued) == 3
        assert all(item.payload["late"] for item in queued)

        # Before the first scrape after the restart, nothing is evaluated (no false "resolved").
        now[0] += 15
        assert await svc.tick(now[0]) == []
        assert [a.rule for a in [a for a in svc.active() if a.state == "firing"]] == ["NodeDown"]
        # The node answers again: NodeDown resolves, notified at the group's next tick, not late.
        notes = []
        for _ in range(2):
            await tsdb.write([TargetBatch("pi1", now[0], [(temp, 50.0), (up, 1.0)])], now=now[0])
            notes += await svc.tick(now[0])
            now[0] += 15
        assert [(n.alerts[0].status, n.late) for n in notes] == [("resolved", False)]
    finally:
        await tsdb.close()
        await store.close()
