"""The evaluator service over a real store (SQLite) and the in-memory metrics fake, time passed in.

A restarted evaluator neither re-pages nor forgets a pending ``for`` timer, and after downtime it
replays the gap over stored samples and queues what it missed, marked late.
"""

from __future__ import annotations

from piman.monitor.alerting.book import GroupSettings
from piman.monitor.alerting.evaluator import AlertService, QuerySource
from piman.monitor.alerting.rules import Rule
from piman.monitor.alerting.service import configured_rules
from piman.monitor.alerting.silences import make_silence
from piman.monitor.collector.query import EVENTS_JOB, MemoryQuery
from piman.store import Store

T0 = 1_800_000_000.0
HOT = Rule.parse("HotSoC", "temperature_celsius >= 80", 60, {"severity": "warning"})
DOWN = Rule.parse("NodeDown", 'up{job="piman"} == 0', 0, {"severity": "critical"})
SETTINGS = GroupSettings(group_by=("alertname", "node"), group_wait=0, group_interval=15)


def temp(q: MemoryQuery, node: str, t: float, value: float) -> None:
    q.add("temperature_celsius", {"job": EVENTS_JOB, "instance": node, "node": node}, t, value)


def service(store: Store, q: MemoryQuery, now: list[float]) -> AlertService:
    return AlertService(
        [HOT, DOWN],
        store.alerts,
        QuerySource(q, lookback=60),
        SETTINGS,
        interval=15,
        receivers=["webhook:http://r"],
        clock=lambda: now[0],
    )


async def outbox(store: Store) -> list[tuple[str, bool, list[str]]]:
    items = await store.alerts.outbox(limit=1000)
    return [
        (
            i.payload["alerts"][0]["status"],
            i.payload["late"],
            [a["labels"]["alertname"] for a in i.payload["alerts"]],
        )
        for i in reversed(items)
    ]


async def test_restart_keeps_pending_timer_and_does_not_repage(store: Store) -> None:
    q = MemoryQuery()
    now = [T0]
    svc = service(store, q, now)
    await svc.start()
    for i in range(4):  # 0, 15, 30, 45 s hot: pending (for 60 s)
        now[0] = T0 + 15 * i
        temp(q, "n1", now[0], 85)
        await svc.tick(now[0])
    assert [a.state for a in svc.active()] == ["pending"]
    pending_since = svc.active()[0].active_at

    # "Restart": a new service over the same store, a moment later.
    now[0] = T0 + 50
    svc = service(store, q, now)
    assert await svc.start() == []
    assert [(a.state, a.active_at) for a in svc.active()] == [("pending", pending_since)]
    now[0] = T0 + 60
    temp(q, "n1", now[0], 86)
    notes = await svc.tick(now[0])  # the timer ran through the restart: fires at 60 s
    assert [n.alerts[0].status for n in notes] == ["firing"]

    # Restart again while firing: no second page.
    now[0] = T0 + 70
    svc = service(store, q, now)
    await svc.start()
    for i in range(1, 4):
        now[0] = T0 + 60 + 15 * i
        temp(q, "n1", now[0], 86)
        assert await svc.tick(now[0]) == []
    assert await outbox(store) == [("firing", False, ["HotSoC"])]


async def test_catch_up_replays_the_gap_and_marks_late(store: Store) -> None:
    q = MemoryQuery()
    now = [T0]
    svc = service(store, q, now)
    await svc.start()
    temp(q, "n1", T0, 50)
    await svc.tick(T0)
    # The evaluator is down from T0 to T0+600 while samples keep being stored: n1 gets hot
    # for two minutes, cools down.
    for i in range(1, 40):
        t = T0 + 15 * i
        temp(q, "n1", t, 90 if 10 <= i < 18 else 50)
    now[0] = T0 + 600
    svc = service(store, q, now)
    notes = await svc.start()
    assert [(n.alerts[0].status, n.late) for n in notes] == [("firing", True), ("resolved", True)]
    firing, resolved = notes[0].alerts[0], notes[1].alerts[0]
    assert firing.starts_at == T0 + 15 * 14  # hot from i=10 (150 s); held 60 s at i=14
    assert resolved.ends_at == T0 + 15 * 18
    assert await outbox(store) == [("firing", True, ["HotSoC"]), ("resolved", True, ["HotSoC"])]
    history = await store.alerts.history()
    assert [(h.state, h.late) for h in reversed(history)] == [("firing", True), ("resolved", True)]
    # Running on from there does not send them again.
    now[0] = T0 + 615
    temp(q, "n1", now[0], 50)
    assert await svc.tick(now[0]) == []


async def test_silence_in_store_mutes_and_regex_matchers_apply(store: Store) -> None:
    q = MemoryQuery()
    now = [T0]
    repo = store.alerts
    await repo.add_silence(make_silence(['node=~"n[12]"'], now=T0, duration=3600))
    svc = service(store, q, now)
    await svc.start()
    for node in ("n1", "n2", "n3"):
        q.add("up", {"job": "piman", "instance": node, "node": node}, T0, 0)
    q.add("up", {"job": "other", "instance": "x", "node": "x"}, T0, 0)  # not job="piman"
    notes = await svc.tick(T0)
    assert [n.group_labels["node"] for n in notes] == ["n3"]
    assert sorted(a.labels["node"] for a in [a for a in svc.active() if a.state == "firing"]) == [
        "n1",
        "n2",
        "n3",
    ]


async def test_no_scrape_since_start_means_no_evaluation(store: Store) -> None:
    q = MemoryQuery()
    now = [T0]
    svc = service(store, q, now)
    await svc.start()
    temp(q, "n1", T0, 90)
    for i in range(5):
        now[0] = T0 + 15 * i
        temp(q, "n1", now[0], 90)
        await svc.tick(now[0])
    assert [a.state for a in svc.active() if a.state == "firing"] == ["firing"]
    # Restarted; the store has not been written since: firing alerts must not resolve.
    last_write = [T0 + 60]
    now[0] = T0 + 70
    svc = service(store, q, now)
    svc.fresh = lambda: last_write[0]
    await svc.start()
    now[0] = T0 + 200  # samples are now stale (lookback 60 s)
    assert await svc.tick(now[0]) == []
    assert [a.state for a in svc.active() if a.state == "firing"] == ["firing"]


def test_configured_rules_replace_defaults_by_name() -> None:
    from piman.config.monitoring import MonitoringSettings

    m = MonitoringSettings.model_validate(
        {"rules": [{"alert": "NodeDown", "expr": "up == 0", "for": "5m"}], "config": {"cpu": 50}}
    )
    rules = {r.name: r for r in configured_rules(m)}
    assert rules["NodeDown"].for_ == 300
    assert rules["HighCpu"].threshold == 50
    assert len(rules) == 6
    m2 = MonitoringSettings.model_validate({"default_rules": False})
    assert configured_rules(m2) == []


async def test_catch_up_spans_several_windows(store: Store) -> None:
    q = MemoryQuery()
    now = [T0]
    svc = service(store, q, now)
    await svc.start()
    temp(q, "n1", T0, 50)
    await svc.tick(T0)
    hot = {range(38, 48), range(100, 110)}  # across the 600 s window edge, and later
    for i in range(1, 121):  # 30 minutes down
        temp(q, "n1", T0 + 15 * i, 90 if any(i in r for r in hot) else 50)
    now[0] = T0 + 15 * 121
    svc = service(store, q, now)
    notes = await svc.start()
    assert [(n.alerts[0].status, n.alerts[0].starts_at) for n in notes] == [
        ("firing", T0 + 15 * 42),
        ("resolved", T0 + 15 * 42),
        ("firing", T0 + 15 * 104),
        ("resolved", T0 + 15 * 104),
    ]
    assert [n.alerts[0].ends_at for n in notes if n.alerts[0].status == "resolved"] == [
        T0 + 15 * 48,
        T0 + 15 * 110,
    ]
    assert svc.last_evaluated == T0 + 15 * 120
