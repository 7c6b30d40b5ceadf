"""Self-healing against the simulator: the virtual PoE switch (a real SNMP agent), virtual Pis
with real agents scraped by the real collector, the real alert evaluator (NodeDown) and deploy
engine, in a manager; the healing service on a fake clock, ticked by the test.

The wall clock only decides when the collector and the evaluator see what the test did (waited
for with a deadline); the ladder's own waits (down_for, cycle_wait, reinstall_wait) pass when
the test moves the fake clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from piman.access.reservations_service import ReservationService
from piman.config import Config
from piman.config.healing import HealingSettings
from piman.context import AppContext
from piman.fleet.lifecycle import NodeState
from piman.fleet.records import EnvironmentRecord
from piman.inventory.healing import Cycle, Hold, Noticed, Quarantine, Reinstall, Unhold
from piman.inventory.healing_service import HealingService
from piman.manager import Manager
from piman.sim.agents import SimulatedAgents
from piman.sim.fleet import build_demo_config, free_port
from piman.sim.image import DEMO_ENVIRONMENT, stand_in_installer_tree
from piman.sim.pi import VirtualPi
from piman.sim.switch import run_switches

MIN = 60.0
POLICY = {
    "name": "racks",
    "nodes": ["all"],
    "down_for": "5m",
    "cycles": 1,
    "cycle_wait": "3m",
    "reinstall": True,
    "reinstall_wait": "30m",
}


class FakeClock:
    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now


@dataclass
class Lab:
    ctx: AppContext
    pis: dict[str, VirtualPi]
    agents: SimulatedAgents
    clock: FakeClock

    def healing(self, **settings: Any) -> HealingService:
        assert self.ctx.config.healing is not None
        merged = self.ctx.config.healing.model_dump() | settings
        return HealingService(
            self.ctx.config,
            HealingSettings.model_validate(merged),
            self.ctx.store,
            power=self.ctx.power,
            deploy=self.ctx.deploy,
            monitor=self.ctx.monitor,
            registry=self.ctx.metrics,
            clock=self.clock,
        )

    async def kill_agent(self, name: str) -> None:
        """The Pi powers up as before, but its agent never answers again (a broken OS)."""
        pi = self.pis[name]
        self.agents.pis.remove(pi)
        await self.agents.servers[name].close()

    def firing(self, rule: str) -> dict[str, dict[str, str]]:
        assert self.ctx.monitor is not None
        assert self.ctx.monitor.alerting is not None
        return {
            a.labels.get("node", a.fingerprint): a.labels
            for a in self.ctx.monitor.alerting.active()
            if a.rule == rule and a.state == "firing"
        }

    async def reservable(self) -> list[Any]:
        """What booking may choose from (the reservations service's own view of the nodes)."""
        service = ReservationService(self.ctx.config, self.ctx.store)
        return [a for a in await service.availability() if a.reservable]

    async def audit(self, target: str) -> list[tuple[str, str, str]]:
        rows = await self.ctx.store.audit.list(target=target, limit=100)
        return [(a.actor, a.action, a.result) for a in reversed(rows)]


async def until(
    what: str, check: Callable[[], Awaitable[bool] | bool], within: float = 90.0
) -> None:
    """Wait for ``check`` (the collector and evaluator run on the wall clock)."""
    try:
        async with asyncio.timeout(within):
            while True:
                result = check()
                if not isinstance(result, bool):
                    result = await result
                if result:
                    return
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"not within {within:g} s: {what}") from None


@contextlib.asynccontextmanager
async def lab(tmp_path: Path, nodes: int, **healing: Any) -> AsyncIterator[Lab]:
    data, pis = build_demo_config(tmp_path, nodes, free_port())
    del data["dhcp"], data["tftp"]
    data["monitoring"] = {
        "scrape_interval": "1s",
        "group_wait": "1s",
        "config": {"timeout": "3s"},  # NodeDown: 3 s without an answer
    }
    data["deploy"]["timeouts"] = {"power_off": "1m", "netboot_installer": "1m"}
    data["healing"] = {"max_concurrent": 2, "policies": [POLICY], **healing}
    config = Config.model_validate(data)
    stand_in_installer_tree(tmp_path)
    manager = Manager(config, capabilities=("inventory", "power", "deploy", "monitor"))
    for pi in pis:
        pi.set_power(True)
    agents = SimulatedAgents(pis, boot_seconds=0.3, poll=0.1)
    async with asyncio.TaskGroup() as group:
        run = group.create_task(manager.run())
        sims = [
            group.create_task(run_switches(config, pis)),
            group.create_task(agents.run()),
        ]
        try:
            await asyncio.wait_for(manager.ready.wait(), 90)
            ctx = manager.ctx
            assert ctx is not None
            assert ctx.monitor is not None
            await ctx.store.environments.add(
                EnvironmentRecord(
                    name=DEMO_ENVIRONMENT, source="demo-os.img", source_sha256="0" * 64,
                    kind="img", image_size=8 << 20, image_sha256="0" * 64,
                    mapped_bytes=8 << 20, table="mbr", os_family="debian",
                    customisation="cloudinit", boot_files=("config.txt",), cmdline=None,
                    description="stand-in", created_at=datetime.now(UTC), created_by="test",
                )
            )  # fmt: skip
            the_lab = Lab(ctx, {pi.name: pi for pi in pis}, agents, FakeClock())
            await until("every agent scraped", lambda: not the_lab.firing("NodeDown"))
            await until(
                "every node up",
                lambda: all(
                    (s := ctx.monitor.snapshot(p.name)) is not None  # type: ignore[union-attr]
                    and s.up
                    for p in pis
                ),
            )
            yield the_lab
        finally:
            manager.stop()
            await asyncio.wait_for(run, 20)
            for task in sims:
                task.cancel()


async def tick_at(lab: Lab, healing: HealingService, at: float, nodes: Sequence[str]) -> list[Any]:
    """One healing tick at ``at``: its actions on ``nodes`` (those the test made fail; a healthy
    agent that misses scrapes on a loaded machine is not what is tested) and its holds."""
    lab.clock.now = at
    return [
        a
        for a in await healing.tick()
        if isinstance(a, Hold | Unhold) or getattr(a, "node", None) in nodes
    ]


async def test_a_dead_node_is_cycled_then_reinstalled_then_quarantined(tmp_path: Path) -> None:
    async with lab(tmp_path, 4) as the:
        healing = the.healing()
        t0 = the.clock.now
        name = "rack1-pi01"  # a Pi 3B+ (the stand-in installer cannot do a Pi 5)
        pi = the.pis[name]
        await the.kill_agent(name)
        await until("NodeDown fires", lambda: name in the.firing("NodeDown"))

        assert await tick_at(the, healing, t0, [name]) == [Noticed(name, "racks")]  # down since t0
        assert ("healing", "healing.down", "ok") in await the.audit(name)
        assert await tick_at(the, healing, t0 + 4 * MIN, [name]) == []  # not down for 5 min yet
        boots = pi.boots

        # 5 min down: a power cycle, on the switch.
        actions = await tick_at(the, healing, t0 + 5 * MIN, [name])
        assert actions == [Cycle(name, 1, 1)]
        assert pi.boots == boots + 1  # the port went off, then on
        assert pi.powered.is_set()
        assert ("healing", "healing.cycle", "ok") in await the.audit(name)
        power = await the.ctx.store.audit.list(target=f"{name} (rack1:1)", limit=10)
        assert [(a.actor, a.action) for a in power][:1] == [("healing", "power.cycle")]

        # Still down after the cycle's wait: the reinstall starts, with its environment.
        await until("NodeDown still fires", lambda: name in the.firing("NodeDown"))
        actions = await tick_at(the, healing, t0 + 8 * MIN, [name])
        assert actions == [Reinstall(name)]
        assert the.ctx.deploy is not None
        [deployment] = await the.ctx.deploy.deployments(node=name)
        assert (deployment.created_by, deployment.environment) == ("healing", DEMO_ENVIRONMENT)

        # Still failing: broken, out of scrapes and reservations, an alert says so.
        actions = await tick_at(the, healing, t0 + 40 * MIN, [name])
        assert [a for a in actions if isinstance(a, Quarantine)], actions
        node = await the.ctx.store.nodes.get(name)
        assert node.state == NodeState.BROKEN
        [deployment] = await the.ctx.deploy.deployments(node=name)
        assert not deployment.active  # healing's deployment was cancelled
        await until("NodeQuarantined fires", lambda: name in the.firing("NodeQuarantined"))
        scraped = await the.ctx.monitor.scraper.targets()  # type: ignore[union-attr]
        assert name not in {t.node for t in scraped}
        assert len(scraped) == 3
        assert name not in {n.name for n in await the.reservable()}
        steps = [a for (actor, a, _r) in await the.audit(name) if actor == "healing"]
        assert [s for s in steps if s.startswith("healing.")] == [
            "healing.down",
            "healing.cycle",
            "healing.reinstall",
            "healing.quarantine",
        ]
        # Left alone from now on, while broken.
        assert await tick_at(the, healing, t0 + 90 * MIN, [name]) == []


async def test_max_concurrent_1_heals_one_node_at_a_time(tmp_path: Path) -> None:
    async with lab(tmp_path, 8, max_fraction=0.8) as the:
        healing = the.healing(max_concurrent=1)
        t0 = the.clock.now
        dead = ["rack1-pi01", "rack1-pi02", "rack1-pi03"]  # 3 of rack1's 4: under 80 %
        for name in dead:
            await the.kill_agent(name)
        await until(
            "NodeDown fires for all three", lambda: set(dead) <= set(the.firing("NodeDown"))
        )
        await tick_at(the, healing, t0, dead)
        boots = {n: the.pis[n].boots for n in dead}

        actions = await tick_at(the, healing, t0 + 5 * MIN, dead)
        cycled = [a.node for a in actions if isinstance(a, Cycle)]
        assert len(cycled) == 1
        assert healing.healer.healing() == cycled
        changed = [n for n in dead if the.pis[n].boots != boots[n]]
        assert changed == cycled  # only that port was switched

        # One minute later: the others still wait for the slot.
        assert await tick_at(the, healing, t0 + 6 * MIN, dead) == []
        # The first is reinstalled (it keeps the slot); still nobody else.
        actions = await tick_at(the, healing, t0 + 8 * MIN, dead)
        assert actions == [Reinstall(cycled[0])]
        # It ends broken: the slot goes to the next one down.
        actions = await tick_at(the, healing, t0 + 40 * MIN, dead)
        assert [type(a) for a in actions] == [Quarantine, Cycle]
        second = actions[1].node
        assert second != cycled[0]
        assert healing.healer.healing() == [second]


async def test_a_whole_switch_down_is_not_healed_an_alert_says_so(tmp_path: Path) -> None:
    async with lab(tmp_path, 6) as the:
        healing = the.healing()
        t0 = the.clock.now
        rack1 = sorted(n for n in the.pis if n.startswith("rack1-"))
        assert len(rack1) == 3
        for name in rack1:  # the switch's uplink died: every Pi on it is silent
            await the.kill_agent(name)
        await until("NodeDown for all of rack1", lambda: set(rack1) <= set(the.firing("NodeDown")))
        boots = {n: the.pis[n].boots for n in rack1}

        actions = await tick_at(the, healing, t0, rack1)
        assert [a for a in actions if isinstance(a, Hold)] == [
            Hold("racks", "switch:rack1", 3, 3, tuple(rack1))
        ]
        for minutes in (5, 10, 60):
            actions = await tick_at(the, healing, t0 + minutes * MIN, rack1)
            assert not [a for a in actions if isinstance(a, Cycle | Reinstall | Quarantine)]
        assert {n: the.pis[n].boots for n in rack1} == boots  # no port was touched
        assert the.ctx.deploy is not None
        assert await the.ctx.deploy.deployments() == []
        await until("HealingHeld fires", lambda: bool(the.firing("HealingHeld")))
        [labels] = the.firing("HealingHeld").values()
        assert (labels["policy"], labels["scope"]) == ("racks", "switch:rack1")
        held = await the.ctx.store.audit.list(target="healing/racks")
        assert [(a.actor, a.action) for a in held] == [("healing", "healing.hold")]
