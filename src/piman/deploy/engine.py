"""The deploy engine: carries out what :mod:`piman.deploy.machine` decides, persistently.

Theory of operation
-------------------
Every change of a deployment goes through :meth:`Engine.apply` (one at a time per deployment):
read the record, :func:`~piman.deploy.machine.advance` it with the event and ``now``, write the
new position (``expect_state``: a writer that lost a race re-reads) and an event row per log line,
then carry out the actions. So a ``kill -9`` between two events loses nothing: the next engine
finds the deployment where the last write left it, with its deadline.

The service loop (:meth:`Engine.serve`) claims the active deployments it drives (a lease in the
store, renewed every loop; two managers sharing a database never drive the same one) and each
second: starts new deployments while fewer than ``deploy.max_parallel`` run, turns passed
deadlines into ``Timeout`` events, and asks the agent of nodes in ``agent_up``. After a restart
it issues new one-time tokens for deployments still waiting for a hello (the old ones lived in
the dead process's memory only: the store keeps hashes).

Power actions are batched: what is asked within :data:`POWER_BATCH` seconds goes to the power
controller as one command per action, so its per-switch staggering applies to a rack being
reinstalled at once. A switch with driver ``manual`` is not driven: the engine logs the
instruction for a person ("power-cycle rack1-07 now") and waits for the hello.

Boot choices (installer or local tree), the current one-time tokens and the first-boot command
line live in memory for the boot tree (the TFTP path never waits for the database); they are
rebuilt from the store at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter, Histogram

from piman.config.models import Config
from piman.context import PowerHandle, SshHandle
from piman.deploy import machine as m
from piman.deploy.customise import FIRSTRUN_WORDS
from piman.deploy.environments import EnvironmentLibrary
from piman.deploy.images import extract_boot_files, inspect
from piman.deploy.nodeapi import digest, new_secret
from piman.errors import ConflictError, NotFoundError, PimanError
from piman.fleet.lifecycle import NodeState
from piman.fleet.ports import Repositories
from piman.fleet.records import DeploymentRecord

__all__ = ["LEASE", "POWER_BATCH", "Engine"]

logger = logging.getLogger(__name__)

LEASE = 30.0  # seconds a claim lasts without renewal
# After a deployment ends well: when to try to learn the node's new SSH host key (its sshd may
# still be starting when the agent answers, or the node has no agent to wait for).
HOST_KEY_DELAYS = (0.0, 5.0, 15.0, 30.0, 60.0)
POWER_BATCH = 0.3
TICK = 1.0
AGENT_EVERY = 5.0
BOOT_REPEAT = 5.0  # seconds within which a second config.txt is the same boot


def utcnow() -> datetime:
    return datetime.now(UTC)


class Engine:
    """Drives deployments (the ``deploy`` service)."""

    name = "deploy"

    def __init__(
        self,
        config: Config,
        store: Repositories,
        library: EnvironmentLibrary,
        power: PowerHandle | None,
        *,
        registry: CollectorRegistry | None = None,
        owner: str | None = None,
        clock: Callable[[], datetime] = utcnow,
        ssh: SshHandle | None = None,
        learn_delays: tuple[float, ...] = HOST_KEY_DELAYS,
    ) -> None:
        assert config.deploy is not None
        self.ssh = ssh
        self.learn_delays = learn_delays
        self.config = config
        self.settings = config.deploy
        self.store = store
        self.library = library
        self.power = power
        self.clock = clock
        # Stable across restarts: a manager that comes back takes its deployments at once;
        # another manager (another host or data directory) waits for their leases to pass.
        self.owner = owner or f"{socket.gethostname()}:{config.manager.data_dir}"[:128]
        self.tokens: dict[int, str] = {}
        self.ended: set[int] = set()  # finished here: their image stream is closed
        self.boot: dict[str, tuple[int, str]] = {}  # node → (deployment, installer | local)
        self.firstboot: dict[str, str] = {}  # node → cmdline.txt while it boots for the first time
        self.local_boots: dict[str, tuple[int, float]] = {}  # node → (boots counted, when)
        self._locks: dict[int, asyncio.Lock] = {}
        self._changed = asyncio.Event()
        self._power_queue: dict[str, list[tuple[int, str]]] = {}
        self._power_wake = asyncio.Event()
        self._agent_checked: dict[int, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        reg = registry if registry is not None else CollectorRegistry()
        self.finished = Counter(
            "piman_deployments", "Deployments finished, by result.", ["result"], registry=reg
        )
        self.streamed = Counter(
            "piman_deploy_streamed_bytes",
            "Image bytes sent to installers.",
            registry=reg,
        )
        self.step_seconds = Histogram(
            "piman_deploy_step_seconds",
            "How long each deployment step took.",
            ["step"],
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 3600),
            registry=reg,
        )

    # -- what the rest of the manager asks -------------------------------------------------------

    def settings_for(self, record: DeploymentRecord) -> m.Settings:
        timeouts = {step: self.settings.timeout(step) for step in self._steps()}
        agent = bool(record.options.get("expect_agent", True))
        return m.Settings(timeouts, self.settings.retries, expect_agent=agent)

    @staticmethod
    def _steps() -> tuple[str, ...]:
        from piman.config.deploy import STEPS

        return STEPS

    async def wait_change(self, within: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), within)

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def apply(self, deployment_id: int, event: m.Event) -> DeploymentRecord:
        """Advance one deployment with ``event`` now, persist, then act (see the module doc)."""
        lock = self._locks.setdefault(deployment_id, asyncio.Lock())
        async with lock:
            record = await self.store.deployments.get(deployment_id)
            now = self.clock()
            pos = m.Position(m.State(record.state), record.attempt, record.deadline_at)
            new, actions = m.advance(pos, event, now, self.settings_for(record))
            if new == pos and not actions:
                return record
            changes: dict[str, object] = {
                "state": new.state.value,
                "attempt": new.attempt,
                "deadline_at": new.deadline,
            }
            finish = next((a for a in actions if isinstance(a, m.Finish)), None)
            if finish is not None:
                changes |= {
                    "result": finish.result,
                    "reason": finish.reason or None,
                    "finished_at": now,
                    "token_digest": None,  # the session stays: its installer is told 410 Gone
                    "claimed_by": None,
                    "lease_until": None,
                }
            if any(isinstance(a, m.NewToken) for a in actions):
                token = new_secret()
                self.tokens[deployment_id] = token
                changes |= {
                    "token_digest": digest(token),
                    "token_expires_at": now + timedelta(seconds=self.settings.token_ttl),
                    "session_digest": None,
                }
            try:
                record = await self.store.deployments.update(
                    deployment_id, expect_state=record.state, **changes
                )
            except ConflictError:
                logger.info("[deploy=%d] moved on meanwhile; %s not applied", deployment_id, event)
                return await self.store.deployments.get(deployment_id)
            if new.state != pos.state:
                await self.store.deployments.add_event(
                    deployment_id, new.state.value, "transition",
                    f"{pos.state.value} → {new.state.value}", at=now,
                )  # fmt: skip
                if pos.state is not m.State.NEW:
                    self.step_seconds.labels(pos.state.value).observe(
                        max(0.0, (now - record.updated_at).total_seconds())
                    )
            await self._act(record, actions)
            self.notify()
            return record

    async def _act(self, record: DeploymentRecord, actions: list[m.Action]) -> None:
        tag = f"[deploy={record.id} node={record.node}]"
        for action in actions:
            if isinstance(action, m.Log):
                logger.info("%s %s", tag, action.message)
                await self.store.deployments.add_event(
                    record.id, record.state, "log", action.message
                )
            elif isinstance(action, m.SetBoot):
                self.boot[record.node] = (record.id, action.tree)
                if action.tree == "local":
                    await self._install_local_tree(record)
            elif isinstance(action, m.SetNodeState):
                await self._node_state(record, NodeState(action.state))
            elif isinstance(action, m.PowerOff | m.PowerOn | m.PowerCycle):
                verb = {m.PowerOff: "off", m.PowerOn: "on", m.PowerCycle: "cycle"}[type(action)]
                self._ask_power(record, verb)
            elif isinstance(action, m.Finish):
                self.finished.labels(action.result).inc()
                self.ended.add(record.id)
                self.tokens.pop(record.id, None)
                self._agent_checked.pop(record.id, None)
                if self.boot.get(record.node, (0, ""))[0] == record.id:
                    self.boot.pop(record.node, None)
                if action.result != "ok":
                    self.firstboot.pop(record.node, None)
                await self.store.audit.add(
                    f"deploy#{record.id}", "deploy.finish", record.node, action.result,
                    action.reason or record.environment,
                )  # fmt: skip
                if action.result == "ok" and self.ssh is not None:
                    self.spawn(self._learn_host_key(record))
            elif isinstance(action, m.NewToken):
                pass  # issued with the write above (only its hash is stored)

    async def _learn_host_key(self, record: DeploymentRecord) -> None:
        """The freshly installed node's SSH host key, learnt now (``ssh.host_keys: strict`` too):
        the manager put this system there, so its new key replaces the old one, and ``piman ssh``
        finds it known instead of refusing a changed key. Written to the deployment's log."""
        assert self.ssh is not None
        why = "no attempt"
        for delay in self.learn_delays:
            await asyncio.sleep(delay)
            try:
                [target] = await self.ssh.targets([record.node])
                fingerprint = await self.ssh.learn_host_key(target)
            except (PimanError, ValueError) as err:
                why = str(err)
                continue
            text = f"SSH host key learnt: {fingerprint}"
            await self.store.deployments.add_event(record.id, record.state, "log", text)
            return
        logger.warning(
            "[deploy=%d node=%s] SSH host key not learnt: %s", record.id, record.node, why
        )
        await self.store.deployments.add_event(
            record.id, record.state, "log", f"SSH host key not learnt: {why}"
        )

    async def _node_state(self, record: DeploymentRecord, state: NodeState) -> None:
        try:
            await self.store.nodes.set_state(record.node, state, force=True)
        except NotFoundError:
            logger.warning("[deploy=%d] node %s is gone from the store", record.id, record.node)

    # -- the node's own boot files -------------------------------------------------------------

    def node_tree(self, node: str) -> Path:
        return self.config.manager.data_dir / "nodes" / node / "boot"

    async def _install_local_tree(self, record: DeploymentRecord) -> None:
        """The environment's boot files become the node's own TFTP tree (always-netboot)."""
        env = await self.store.environments.get(record.environment)
        image = self.library.image(record.environment)
        tree = self.node_tree(record.node)
        fresh = tree.with_name("boot.new")

        def extract() -> None:
            shutil.rmtree(fresh, ignore_errors=True)
            fresh.mkdir(parents=True)
            extract_boot_files(image, inspect(image), fresh)
            old = tree.with_name("boot.old")
            shutil.rmtree(old, ignore_errors=True)
            if tree.exists():
                tree.rename(old)
            fresh.rename(tree)
            shutil.rmtree(old, ignore_errors=True)

        try:
            await asyncio.to_thread(extract)
        except (OSError, PimanError) as err:
            logger.warning("[deploy=%d] own boot tree not written: %s", record.id, err)
            return
        base = " ".join((env.cmdline or "").split())
        self.local_boots.pop(record.node, None)
        if env.customisation == "firstrun":
            self.firstboot[record.node] = f"{base} {FIRSTRUN_WORDS}\n"
        await self.store.deployments.add_event(
            record.id,
            record.state,
            "log",
            f"own boot files in {tree} ({len(env.boot_files)} files)",
        )

    def count_boot(self, node: str, name: str) -> bool:
        """Count a boot of the node's new system when ``name`` starts one (``config.txt``: every
        Pi reads it once per boot; ``boot.ipxe`` for PXE machines). A repeat within
        :data:`BOOT_REPEAT` seconds is the same boot (a TFTP retry). True when counted."""
        if name not in ("config.txt", "boot.ipxe"):
            return False
        count, at = self.local_boots.get(node, (0, -BOOT_REPEAT))
        now = time.monotonic()
        if now - at < BOOT_REPEAT:
            return False
        self.local_boots[node] = (count + 1, now)
        return True

    def reissue(self, deployment_id: int) -> str:
        """A new one-time token for an installer that booted again after its hello (its node
        restarted): kept in memory at once for the boot tree, its hash written meanwhile (the
        installer needs many seconds to boot before it says hello)."""
        token = new_secret()
        self.tokens[deployment_id] = token

        async def persist() -> None:
            with contextlib.suppress(NotFoundError):
                await self.store.deployments.update(
                    deployment_id,
                    token_digest=digest(token),
                    token_expires_at=self.clock() + timedelta(seconds=self.settings.token_ttl),
                )
                record = await self.store.deployments.get(deployment_id)
                await self.store.deployments.add_event(
                    deployment_id, record.state, "log",
                    "the node booted the installer again: a new one-time token",
                )  # fmt: skip

        self.spawn(persist())
        return token

    def boot_cmdline(self, node: str) -> str | None:
        """During the first boot of a node's new system, its ``cmdline.txt`` with the first-boot
        words (``firstrun.sh`` runs once, then reboots: the second boot gets the plain file)."""
        choice = self.boot.get(node)
        if choice is None or choice[1] != "local":
            return None
        if self.local_boots.get(node, (0, 0.0))[0] > 1:
            return None
        return self.firstboot.get(node)

    # -- power -------------------------------------------------------------------------------

    def _ask_power(self, record: DeploymentRecord, verb: str) -> None:
        node = self.config.node(record.node)
        switch = self.config.switch(node.switch) if node and node.switch else None
        if switch is not None and switch.driver == "manual":
            where = f"{switch.name}:{node.port}" if node and node.port else switch.name
            installing = m.State(record.state) in m.INSTALLER_STEPS
            text = f"power-cycle {record.node} ({where}) now: " + (
                "it netboots the installer" if installing else "it boots its new system"
            )
            self.spawn(self._manual(record.id, text))
            return
        self._power_queue.setdefault(verb, []).append((record.id, record.node))
        self._power_wake.set()

    async def _manual(self, deployment_id: int, text: str) -> None:
        record = await self.store.deployments.get(deployment_id)
        await self.store.deployments.add_event(deployment_id, record.state, "power", text)
        logger.warning("[deploy=%d] %s", deployment_id, text)
        await self.apply(deployment_id, m.PowerManual(text))

    async def _power_loop(self) -> None:
        while True:
            await self._power_wake.wait()
            await asyncio.sleep(POWER_BATCH)
            self._power_wake.clear()
            queue, self._power_queue = self._power_queue, {}
            for verb, items in queue.items():
                self.spawn(self._power(verb, items))

    async def _power(self, verb: str, items: list[tuple[int, str]]) -> None:
        results: dict[str, str | None] = {}
        if self.power is None:
            results = {node: "no power driver is configured" for _, node in items}
        else:
            try:
                targets = self.power.resolve(sorted({node for _, node in items}))
                outcomes = await self.power.run(verb, targets, actor="deploy")  # type: ignore[arg-type]
                results = {
                    o.target.node or "": (None if o.ok else o.error or "failed") for o in outcomes
                }
            except PimanError as err:
                results = {node: str(err) for _, node in items}
        for deployment_id, node in items:
            error = results.get(node, "no outcome")
            with contextlib.suppress(NotFoundError):
                record = await self.store.deployments.get(deployment_id)
                await self.store.deployments.add_event(
                    deployment_id, record.state, "power",
                    f"power {verb}: {'ok' if error is None else error}",
                )  # fmt: skip
            event: m.Event = m.PowerDone() if error is None else m.PowerFailed(error)
            await self.apply(deployment_id, event)

    # -- the loop ------------------------------------------------------------------------------

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("deploy: a task failed: %s", task.exception())

    async def serve(self) -> None:
        power = asyncio.create_task(self._power_loop())
        try:
            await self._restore()
            while True:
                try:
                    await self.tick()
                except PimanError as err:
                    logger.warning("deploy: tick failed: %s", err)
                await asyncio.sleep(TICK)
        finally:
            power.cancel()
            for task in list(self._tasks):
                task.cancel()

    async def _restore(self) -> None:
        """After a start: the boot choices and tokens of the deployments this manager drives."""
        now = self.clock()
        claimed = await self.store.deployments.claim(
            self.owner, now=now, lease_until=now + timedelta(seconds=LEASE), limit=10_000
        )
        for record in claimed:
            state = m.State(record.state)
            if state is m.State.NEW:
                continue
            tree = "installer" if state in m.INSTALLER_STEPS else "local"
            self.boot[record.node] = (record.id, tree)
            if state in (m.State.POWER_OFF, m.State.NETBOOT_INSTALLER, m.State.HELLO):
                token = new_secret()
                self.tokens[record.id] = token
                await self.store.deployments.update(
                    record.id,
                    token_digest=digest(token),
                    token_expires_at=now + timedelta(seconds=self.settings.token_ttl),
                )
            if tree == "local":
                env = await self.store.environments.get(record.environment)
                if env.customisation == "firstrun":
                    self.firstboot[record.node] = (
                        f"{' '.join((env.cmdline or '').split())} {FIRSTRUN_WORDS}\n"
                    )
            logger.info("[deploy=%d node=%s] resumed in %s", record.id, record.node, state)

    async def tick(self) -> None:
        now = self.clock()
        claimed = await self.store.deployments.claim(
            self.owner, now=now, lease_until=now + timedelta(seconds=LEASE), limit=10_000
        )
        running = sum(1 for r in claimed if r.state != m.State.NEW.value)
        for record in claimed:
            if record.state == m.State.NEW.value:
                if running < self.settings.max_parallel:
                    running += 1
                    await self.apply(record.id, m.Start())
                continue
            if record.deadline_at is not None and now >= record.deadline_at:
                await self.apply(record.id, m.Timeout())
            elif record.state in (m.State.BOOT_LOCAL.value, m.State.AGENT_UP.value) and (
                record.options.get("expect_agent", True)
            ):  # a node that boots from its own card fetches nothing: its agent tells
                last = self._agent_checked.get(record.id, 0.0)
                if time.monotonic() - last >= AGENT_EVERY:
                    self._agent_checked[record.id] = time.monotonic()
                    self.spawn(self._check_agent(record))

    async def _check_agent(self, record: DeploymentRecord) -> None:
        node = await self.store.nodes.get(record.node)
        monitoring = self.config.monitoring
        port = monitoring.agent_port if monitoring else 9110
        url = node.agent_url or (f"http://{node.ip}:{port}/metrics" if node.ip else None)
        if url is None:
            return
        try:
            async with httpx.AsyncClient(timeout=3.0) as client:
                response = await client.get(url)
        except httpx.HTTPError:
            return
        if response.status_code in (200, 401):  # 401: up, and wants the fleet's token
            await self.apply(record.id, m.AgentUp())
