"""The deploy capability, built for the manager: the :class:`~piman.context.DeployHandle`.

:class:`DeployService` checks what users ask (``start``, ``cancel``) and what installers say
(``hello``, ``progress``, ``result``, ``files``: docs/boot-protocol.md), then hands events to the
:class:`~piman.deploy.engine.Engine`. Installer calls are refused unless the secret is the
deployment's and the request comes from the node's address (``deploy.check_address``); a refusal
is one line for the installer's console and a WARNING here, never a hint of which part was
wrong to someone guessing.

Services: the engine, and the image stream (:class:`~piman.deploy.imageserver.ImageServer`).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from piman.config.models import Config
from piman.config.types import parse_host_port
from piman.context import AppContext, Built, DeployHandle, DeployOptions, PowerHandle
from piman.deploy import machine as m
from piman.deploy.customise import FORMATS, FirstBoot, render, to_tar
from piman.deploy.engine import Engine
from piman.deploy.environments import HEAD_BLOCKS, EnvironmentLibrary
from piman.deploy.imageserver import ImageServer
from piman.deploy.installer import installer_paths
from piman.deploy.nodeapi import Plan, digest, new_secret, outside_head, render_plan
from piman.errors import Forbidden, Gone, NotFoundError, PimanError
from piman.fleet.lifecycle import TRANSITIONS, NodeState
from piman.fleet.models import PiModel, installer_arch
from piman.fleet.ports import Repositories
from piman.fleet.records import (
    DeploymentEventRecord,
    DeploymentRecord,
    EnvironmentRecord,
    NodeRecord,
)

__all__ = ["DeployService", "agent_files", "build", "reachable"]

logger = logging.getLogger(__name__)

PROGRESS_EVERY = 3
_AGENT_MODULES = ("piman/__init__.py", "piman/errors.py", "piman/monitor/__init__.py")


def reachable(listen: str, manager_address: str) -> tuple[str, int]:
    """Where nodes reach a service listening on ``listen`` (a wildcard means the manager)."""
    host, port = parse_host_port(listen)
    if host in ("0.0.0.0", "::", ""):
        host = manager_address
    return host, port


def _family(model: str | None) -> int | None:
    try:
        return PiModel(model).family if model else None
    except ValueError:
        return None


def agent_files() -> dict[str, bytes]:
    """The agent's Python files (standard library only), as they go to ``/opt/piman-agent``."""
    root = resources.files("piman")
    files = {path: root.joinpath(*path.split("/")[1:]).read_bytes() for path in _AGENT_MODULES}
    agent = root.joinpath("monitor", "agent")
    for entry in agent.iterdir():
        if entry.name.endswith(".py"):
            files[f"piman/monitor/agent/{entry.name}"] = entry.read_bytes()
    return files


class DeployService:
    """Environments and deployments (the deploy handle)."""

    def __init__(
        self,
        config: Config,
        store: Repositories,
        engine: Engine,
        library: EnvironmentLibrary,
        power: PowerHandle | None,
    ) -> None:
        assert config.deploy is not None
        self.config = config
        self.settings = config.deploy
        self.store = store
        self.engine = engine
        self.library = library
        self.power = power
        self._files: dict[int, bytes] = {}
        self._sessions: dict[str, tuple[int, str, Path]] = {}  # digest → (id, node ip, image)

    # -- environments --------------------------------------------------------------------------

    async def environments(self) -> list[EnvironmentRecord]:
        return await self.store.environments.list()

    async def environment(self, name: str) -> EnvironmentRecord:
        return await self.store.environments.get(name)

    # -- deployments ---------------------------------------------------------------------------

    async def start(
        self,
        nodes: Sequence[str],
        environment: str | None,
        *,
        actor: str,
        options: DeployOptions | None = None,
    ) -> list[DeploymentRecord]:
        options = options or DeployOptions()
        if not nodes:
            raise ValueError("name at least one node")
        for path in self.settings.customise.ssh_key_files:  # read at files.tar time: check now
            if not path.is_file() or not os.access(path, os.R_OK):
                raise ValueError(f"deploy.customise.ssh_key_files: {path} cannot be read")
        records: list[NodeRecord] = []
        for name in dict.fromkeys(nodes):
            node = await self.store.nodes.get(name)  # NotFoundError
            wanted = environment or self._node_environment(name)
            if wanted is None:
                raise ValueError(
                    f"no environment for {name}: give one (--env) or set deploy.default_environment"
                )
            self._check_powerable(name)
            self._check_reachable(node)
            self._check_installer(node)
            state = NodeState(node.state)
            if NodeState.DEPLOYING not in TRANSITIONS[state] and state is not NodeState.DEPLOYING:
                raise ValueError(f"node {name} is {state}: it cannot be deployed from there")
            records.append(node)
        made = []
        for node in records:
            wanted = environment or self._node_environment(node.name)
            assert wanted is not None
            env = await self.store.environments.get(wanted)  # NotFoundError
            opts = self._options(node, env, options)
            record = await self.store.deployments.create(  # ConflictError when busy
                node=node.name,
                environment=env.name,
                state=m.State.NEW.value,
                options=opts,
                created_by=actor,
                bytes_total=env.mapped_bytes,
                deadline_at=None,
                token_digest=None,
                token_expires_at=None,
            )
            await self.store.audit.add(actor, "deploy.start", node.name, "ok", env.name)
            logger.info(
                "[deploy=%d node=%s] %s asked for %s", record.id, node.name, actor, env.name
            )
            made.append(record)
        self.engine.notify()
        return made

    def _node_environment(self, name: str) -> str | None:
        node = self.config.node(name)
        return (node.environment if node else None) or self.settings.default_environment

    def _check_powerable(self, name: str) -> None:
        node = self.config.node(name)
        if node is None or node.switch is None or node.port is None:
            raise ValueError(
                f"node {name} has no switch port: the engine must be able to power-cycle it "
                "(declare switch and port, with driver manual if a person does it)"
            )
        switch = self.config.switch(node.switch)
        if switch is None or switch.driver == "none":
            raise ValueError(
                f"node {name}'s switch has no power driver (use driver: manual if a person "
                "power-cycles it)"
            )

    def _check_reachable(self, node: NodeRecord) -> None:
        if self.settings.check_address and node.ip is None:
            raise ValueError(
                f"node {node.name} has no address: declare its ip (or reserve one in hosts.csv)"
                " so that its installer's hello can be checked"
            )

    def _check_installer(self, node: NodeRecord) -> None:
        """The installer this node boots is built (and can boot its model)."""
        arch = installer_arch(node.model)
        paths = installer_paths(self.config.manager.data_dir, arch)  # type: ignore[arg-type]
        if not paths.kernel.is_file():
            raise ValueError(
                f"node {node.name} boots the {arch} installer, which is not built: run "
                f"`piman installer build --arch {arch}` on the manager"
            )
        if (node.model or "").startswith("pi5") and not any(paths.root.glob("bcm2712*.dtb")):
            raise ValueError(
                f"node {node.name} is a Pi 5: the installer's kernel has no bcm2712 device tree "
                "(Debian bookworm's has none), so a Pi 5 cannot be reinstalled with this build"
            )

    def _options(
        self, node: NodeRecord, env: EnvironmentRecord, options: DeployOptions
    ) -> dict[str, Any]:
        pattern = options.hostname or node.hostname or "{node}"
        hostname = pattern.replace("{node}", node.name).lower()
        FirstBoot(hostname=hostname, instance_id="check", ssh_keys=options.ssh_keys)  # validates
        custom = self.settings.customise
        declared = self.config.node(node.name)
        fmt = options.customisation or env.customisation
        if fmt not in FORMATS:
            raise ValueError(f"{fmt!r} is not a first-boot format ({', '.join(FORMATS)})")
        return {
            "hostname": hostname,
            "user": options.user or custom.user,
            "password_hash": options.password_hash or custom.password_hash,
            "ssh_keys": list(options.ssh_keys),
            "customisation": fmt,
            "disk": (declared.disk if declared is not None else None) or self.settings.disk,
            "expect_agent": custom.install_agent and fmt != "none",
        }

    async def deployment(self, deployment_id: int) -> DeploymentRecord:
        return await self.store.deployments.get(deployment_id)

    async def deployments(
        self, *, node: str | None = None, active: bool | None = None, limit: int = 100
    ) -> list[DeploymentRecord]:
        return await self.store.deployments.list(node=node, active=active, limit=limit)

    async def events(self, deployment_id: int, *, after: int = 0) -> list[DeploymentEventRecord]:
        return await self.store.deployments.events(deployment_id, after=after)

    async def wait_change(self, within: float) -> None:
        await self.engine.wait_change(within)

    async def cancel(self, deployment_id: int, *, actor: str) -> DeploymentRecord:
        record = await self.store.deployments.get(deployment_id)
        if not record.active:
            return record
        await self.store.audit.add(actor, "deploy.cancel", record.node, "ok", str(deployment_id))
        return await self.engine.apply(deployment_id, m.Cancel(actor))

    # -- the installer -------------------------------------------------------------------------

    async def _check_address(self, record: DeploymentRecord, client: str) -> None:
        if not self.settings.check_address:
            return
        node = await self.store.nodes.get(record.node)
        if node.ip is None or node.ip != client:
            logger.warning(
                "[deploy=%d node=%s] installer call from %s, but the node is at %s: refused",
                record.id, record.node, client, node.ip,
            )  # fmt: skip
            raise Forbidden("not from this deployment's node")

    async def hello(self, token: str, client: str, report: Mapping[str, Any]) -> str:
        record = await self.store.deployments.by_token(digest(token)) if token else None
        now = datetime.now(UTC)
        if record is None:
            logger.warning("boot: hello from %s with an unknown or used token: refused", client)
            raise Forbidden("this token is unknown, used, or for a deployment that ended")
        if record.token_expires_at is not None and now >= record.token_expires_at:
            logger.warning("[deploy=%d] hello from %s with an expired token", record.id, client)
            raise Forbidden("this token has expired")
        await self._check_address(record, client)
        if m.State(record.state) not in m.INSTALLER_STEPS:
            raise Forbidden(f"this deployment is in {record.state}, not waiting for a hello")
        session = new_secret()
        record = await self.store.deployments.update(
            record.id,
            expect_state=record.state,
            token_digest=None,
            token_expires_at=None,
            session_digest=digest(session),
        )
        self.engine.tokens.pop(record.id, None)
        image = self.library.image(record.environment)
        node = await self.store.nodes.get(record.node)
        self._sessions[digest(session)] = (record.id, node.ip or client, image)
        disk_bytes = report.get("disk_bytes")
        await self.store.deployments.add_event(
            record.id, record.state, "log",
            f"hello from {client} (disk {report.get('disk', '?')}, {disk_bytes} bytes)",
        )  # fmt: skip
        record = await self.engine.apply(record.id, m.Hello())
        env = await self.store.environments.get(record.environment)
        block_map = await asyncio.to_thread(self.library.load_bmap, record.environment)
        host, port = reachable(self.settings.image_listen, str(self.config.manager.address))
        return render_plan(
            Plan(
                deployment=record.id,
                session=session,
                image_url=f"http://{host}:{port}/deploy/{record.id}/image",
                image_bytes=env.image_size,
                block_bytes=block_map.block_size,
                head_blocks=HEAD_BLOCKS,
                resume=min(record.ranges_done, len(outside_head(block_map.ranges, HEAD_BLOCKS))),
                progress_every=PROGRESS_EVERY,
                ranges=block_map.ranges,
            )
        )

    async def _session(self, deployment_id: int, session: str, client: str) -> DeploymentRecord:
        try:
            record = await self.store.deployments.get(deployment_id)
        except NotFoundError:
            record = None  # refused like a bad session: no hint of which ids exist
        if record is None or not hmac.compare_digest(record.session_digest or "", digest(session)):
            logger.warning(
                "[deploy=%d] installer call from %s with a bad session", deployment_id, client
            )
            raise Forbidden("not this deployment's session")
        if not record.active:
            raise Gone(f"deployment {deployment_id} ended ({record.result})")
        await self._check_address(record, client)
        return record

    async def progress(
        self, deployment_id: int, session: str, client: str, report: Mapping[str, Any]
    ) -> None:
        record = await self._session(deployment_id, session, client)
        step = str(report.get("step", ""))
        changes: dict[str, Any] = {}
        for key in ("ranges_done", "bytes_done", "bytes_total"):
            value = report.get(key)
            if isinstance(value, int) and value >= 0:
                changes[key] = value
        if changes:
            record = await self.store.deployments.update(record.id, **changes)
        await self.engine.apply(record.id, m.Progress(step))
        self.engine.notify()

    async def result(
        self, deployment_id: int, session: str, client: str, report: Mapping[str, Any]
    ) -> None:
        record = await self._session(deployment_id, session, client)
        ok = report.get("ok") is True
        reason = str(report.get("reason", ""))[:500]
        step = str(report.get("step", ""))[:32]
        await self.store.deployments.add_event(
            record.id, record.state, "log",
            "installer: done" if ok else f"installer: failed in {step or '?'}: {reason}",
        )  # fmt: skip
        if ok and report.get("customise") == "skipped":  # e.g. a file as the disk (tests, demo)
            await self.store.deployments.add_event(
                record.id, record.state, "log", f"customisation skipped: {reason or '?'}"
            )
        if ok and isinstance(report.get("bytes_written"), int):
            await self.store.deployments.update(record.id, bytes_done=report["bytes_written"])
        self._files.pop(record.id, None)
        await self.engine.apply(record.id, m.Result(ok, reason, step))

    async def files(self, deployment_id: int, session: str, client: str) -> bytes:
        record = await self._session(deployment_id, session, client)
        cached = self._files.get(record.id)
        if cached is not None:
            return cached
        env = await self.store.environments.get(record.environment)
        opts = record.options
        custom = self.settings.customise
        keys = [*custom.ssh_keys, *opts.get("ssh_keys", [])]
        for path in custom.ssh_key_files:
            keys += [k for k in path.read_text().splitlines() if k.strip()]
        monitoring = self.config.monitoring
        declared = self.config.node(record.node)  # its own agent token first, as the collector
        secret = (declared.agent_token if declared else None) or (
            monitoring.agent_token if monitoring else None
        )
        token = secret.get_secret_value() if secret else None
        extra = {}
        for target, path in custom.extra_files.items():
            try:
                extra[target] = path.read_bytes()
            except OSError as err:
                raise PimanError(f"deploy.customise.extra_files: {path}: {err.strerror}") from None
        boot = FirstBoot(
            hostname=opts["hostname"],
            instance_id=f"piman-{record.id}",
            user=opts["user"],
            password_hash=opts.get("password_hash"),
            ssh_keys=tuple(keys),
            enable_ssh=custom.enable_ssh,
            timezone=custom.timezone,
            keyboard=custom.keyboard,
            locale=custom.locale,
            agent_files=agent_files() if custom.install_agent else {},
            agent_token=token,
            agent_port=monitoring.agent_port if monitoring else 9110,
            extra_files=extra,
        )
        fmt = str(opts.get("customisation") or env.customisation)
        rendered = render(fmt, boot, cmdline=env.cmdline)
        for note in rendered.notes:
            await self.store.deployments.add_event(record.id, record.state, "log", note)
        files = dict(rendered.files)
        node = await self.store.nodes.get(record.node)
        if _family(node.model) == 3:
            # A Pi 3 boots from its card whenever bootcode.bin is there: without it, it netboots
            # (its OTP bit set) and gets its own boot files from the manager, as every Pi does.
            files["piman/remove"] = b"bootcode.bin\n"
        data = to_tar(files)
        self._files[record.id] = data
        return data

    async def image_for(self, deployment_id: int, session: str, client: str) -> Path | None:
        """The image server's check: the session's image, from the node's address; or None."""
        entry = self._sessions.get(digest(session))
        if entry is None:
            record = await self.store.deployments.by_session(digest(session))
            if record is None:
                return None
            node = await self.store.nodes.get(record.node)
            entry = (record.id, node.ip or "", self.library.image(record.environment))
            self._sessions[digest(session)] = entry
        if entry[0] != deployment_id or deployment_id in self.engine.ended:
            return None
        if self.settings.check_address and entry[1] != client:
            return None
        return entry[2]

    # -- the boot tree -------------------------------------------------------------------------

    def boot_choice(self, node: str) -> str | None:
        choice = self.engine.boot.get(node)
        return None if choice is None else choice[1]

    def installer_args(self, node: str) -> dict[str, str] | None:
        choice = self.engine.boot.get(node)
        if choice is None or choice[1] != "installer":
            return None
        token = self.engine.tokens.get(choice[0])
        if token is None:  # used by a hello: the node restarted the installer since
            if choice[0] in self.engine.ended:
                return None
            token = self.engine.reissue(choice[0])
        declared = self.config.node(node)
        plain = self.settings.api_listen if self.config.manager.tls else self.config.manager.http
        host, port = reachable(plain, str(self.config.manager.address))
        return {
            "piman.url": f"http://{host}:{port}",
            "piman.token": token,
            "piman.node": node,
            "piman.disk": (declared.disk if declared else None) or self.settings.disk,
        }

    def boot_cmdline(self, node: str) -> str | None:
        return self.engine.boot_cmdline(node)

    def local_boot_seen(self, node: str, name: str) -> None:
        choice = self.engine.boot.get(node)
        if choice is None or choice[1] != "local":
            return
        if self.engine.count_boot(node, name) or name == "cmdline.txt":
            self.engine.spawn(self._local_boot(choice[0]))

    async def _local_boot(self, deployment_id: int) -> None:
        record = await self.store.deployments.get(deployment_id)
        if record.state == m.State.BOOT_LOCAL.value:
            await self.engine.apply(deployment_id, m.LocalBoot())


def build(ctx: AppContext) -> Built[DeployHandle] | None:
    """The engine and the image stream, when ``deploy:`` is in the configuration."""
    settings = ctx.config.deploy
    if settings is None or not settings.enabled:
        return None
    library = EnvironmentLibrary(ctx.config.manager.data_dir, ctx.store.environments)
    engine = Engine(ctx.config, ctx.store, library, ctx.power, registry=ctx.metrics, ssh=ctx.ssh)
    service = DeployService(ctx.config, ctx.store, engine, library, ctx.power)
    images = ImageServer(
        parse_host_port(settings.image_listen),
        service.image_for,
        on_sent=lambda _deployment, sent: engine.streamed.inc(sent),
    )
    return Built(service, (engine, images))
