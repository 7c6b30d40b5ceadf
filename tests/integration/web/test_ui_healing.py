"""Self-healing as an operator sees it: every step on the node page (the audit list, actor
``healing``), and a manager restarted mid-heal that goes on where it was.

A real SQLite store, the real web app and healing service; power records what it is asked; the
alerting handle says which node's NodeDown fires; the service runs on a fake clock.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from piman.config.models import Config
from piman.context import AppContext
from piman.fleet.lifecycle import NodeState, PowerState
from piman.fleet.metrics import NodeSnapshot, Series
from piman.fleet.records import AlertRecord
from piman.inventory.healing import Cycle, Quarantine
from piman.inventory.healing_service import HealingService
from piman.store import Store, reconcile
from piman.web.app import create_app
from tests.integration.web.test_access_table import FakeAlerting, FakePower
from tests.support import grant

MIN = 60.0
NODES = [f"pi{i}" for i in range(1, 7)]


class Alerting(FakeAlerting):
    def __init__(self) -> None:
        self.down: set[str] = set()

    def active(self) -> list[AlertRecord]:
        return [self._firing(name) for name in sorted(self.down)]

    @staticmethod
    def _firing(name: str) -> AlertRecord:
        labels = {"node": name}
        return AlertRecord(name, "NodeDown", labels, {}, "firing", 0.0, 0.0, None, 0.0, False)


class Monitor:
    def __init__(self) -> None:
        self.alerting = Alerting()

    async def query_range(self, *args: object, **kw: object) -> list[Series]:
        return []

    async def latest_events(self, node: str) -> None:
        return None

    def snapshot(self, node: str) -> NodeSnapshot | None:
        return None


class Clock:
    def __init__(self) -> None:
        self.now = float(int(time.time()))  # whole seconds: the audit log keeps microseconds

    def __call__(self) -> float:
        return self.now


Rig = tuple[httpx.AsyncClient, dict[str, str], AppContext, Monitor, Clock]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    config = Config.model_validate(
        {
            "manager": {"address": "198.18.0.1", "data_dir": str(tmp_path)},
            "switches": [{"name": "rack1", "driver": "manual"}],
            "nodes": [{"name": n, "switch": "rack1", "port": i + 1} for i, n in enumerate(NODES)],
            "healing": {
                "policies": [{"name": "lab", "nodes": ["rack1"], "cycles": 2, "reinstall": False}]
            },
        }
    )
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'piman.db'}")
    await store.open()
    await reconcile(store, config)
    ctx = AppContext(config=config, store=store, metrics=CollectorRegistry())
    ctx.power = FakePower(config)
    monitor = Monitor()
    ctx.monitor = monitor
    viewer = await grant(ctx, "viewer")
    app = create_app(ctx)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
        ) as client:
            yield client, viewer, ctx, monitor, Clock()
    finally:
        await store.close()


def healing(ctx: AppContext, clock: Clock) -> HealingService:
    assert ctx.config.healing is not None
    return HealingService(
        ctx.config,
        ctx.config.healing,
        ctx.store,
        power=ctx.power,
        deploy=None,
        monitor=ctx.monitor,
        registry=CollectorRegistry(),
        clock=clock,
    )


async def tick(service: HealingService, clock: Clock, at: float) -> list[object]:
    clock.now = at
    return list(await service.tick())


async def test_every_step_is_on_the_node_page_and_a_restart_goes_on_where_it_was(
    rig: Rig,
) -> None:
    client, viewer, ctx, monitor, clock = rig
    t0 = clock.now
    monitor.alerting.down = {"pi2"}
    first = healing(ctx, clock)
    await tick(first, clock, t0)
    assert await tick(first, clock, t0 + 5 * MIN) == [Cycle("pi2", 1, 2)]
    power = ctx.power
    assert isinstance(power, FakePower)
    assert power.calls == [("cycle", ["pi2"], "healing")]

    # The manager restarts here: a new service reads its ladders back from the audit log.
    second = healing(ctx, clock)
    assert await tick(second, clock, t0 + 7 * MIN) == []  # the first cycle's wait is not over
    assert await tick(second, clock, t0 + 8 * MIN) == [Cycle("pi2", 2, 2)]  # not cycle 1 again
    actions = await tick(second, clock, t0 + 11 * MIN)
    assert actions == [
        Quarantine("pi2", "down after 2 power cycles; the policy does not reinstall")
    ]
    assert (await ctx.store.nodes.get("pi2")).state == NodeState.BROKEN

    page = (await client.get("/nodes/pi2", headers=viewer)).text
    audit = re.search(r'<table class="history" id="audit">.*?</table>', page, re.S)
    assert audit is not None
    text = re.sub(r"<[^>]+>", " ", audit.group(0))
    for line in (
        "healing.down",
        "down (policy lab); acting after 5.0 min",
        "healing.cycle",
        "power cycle 1 of 2",
        "power cycle 2 of 2",
        "healing.quarantine",
        "broken: down after 2 power cycles; the policy does not reinstall",
    ):
        assert line in text, line
    assert text.count("healing.cycle") == 2
    assert "broken" in re.sub(r"<[^>]+>", " ", page.split('id="audit"')[0])  # its state

    # An operator makes it ready again: healing watches it again, and says so.
    await ctx.store.nodes.set_state("pi2", NodeState.READY)
    monitor.alerting.down = set()
    await tick(second, clock, t0 + 12 * MIN)
    page = (await client.get("/nodes/pi2", headers=viewer)).text
    assert "no longer broken: watched again" in page


async def test_a_node_powered_off_on_purpose_is_left_alone(rig: Rig) -> None:
    _, _, ctx, monitor, clock = rig
    t0 = clock.now
    await ctx.store.nodes.set_power_state("pi3", PowerState.OFF)  # an operator's power off
    monitor.alerting.down = {"pi3", "elsewhere"}  # elsewhere: a node label of no node here
    service = healing(ctx, clock)
    assert await tick(service, clock, t0) == []
    assert await tick(service, clock, t0 + 60 * MIN) == []
    power = ctx.power
    assert isinstance(power, FakePower)
    assert power.calls == []
