"""A reinstalled node gets the agent token the collector will send it: its own
(``nodes[].agent_token``) when it has one, else the fleet's (``monitoring.agent_token``)."""

from __future__ import annotations

import io
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from piman.config.models import Config
from piman.context import AppContext
from piman.deploy.environments import EnvironmentLibrary
from piman.deploy.service import DeployService
from piman.deploy.service import build as build_deploy
from piman.sim.image import stand_in_installer_tree
from piman.store import Store, reconcile
from tests.integration.deploy.test_node_api import Rig, plan_values
from tests.unit.deploy.test_images import build_image

IPS = {"own": "198.18.0.11", "fleet": "198.18.0.12"}


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    config = Config.model_validate(
        {
            "manager": {"address": "198.18.0.1", "data_dir": str(tmp_path / "data")},
            "deploy": {"customise": {"user": "lab"}},
            "monitoring": {"agent_token": "fleet-s3cret"},
            "switches": [{"name": "rack1", "driver": "manual"}],
            "nodes": [
                {"name": "own", "switch": "rack1", "port": 1, "ip": IPS["own"],
                 "agent_token": "own-s3cret"},
                {"name": "fleet", "switch": "rack1", "port": 2, "ip": IPS["fleet"]},
            ],
        }
    )  # fmt: skip
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'piman.db'}")
    await store.open()
    await reconcile(store, config)
    library = EnvironmentLibrary(config.manager.data_dir, store.environments)
    await library.add("lite", build_image(tmp_path / "lite.img"), created_by="test")
    stand_in_installer_tree(config.manager.data_dir)
    ctx = AppContext(config=config, store=store, metrics=CollectorRegistry())
    built = build_deploy(ctx)
    assert built is not None
    assert isinstance(built.handle, DeployService)
    try:
        yield Rig(ctx, built.handle)
    finally:
        await store.close()


async def _agent_env(rig: Rig, node: str) -> bytes:
    ident = await rig.started(node)
    report = {"node": node, "disk": "/dev/mmcblk0", "disk_bytes": 64 << 30}
    hello = await rig.service.hello(rig.engine.tokens[ident], IPS[node], report)
    data = await rig.service.files(ident, plan_values(hello)["session"], IPS[node])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        [env] = [m for m in tar if m.name.endswith("agent.env")]
        reader = tar.extractfile(env)
        assert reader is not None
        return reader.read()


async def test_a_node_with_its_own_token_gets_it_in_its_agent_env(rig: Rig) -> None:
    assert await _agent_env(rig, "own") == b"PIMAN_AGENT_TOKEN=own-s3cret\n"
    assert await _agent_env(rig, "fleet") == b"PIMAN_AGENT_TOKEN=fleet-s3cret\n"
