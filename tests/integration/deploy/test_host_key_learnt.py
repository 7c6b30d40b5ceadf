"""A deployment that ends well makes the manager learn the node's new SSH host key (the deploy
engine asks the SSH client; a reinstalled node then is not refused for a changed key), and one
whose node never answers says so in its log. The SSH client is a stand-in here: what it does
with a real sshd is tested in tests/unit/inventory/test_fleet_ssh.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from piman.config.models import Config
from piman.context import AppContext
from piman.deploy import machine as m
from piman.deploy.service import DeployService
from piman.deploy.service import build as build_deploy
from piman.errors import PimanError
from piman.fleet.ssh import SshResult, SshTarget
from piman.sim.image import stand_in_installer_tree
from piman.store import Store, reconcile
from tests.unit.deploy.test_images import build_image


class FakeSsh:
    """Records what the engine asks; ``answers`` fingerprints (or failures) in turn."""

    def __init__(self, answers: list[str | PimanError]) -> None:
        self.answers = answers
        self.asked: list[SshTarget] = []

    async def targets(self, nodes: Sequence[str]) -> list[SshTarget]:
        return [SshTarget(n, "198.18.0.11", 22, "pi") for n in nodes]

    async def learn_host_key(self, target: SshTarget) -> str:
        self.asked.append(target)
        answer = self.answers.pop(0)
        if isinstance(answer, PimanError):
            raise answer
        return answer

    def stream(self, *args: object, **kwargs: object) -> AsyncIterator[SshResult]:
        raise AssertionError("the engine runs no command")

    async def run(self, *args: object, **kwargs: object) -> list[SshResult]:
        raise AssertionError("the engine runs no command")


async def deployed(service: DeployService) -> int:
    """A deployment of pi1 driven to its end through the installer's reports and the agent."""
    (d,) = await service.start(["pi1"], "lite", actor="test")
    engine = service.engine
    await engine.tick()
    await engine.apply(d.id, m.Hello())
    await engine.apply(d.id, m.Result(ok=True))
    await engine.apply(d.id, m.LocalBoot())
    record = await engine.apply(d.id, m.AgentUp())
    assert record.state == "deployed", record
    return d.id


async def log_of(service: DeployService, ident: int, text: str) -> list[str]:
    for _ in range(500):
        details = [e.detail for e in await service.events(ident)]
        if any(text in d for d in details):
            return details
        await asyncio.sleep(0.01)
    raise AssertionError(f"{text!r} never logged: {details}")


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[object]:
    stores: list[Store] = []

    async def build(ssh: FakeSsh) -> DeployService:
        config = Config.model_validate(
            {
                "manager": {"address": "198.18.0.1", "data_dir": str(tmp_path / "data")},
                "deploy": {},
                "switches": [{"name": "rack1", "driver": "manual"}],
                "nodes": [{"name": "pi1", "switch": "rack1", "port": 1, "ip": "198.18.0.11"}],
            }
        )
        store = Store(f"sqlite+aiosqlite:///{tmp_path / 'piman.db'}")
        stores.append(store)
        await store.open()
        await reconcile(store, config)
        ctx = AppContext(config=config, store=store, metrics=CollectorRegistry(), ssh=ssh)
        built = build_deploy(ctx)
        assert built is not None
        assert isinstance(built.handle, DeployService)
        built.handle.engine.learn_delays = (0.0, 0.0)
        await built.handle.library.add("lite", build_image(tmp_path / "lite.img"), created_by="t")
        stand_in_installer_tree(config.manager.data_dir)
        return built.handle

    yield build
    for store in stores:
        await store.close()


async def test_a_good_deployment_learns_the_nodes_new_host_key(make: object) -> None:
    ssh = FakeSsh(["SHA256:new"])
    service = await make(ssh)  # type: ignore[operator]
    ident = await deployed(service)
    details = await log_of(service, ident, "SSH host key learnt")
    assert "SSH host key learnt: SHA256:new" in details
    assert [t.name for t in ssh.asked] == ["pi1"]


async def test_a_node_whose_sshd_never_answers_is_said_in_the_log(make: object) -> None:
    refused = PimanError("connection refused")
    ssh = FakeSsh([refused, refused])
    service = await make(ssh)  # type: ignore[operator]
    ident = await deployed(service)
    details = await log_of(service, ident, "SSH host key not learnt")
    assert "SSH host key not learnt: connection refused" in details
    assert len(ssh.asked) == 2  # every delay tried
