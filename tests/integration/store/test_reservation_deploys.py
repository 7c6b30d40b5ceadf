"""The reservations service with deployments, on a real store and an injected clock: the owner's
environment deployed at the start with their keys (once, even when the start is replayed after
a crash), the owner's unfinished deployment cancelled at the end, and a release that redeploys
the default environment, waits for it, then hands the nodes back ready."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from piman.access.reservations_service import FINISH_POLL, ReservationService, build
from piman.config.models import Config
from piman.context import AppContext, DeployOptions, Principal
from piman.errors import ConfigError, ConflictError, NotFoundError
from piman.fleet.lifecycle import NodeState
from piman.fleet.records import DeploymentRecord
from piman.fleet.reservations import NodeSelection, ReservationRequest
from piman.store import Store, reconcile

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK0wmN/Cr3JXqmLW7u+g9pTh+wyqDHpSQEIQczXkVx9q ann@lab"
ANN = Principal("ann", "user", "token", "pm_ann")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class FakeDeploy:
    """The deploy handle's calls the reservations make; the node states move as the engine
    would move them (deploying, then deployed)."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self.records: dict[int, DeploymentRecord] = {}
        self.calls: list[tuple[str, tuple[str, ...], str, tuple[str, ...]]] = []
        self.cancelled: list[tuple[int, str]] = []

    async def environment(self, name: str) -> Any:
        if name not in ("lab-os", "clean"):
            raise NotFoundError(f"no environment named {name!r}")
        return name

    async def start(
        self,
        nodes: Sequence[str],
        environment: str | None,
        *,
        actor: str,
        options: DeployOptions | None = None,
    ) -> list[DeploymentRecord]:
        busy = [d.node for d in self.records.values() if d.active and d.node in nodes]
        if busy:
            raise ConflictError(f"node {busy[0]} is already being deployed")
        keys = options.ssh_keys if options else ()
        self.calls.append((environment or "", tuple(nodes), actor, keys))
        made = []
        for node in nodes:
            ident = len(self.records) + 1
            record = DeploymentRecord(
                id=ident, node=node, environment=environment or "", state="new", attempt=0,
                deadline_at=None, ranges_done=0, bytes_done=0, bytes_total=0, token_digest=None,
                token_expires_at=None, session_digest=None, options={}, result=None,
                reason=None, created_by=actor, created_at=self.clock(),
                updated_at=self.clock(), finished_at=None, claimed_by=None, lease_until=None,
            )  # fmt: skip
            self.records[ident] = record
            await self.store.nodes.set_state(node, NodeState.DEPLOYING, force=True)
            made.append(record)
        return made

    async def deployment(self, deployment_id: int) -> DeploymentRecord:
        return self.records[deployment_id]

    async def deployments(
        self, *, node: str | None = None, active: bool | None = None, limit: int = 100
    ) -> list[DeploymentRecord]:
        return [
            d
            for d in self.records.values()
            if (node is None or d.node == node) and (active is None or d.active == active)
        ]

    async def cancel(self, deployment_id: int, *, actor: str) -> DeploymentRecord:
        self.cancelled.append((deployment_id, actor))
        done = replace(self.records[deployment_id], result="cancelled")
        self.records[deployment_id] = done
        await self.store.nodes.set_state(done.node, NodeState.FAILED_DEPLOYMENT, force=True)
        return done

    async def finish(self, deployment_id: int) -> None:
        done = replace(self.records[deployment_id], result="ok")
        self.records[deployment_id] = done
        await self.store.nodes.set_state(done.node, NodeState.DEPLOYED, force=True)


class Rig:
    def __init__(self, store: Store, config: Config) -> None:
        self.store = store
        self.config = config
        self.clock = Clock()
        self.deploy = FakeDeploy(store, self.clock)
        self.off: list[list[str]] = []
        self.service = self.make()

    def make(self) -> ReservationService:
        return ReservationService(
            self.config,
            self.store,
            deploy=self.deploy,
            clock=self.clock,
            owner="m",  # type: ignore[arg-type]
        )

    async def states(self) -> dict[str, str]:
        return {n.name: n.state for n in await self.store.nodes.list()}


def config(tmp_path: Path, release: str) -> Config:
    return Config.model_validate(
        {
            "manager": {"address": "198.18.0.1", "data_dir": str(tmp_path)},
            "deploy": {"default_environment": "clean"},
            "switches": [{"name": "rack1", "driver": "manual"}],
            "nodes": [{"name": f"pi{i}", "switch": "rack1", "port": i} for i in (1, 2)],
            "reservations": {"release": release, "warnings": [], "unused_after": None},
        }
    )


@pytest.fixture(params=["redeploy", "none"])
async def rig(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Rig]:
    cfg = config(tmp_path, request.param)
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'piman.db'}")
    await store.open()
    await reconcile(store, cfg)
    await store.users.add("ann", "user", "x")
    try:
        yield Rig(store, cfg)
    finally:
        await store.close()


def booking(start: datetime | None = None) -> ReservationRequest:
    return ReservationRequest(
        NodeSelection(names=("pi1", "pi2")), 3600, start, environment="lab-os", ssh_keys=(KEY,)
    )


async def test_the_environment_is_deployed_at_the_start_with_the_owners_keys(rig: Rig) -> None:
    r = await rig.service.reserve(booking(), principal=ANN)
    assert r.state == "active"
    assert rig.deploy.calls == [("lab-os", ("pi1", "pi2"), f"reservation#{r.id} (ann)", (KEY,))]
    assert r.deployments == (1, 2)
    assert await rig.states() == {"pi1": "deploying", "pi2": "deploying"}


async def test_a_start_replayed_after_a_crash_deploys_once(rig: Rig) -> None:
    r = await rig.service.reserve(booking(T0 + timedelta(minutes=5)), principal=ANN)
    assert r.state == "scheduled"
    # The first manager started the deployments, then died before it wrote "active".
    await rig.deploy.start(["pi1", "pi2"], "lab-os", actor=f"reservation#{r.id} (ann)")
    rig.clock.now += timedelta(minutes=6)
    assert await rig.make().tick() == 1
    again = await rig.store.reservations.get(r.id)
    assert again.state == "active"
    assert again.deployments == (1, 2)  # the running ones, recorded
    assert len(rig.deploy.calls) == 1


async def test_the_end_cancels_the_owners_deployment_and_releases_as_configured(
    rig: Rig,
) -> None:
    r = await rig.service.reserve(booking(), principal=ANN)
    await rig.deploy.finish(1)  # pi1 is deployed, pi2 still deploying at the end
    rig.clock.now += timedelta(hours=1)
    assert await rig.service.tick() == 1
    assert rig.deploy.cancelled == [(2, f"reservation#{r.id}")]
    done = await rig.store.reservations.get(r.id)
    if rig.config.reservations.release == "none":
        assert done.state == "released"
        assert await rig.states() == {"pi1": "ready", "pi2": "ready"}
        return
    # redeploy: the default environment goes on, and the reservation waits for it.
    assert done.state == "ending"
    assert rig.deploy.calls[-1] == ("clean", ("pi1", "pi2"), f"reservation#{r.id} (release)", ())
    assert await rig.states() == {"pi1": "deploying", "pi2": "deploying"}
    rig.clock.now += timedelta(seconds=FINISH_POLL)
    assert await rig.service.tick() == 1
    assert (await rig.store.reservations.get(r.id)).state == "ending"  # still installing
    await rig.deploy.finish(3)
    await rig.deploy.finish(4)
    rig.clock.now += timedelta(seconds=FINISH_POLL)
    assert await rig.service.tick() == 1
    assert (await rig.store.reservations.get(r.id)).state == "released"
    assert await rig.states() == {"pi1": "ready", "pi2": "ready"}
    assert len(rig.deploy.calls) == 2  # nothing deployed twice


async def test_redeploy_without_an_environment_is_a_config_error(tmp_path: Path) -> None:
    cfg = config(tmp_path, "redeploy").model_copy(update={"deploy": None})
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'piman.db'}")
    await store.open()
    try:
        ctx = AppContext(config=cfg, store=store, metrics=None)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="redeploy needs deploy: and an environment"):
            build(ctx)
    finally:
        await store.close()
