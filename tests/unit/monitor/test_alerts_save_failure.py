"""A tick whose save fails loses nothing: its changes wait in memory for the next save.

The database here is real and really locked: another connection holds SQLite's write lock (as a
backup, a ``sqlite3`` shell or a second manager would), so the evaluator's transaction fails with
"database is locked" after the busy timeout, which the test shortens from 30 s to 0.1 s.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from piman.errors import StoreError
from piman.monitor.alerting import evaluator
from piman.monitor.alerting.book import GroupSettings
from piman.monitor.alerting.evaluator import AlertService, QuerySource
from piman.monitor.alerting.rules import Rule
from piman.monitor.collector.query import MemoryQuery
from piman.store import Store

T0 = 1_800_000_000.0
DOWN = Rule.parse("NodeDown", "up == 0", 0, {"severity": "critical"})
SETTINGS = GroupSettings(group_by=("alertname", "node"), group_wait=0, group_interval=15)
RECEIVER = "webhook:http://r"


def service(store: Store, q: MemoryQuery) -> AlertService:
    return AlertService(
        [DOWN],
        store.alerts,
        QuerySource(q, lookback=60),
        SETTINGS,
        interval=15,
        receivers=[RECEIVER],
        clock=lambda: T0,
    )


def up(q: MemoryQuery, node: str, t: float, value: float) -> None:
    q.add("up", {"job": "agent", "instance": node, "node": node}, t, value)


def short_busy_timeout(store: Store) -> None:
    def pragma(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA busy_timeout=100")
        cursor.close()

    event.listen(store.engine.sync_engine, "checkout", pragma)


@contextmanager
def write_locked(path: Path) -> Iterator[None]:
    """Another connection holds the database's write lock for the duration."""
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield
        other.execute("ROLLBACK")
    finally:
        other.close()


async def outbox(store: Store) -> list[tuple[str, str, str]]:
    items = reversed(await store.alerts.outbox(limit=100))
    return [
        (i.receiver, i.payload["alerts"][0]["labels"]["node"], i.payload["alerts"][0]["status"])
        for i in items
    ]


async def test_notifications_of_failed_saves_are_queued_by_the_next_save(
    store: Store, tmp_path: Path
) -> None:
    short_busy_timeout(store)
    q = MemoryQuery()
    svc = service(store, q)
    await svc.start()
    up(q, "n1", T0, 0)
    up(q, "n2", T0, 1)
    with write_locked(tmp_path / "piman.db"):
        with pytest.raises(StoreError, match="locked"):
            await svc.tick(T0)  # n1 fires: its notification cannot be saved
        up(q, "n1", T0 + 15, 1)
        up(q, "n2", T0 + 15, 1)
        with pytest.raises(StoreError, match="locked") as failed:
            await svc.tick(T0 + 15)  # n1 resolves: still locked
    assert await outbox(store) == []
    up(q, "n1", T0 + 30, 1)
    up(q, "n2", T0 + 30, 0)
    notes = await svc.tick(T0 + 30)  # the lock is gone: everything is saved, in order
    assert [n.alerts[0].labels["node"] for n in notes] == ["n2"]
    assert await outbox(store) == [
        (RECEIVER, "n1", "firing"),
        (RECEIVER, "n1", "resolved"),
        (RECEIVER, "n2", "firing"),
    ]
    history = [(h.labels["node"], h.state) for h in reversed(await store.alerts.history())]
    assert history == [("n1", "firing"), ("n1", "resolved"), ("n2", "firing")]
    assert [(s.labels["node"], s.state) for s in await store.alerts.states()] == [("n2", "firing")]
    # A restarted evaluator finds what the saved tick left: n2 firing, notified; no re-page.
    again = service(store, q)
    await again.start()
    up(q, "n2", T0 + 45, 0)
    assert await again.tick(T0 + 45) == []
    assert [(a.labels["node"], a.state) for a in again.active()] == [("n2", "firing")]
    # What the service's log line says about the failed tick.
    assert "2 notification(s) kept for the next save" in str(failed.value)


async def test_a_failed_save_does_not_forget_an_alert_state(store: Store, tmp_path: Path) -> None:
    short_busy_timeout(store)
    q = MemoryQuery()
    svc = service(store, q)
    await svc.start()
    up(q, "n1", T0, 0)
    with write_locked(tmp_path / "piman.db"), pytest.raises(StoreError):
        await svc.tick(T0)
    up(q, "n1", T0 + 15, 0)
    assert await svc.tick(T0 + 15) == []  # already notified once: not again
    assert [(s.labels["node"], s.state) for s in await store.alerts.states()] == [("n1", "firing")]
    assert [(node, status) for _r, node, status in await outbox(store)] == [("n1", "firing")]


async def test_while_the_store_refuses_saves_memory_is_bounded_and_says_what_it_dropped(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(evaluator, "MAX_UNSAVED", 2)
    short_busy_timeout(store)
    q = MemoryQuery()
    svc = service(store, q)
    await svc.start()
    with write_locked(tmp_path / "piman.db"):
        for i, node in enumerate(("n1", "n2", "n3")):  # one new notification per tick
            up(q, node, T0 + 15 * i, 0)
            with pytest.raises(StoreError, match=r"\(2 notification\(s\) kept|\(1 notification"):
                await svc.tick(T0 + 15 * i)
    up(q, "n3", T0 + 45, 0)
    await svc.tick(T0 + 45)
    assert [node for _r, node, _s in await outbox(store)] == ["n2", "n3"]
    (line,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert line == "alerts: the store has refused saves for long: 1 unsaved notification(s) dropped"
