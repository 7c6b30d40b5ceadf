"""The self-healing service: the ladder of :mod:`piman.inventory.healing`, carried out.

Theory of operation
-------------------
Every ``healing.interval`` (:meth:`HealingService.tick`, on an injectable clock) the service

1. builds a :class:`~piman.inventory.healing.NodeView` of every node a policy covers (the first
   policy that names it: node names, ``switch:port``, ``all``, switch names, or the inventory
   groups of :func:`piman.inventory.groups.select`, tags among them):

   - *down*: a firing alert among ``healing.alerts`` (``NodeDown`` by default) carries its
     ``node`` label. ``NodeDown`` is ``up == 0`` for agents and for nodes watched over SSH
     (``monitor: ssh``) alike, so "unreachable over SSH" is the same signal for those;
   - *left alone*: powered off on purpose (power state ``off``), a node still ``new``, or
     deploying for someone else than healing;
   - *broken*: its lifecycle state in the store;
   - *no reinstall*: why it may not be reinstalled (no ``deploy:``, no environment: neither the
     node's own nor ``deploy.default_environment``; a user holds it in an active reservation
     and the policy lacks ``reinstall_reserved``);

2. asks the pure :class:`~piman.inventory.healing.Healer` what to do, and does it: power cycles
   through the power controller, reinstalls through the deploy engine, quarantine by moving the
   node to ``broken`` in the store (after cancelling healing's own deployment, if one runs).
   ``broken`` takes the node out of reservations (it is not reservable) and out of scrapes
   (the collector skips broken nodes);

3. writes every step to the audit log with actor ``healing`` and the node as target (so the
   node page lists them), and sets the manager's gauges ``piman_node_quarantined{node}`` (every
   broken node under a policy) and ``piman_healing_held{policy,scope}`` (the mass-failure
   guard), which the alert rules ``NodeQuarantined`` and ``HealingHeld`` watch.

The ladders live in memory and in the audit log: on its first tick the service reads its own
audit lines back (:func:`~piman.inventory.healing.replay`, the last :data:`RESUME_LINES` of each
kind), so a manager restarted mid-heal goes on where it was (a node that was cycled once and is
still down gets its second cycle when that cycle's wait is over, not a first one after
``down_for``). The audit lines carry the service's clock. ``broken`` is the store's, and
healing's deployments are the deploy engine's (they resume by themselves).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Gauge

from piman.config.healing import HealingSettings
from piman.config.models import Config
from piman.context import AppContext, Built, DeployHandle, MonitorHandle, PowerHandle, Service
from piman.errors import NotFoundError, PimanError, StoreError
from piman.fleet.lifecycle import IllegalTransition, NodeState, PowerState
from piman.fleet.ports import Repositories
from piman.fleet.records import DeploymentRecord
from piman.inventory.groups import InventoryHost, select
from piman.inventory.healing import (
    Action,
    Cycle,
    Healer,
    Hold,
    NodeView,
    Noticed,
    Quarantine,
    Recovered,
    Reinstall,
    Released,
    Step,
    Unhold,
    replay,
)
from piman.inventory.hosts import merge

__all__ = ["ACTOR", "RESUME_LINES", "HealingService", "build"]

logger = logging.getLogger(__name__)

ACTOR = "healing"
RESUME_LINES = 5000  # audit lines of each ladder action read back at start
LADDER = (
    "healing.down",
    "healing.cycle",
    "healing.reinstall",
    "healing.recovered",
    "healing.released",
    "healing.quarantine",
)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


class HealingService:
    """Runs the ladder every ``interval`` (module doc). ``tick()`` is one look, for tests."""

    name = "healing"

    def __init__(
        self,
        config: Config,
        settings: HealingSettings,
        store: Repositories,
        *,
        power: PowerHandle | None,
        deploy: DeployHandle | None,
        monitor: MonitorHandle | None,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.settings = settings
        self.store = store
        self.power = power
        self.deploy = deploy
        self.monitor = monitor
        self.clock = clock
        self.healer = Healer(settings)
        self._warned: set[str] = set()
        registry = registry if registry is not None else CollectorRegistry()
        self.quarantined = Gauge(
            "piman_node_quarantined",
            "1 for each node under a healing policy that is broken (quarantined).",
            ["node"],
            registry=registry,
        )
        self.held = Gauge(
            "piman_healing_held",
            "Nodes down in a healing policy's group or switch that is held back as a mass "
            "failure (nothing is healed there meanwhile).",
            ["policy", "scope"],
            registry=registry,
        )
        self.steps = Gauge(
            "piman_healing_nodes", "Nodes on each step of the healing ladder.", ["step"],
            registry=registry,
        )  # fmt: skip
        self.actions = Counter(
            "piman_healing_actions", "Healing actions taken, by kind.", ["action"],
            registry=registry,
        )  # fmt: skip
        self._quarantined: set[str] = set()
        self._failed_deploys: set[str] = set()
        self._resumed = False

    # -- the loop -------------------------------------------------------------------------

    async def serve(self) -> None:
        while True:
            try:
                await self.tick()
            except StoreError as err:
                logger.warning("healing: the store failed: %s", err)
            await asyncio.sleep(self.settings.interval)

    async def tick(self) -> list[Action]:
        """One look at the fleet: the views, the ladder's decisions, carried out; returns them."""
        if not self._resumed:
            await self.resume()
        now = self.clock()
        views = await self.views()
        before = [n for n in self.healer.healing() if self.healer.step(n) is Step.REINSTALLING]
        actions = self.healer.tick(views, now)
        for name in before:  # a reinstall whose deployment failed need not be waited for
            if name in self._failed_deploys:
                actions += self.healer.reinstall_failed(name, "its deployment failed", now)
        done = list(actions)
        pending = list(actions)
        while pending:
            more = await self._carry_out(pending, now)
            done += more
            pending = more
        self._gauges(views)
        return done

    async def resume(self) -> None:
        """Read the ladders back from the audit log (module doc); once, before the first tick."""
        # Lines of the same time in ladder order (a reinstall, then the quarantine of a
        # reinstall that could not start).
        lines = []
        for rank, action in enumerate(LADDER):
            for a in await self.store.audit.list(action=action, limit=RESUME_LINES):
                if a.actor == ACTOR:
                    lines.append((a.at.timestamp(), rank, a.target, a.action))
        lines.sort()
        resumed = replay((target, action, at) for at, _, target, action in lines)
        self.healer.resume(resumed)
        self._resumed = True
        if resumed:
            logger.info(
                "healing: resumed %d ladder(s): %s",
                len(resumed),
                ", ".join(f"{n} {e.step}" for n, e in sorted(resumed.items())[:10]),
            )

    # -- what the service sees ------------------------------------------------------------

    def _members(self, hosts: Sequence[InventoryHost]) -> dict[str, str]:
        """Node → the first policy that covers it."""
        switches = {s.name for s in self.config.switches}
        out: dict[str, str] = {}
        for policy in self.settings.policies:
            for spec in policy.nodes:
                if spec in switches:
                    found = [h for h in hosts if h.switch == spec]
                else:
                    try:
                        found = select(hosts, [spec])
                    except NotFoundError as err:
                        key = f"{policy.name}:{spec}"
                        if key not in self._warned:
                            self._warned.add(key)
                            logger.warning("healing policy %s: %s", policy.name, err)
                        continue
                for host in found:
                    out.setdefault(host.name, policy.name)
        return out

    def _down(self) -> set[str]:
        alerting = self.monitor.alerting if self.monitor is not None else None
        if alerting is None:
            return set()
        wanted = set(self.settings.alerts)
        return {
            a.labels["node"]
            for a in alerting.active()
            if a.state == "firing" and a.rule in wanted and "node" in a.labels
        }

    async def views(self) -> list[NodeView]:
        """Every node under a policy, as the ladder needs it."""
        nodes = await self.store.nodes.list()
        live = await self.store.reservations.live()
        hosts = merge(self.config, nodes, live, ())
        members = self._members(hosts)
        records = {n.name: n for n in nodes}
        running: dict[str, DeploymentRecord] = {}
        if self.deploy is not None:
            for d in await self.deploy.deployments(active=True, limit=10_000):
                running.setdefault(d.node, d)
        down = self._down()
        self._failed_deploys = {
            n.name
            for n in nodes
            if n.state == NodeState.FAILED_DEPLOYMENT and n.name not in running
        }
        policies = {p.name: p for p in self.settings.policies}
        default_env = self.config.deploy.default_environment if self.config.deploy else None
        out = []
        for host in hosts:
            policy = members.get(host.name)
            node = records.get(host.name)
            if policy is None or node is None:
                continue
            leave_alone = None
            deployment = running.get(host.name)
            if node.state == NodeState.NEW:
                leave_alone = "a new node (not yet accepted)"
            elif deployment is not None and deployment.created_by != ACTOR:
                leave_alone = f"deploying for {deployment.created_by}"
            elif node.power_state == PowerState.OFF and deployment is None:
                leave_alone = "powered off"
            no_reinstall = None
            env = self._environment(host.name) or default_env
            if self.deploy is None:
                no_reinstall = "this manager does not deploy (no deploy: section)"
            elif env is None:
                no_reinstall = "it has no environment (nor deploy.default_environment)"
            elif host.owner is not None and not policies[policy].reinstall_reserved:
                no_reinstall = f"{host.owner} holds it (active reservation)"
            out.append(
                NodeView(
                    host.name,
                    policy,
                    switch=host.switch,
                    down=host.name in down,
                    broken=node.state == NodeState.BROKEN,
                    leave_alone=leave_alone,
                    no_reinstall=no_reinstall,
                )
            )
        return out

    def _environment(self, name: str) -> str | None:
        declared = self.config.node(name)
        return declared.environment if declared is not None else None

    # -- what the service does ------------------------------------------------------------

    async def _carry_out(self, actions: Sequence[Action], now: float) -> list[Action]:
        """Do ``actions`` (power cycles side by side); the actions that follow from them."""
        cycles = [a for a in actions if isinstance(a, Cycle)]
        more: list[Action] = []
        for action in actions:
            self.actions.labels(type(action).__name__.lower()).inc()
            if isinstance(action, Noticed):
                policy = self.healer.policies[action.policy]
                await self._audit(
                    action.node, "healing.down", "ok",
                    f"down (policy {action.policy}); acting after {_minutes(policy.down_for)}",
                )  # fmt: skip
            elif isinstance(action, Reinstall):
                more += await self._reinstall(action.node, now)
            elif isinstance(action, Quarantine):
                await self._quarantine(action.node, action.reason)
            elif isinstance(action, Recovered):
                await self._audit(
                    action.node, "healing.recovered", "ok",
                    f"up again after {_minutes(action.down_for)} down (was {action.step})",
                )  # fmt: skip
            elif isinstance(action, Released):
                await self._audit(
                    action.node, "healing.released", "ok", "no longer broken: watched again"
                )
            elif isinstance(action, Hold):
                logger.warning(
                    "healing policy %s: %d of %d nodes down (%s): holding, nothing is healed",
                    action.policy, action.down, action.total, action.scope,
                )  # fmt: skip
                await self._audit(
                    f"healing/{action.policy}", "healing.hold", "ok",
                    f"{action.down} of {action.total} nodes down at once ({action.scope}: "
                    f"{', '.join(action.nodes)}); nothing is cycled or reinstalled there",
                )  # fmt: skip
            elif isinstance(action, Unhold):
                await self._audit(
                    f"healing/{action.policy}", "healing.unhold", "ok",
                    f"{action.scope}: no longer too many nodes down",
                )  # fmt: skip
        await asyncio.gather(*(self._cycle(c) for c in cycles))
        return more

    async def _cycle(self, action: Cycle) -> None:
        what = f"power cycle {action.n} of {action.of}"
        if self.power is None:
            await self._audit(action.node, "healing.cycle", "skipped", f"{what}: no power")
            return
        try:
            targets = self.power.resolve([action.node])
            results = await self.power.run("cycle", targets, actor=ACTOR)
        except (PimanError, ValueError) as err:
            await self._audit(action.node, "healing.cycle", "failed", f"{what}: {err}")
            return
        failed = [r.error or "failed" for r in results if not r.ok]
        if failed:
            await self._audit(action.node, "healing.cycle", "failed", f"{what}: {failed[0]}")
        else:
            await self._audit(action.node, "healing.cycle", "ok", what)

    async def _reinstall(self, node: str, now: float) -> list[Action]:
        if self.deploy is None:  # the view said so: the ladder quarantined instead
            return self.healer.reinstall_failed(node, "no deploy: section", now)
        env = self._environment(node)  # None: the deploy engine's default
        try:
            [record] = await self.deploy.start([node], env, actor=ACTOR)
        except (PimanError, ValueError) as err:
            await self._audit(node, "healing.reinstall", "failed", str(err))
            return self.healer.reinstall_failed(node, str(err), now)
        await self._audit(
            node, "healing.reinstall", "ok",
            f"reinstalling {record.environment} (deployment {record.id})",
        )  # fmt: skip
        return []

    async def _quarantine(self, node: str, reason: str) -> None:
        if self.deploy is not None:
            for d in await self.deploy.deployments(node=node, active=True):
                if d.created_by == ACTOR:
                    try:
                        await self.deploy.cancel(d.id, actor=ACTOR)
                    except (PimanError, ValueError) as err:
                        logger.warning("[node=%s] healing: cancel %d: %s", node, d.id, err)
        try:
            await self.store.nodes.set_state(node, NodeState.BROKEN)
        except (IllegalTransition, NotFoundError) as err:
            await self._audit(node, "healing.quarantine", "failed", f"{reason}; {err}")
            return
        logger.warning("[node=%s] healing: quarantined (broken): %s", node, reason)
        await self._audit(
            node, "healing.quarantine", "ok",
            f"broken: {reason}; out of reservations and scrapes until an operator makes it "
            "ready",
        )  # fmt: skip

    async def _audit(self, target: str, action: str, result: str, detail: str) -> None:
        try:
            at = datetime.fromtimestamp(self.clock(), UTC)
            await self.store.audit.add(ACTOR, action, target, result, detail, at=at)
        except StoreError as err:
            logger.warning("[node=%s] healing: audit log not written: %s", target, err)

    def _gauges(self, views: Sequence[NodeView]) -> None:
        broken = {v.name for v in views if v.broken}
        broken |= {n for n, e in self.healer.entries.items() if e.step is Step.BROKEN}
        for name in self._quarantined - broken:
            self.quarantined.remove(name)
        for name in broken:
            self.quarantined.labels(name).set(1)
        self._quarantined = broken
        self.held.clear()
        for hold in self.healer.held.values():
            self.held.labels(hold.policy, hold.scope).set(hold.down)
        counts = dict.fromkeys(Step, 0)
        for entry in self.healer.entries.values():
            counts[entry.step] += 1
        for step, count in counts.items():
            self.steps.labels(step.value).set(count)


def build(ctx: AppContext) -> Built[HealingService] | None:
    """The service when ``healing:`` is present and enabled (built after power, deploy and
    monitor, whose handles it uses)."""
    settings = ctx.config.healing
    if settings is None or not settings.enabled or not settings.policies:
        return None
    service = HealingService(
        ctx.config,
        settings,
        ctx.store,
        power=ctx.power,
        deploy=ctx.deploy,
        monitor=ctx.monitor,
        registry=ctx.metrics,
    )
    services: tuple[Service, ...] = (service,)
    return Built(service, services)
