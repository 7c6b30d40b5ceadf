"""The alert tables on a real PostgreSQL (started by the test run): states, restart, outbox."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from piman.monitor.alerting.book import GroupSettings
from piman.monitor.alerting.evaluator import AlertService, QuerySource
from piman.monitor.alerting.notify import Notifier
from piman.monitor.alerting.rules import Rule
from piman.monitor.alerting.silences import make_silence
from piman.monitor.collector.query import EVENTS_JOB, MemoryQuery
from piman.store import Store
from tests.integration.store.conftest import postgres_url  # noqa: F401 - the fixture

T0 = 1_800_000_000.0
HOT = Rule.parse("HotSoC", "temperature_celsius >= 80", 30, {"severity": "warning"})


@pytest.fixture
async def pg_url(postgres_url: str) -> AsyncIterator[str]:  # noqa: F811
    name = "alerts_" + uuid.uuid4().hex[:10]
    base = postgres_url.replace("postgresql://", "postgresql+asyncpg://", 1)
    admin = create_async_engine(base, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield base.rsplit("/", 1)[0] + "/" + name
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
        await admin.dispose()


class Channel:
    name = "webhook:http://receiver"

    def __init__(self) -> None:
        self.got: list[str] = []

    async def send(self, payload: Mapping[str, Any], key: str) -> None:
        self.got.append(key)


def make(store: Store, q: MemoryQuery, now: list[float]) -> AlertService:
    return AlertService(
        [HOT],
        store.alerts,
        QuerySource(q, lookback=60),
        GroupSettings(group_by=("alertname", "node"), group_wait=0, group_interval=15),
        interval=15,
        receivers=[Channel.name],
        clock=lambda: now[0],
    )


async def test_alert_life_cycle_on_postgresql(pg_url: str) -> None:
    store = Store(pg_url)
    await store.open()
    try:
        q, now = MemoryQuery(), [T0]
        labels = {"job": EVENTS_JOB, "instance": "n1", "node": "n1"}
        svc = make(store, q, now)
        await svc.start()
        for i in range(4):
            now[0] = T0 + 15 * i
            q.add("temperature_celsius", labels, now[0], 90)
            await svc.tick(now[0])
        assert [a.state for a in svc.active()] == ["firing"]
        svc = make(store, q, now)  # restart: nothing new to send
        await svc.start()
        now[0] += 15
        q.add("temperature_celsius", labels, now[0], 90)
        assert await svc.tick(now[0]) == []
        repo = store.alerts
        silence = make_silence(["node=n1"], now=now[0], duration=60, comment="pg")
        await repo.add_silence(silence)
        assert [s.id for s in await repo.silences(now=now[0])] == [silence.id]
        await repo.expire_silence(silence.id[:8], now[0] + 1)
        assert await repo.silences(now=now[0] + 2) == []
        now[0] += 15
        q.add("temperature_celsius", labels, now[0], 40)
        notes = await svc.tick(now[0])
        assert [n.alerts[0].status for n in notes] == ["resolved"]

        channel = Channel()
        notifier = Notifier(repo, [channel], clock=lambda: now[0])
        while (item := await repo.next_pending(channel.name)) is not None:
            assert await notifier.deliver(channel, item)
        assert len(channel.got) == 2
        assert await repo.pending_counts() == {}
        history = await repo.history()
        assert [h.state for h in history] == ["resolved", "firing"]
    finally:
        await store.close()
