"""The manager's half of /boot/v1 (docs/boot-protocol.md), against the real deploy service and a
real SQLite store: the one-time token, the session, the node's address, the plan, files.tar."""

from __future__ import annotations

import asyncio
import io
import tarfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from piman.config.models import Config
from piman.context import AppContext, DeployOptions
from piman.deploy.environments import EnvironmentLibrary
from piman.deploy.service import DeployService
from piman.deploy.service import build as build_deploy
from piman.errors import ConflictError, Forbidden, Gone
from piman.sim.image import stand_in_installer_tree
from piman.store import Store, reconcile
from tests.unit.deploy.test_images import RASPIOS_BOOT, build_image

NODE_IP = "198.18.0.11"
REPORT = {"node": "pi1", "disk": "/dev/mmcblk0", "disk_bytes": 64 << 30}


class Rig:
    def __init__(self, ctx: AppContext, service: DeployService) -> None:
        self.ctx = ctx
        self.service = service
        self.engine = service.engine

    async def started(self, node: str = "pi1", **options: Any) -> int:
        """A deployment of ``node``, driven until it waits for the installer's hello."""
        (d,) = await self.service.start(
            [node], "lite", actor="test", options=DeployOptions(**options)
        )
        await self.engine.tick()  # claims it and applies Start: the manual switch's instruction
        for _ in range(100):
            if (await self.service.deployment(d.id)).state == "hello":
                return d.id
            await asyncio.sleep(0.01)
        raise AssertionError((await self.service.deployment(d.id)).state)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    keys = tmp_path / "motd"
    keys.write_text("welcome to the lab\n")
    config = Config.model_validate(
        {
            "manager": {"address": "198.18.0.1", "data_dir": str(tmp_path / "data")},
            "deploy": {
                "customise": {
                    "user": "lab",
                    "ssh_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK0 ops@lab"],
                    "extra_files": {"piman/motd": str(keys)},
                }
            },
            "switches": [{"name": "rack1", "driver": "manual"}],
            "nodes": [
                {"name": "pi1", "switch": "rack1", "port": 1, "ip": NODE_IP},
                {"name": "pi2", "switch": "rack1", "port": 2, "ip": "198.18.0.12"},
                {
                    "name": "pi3",
                    "switch": "rack1",
                    "port": 3,
                    "ip": "198.18.0.13",
                    "model": "pi3b+",
                },
            ],
        }
    )
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'piman.db'}")
    await store.open()
    await reconcile(store, config)
    library = EnvironmentLibrary(config.manager.data_dir, store.environments)
    await library.add("lite", build_image(tmp_path / "lite.img"), created_by="test")
    stand_in_installer_tree(config.manager.data_dir)  # the installer is not booted here
    ctx = AppContext(config=config, store=store, metrics=CollectorRegistry())
    built = build_deploy(ctx)
    assert built is not None
    assert isinstance(built.handle, DeployService)
    try:
        yield Rig(ctx, built.handle)
    finally:
        await store.close()


def plan_values(plan: str) -> dict[str, str]:
    lines = plan.splitlines()
    assert lines[0] == "piman-plan 1"
    assert lines[-1] == "end"
    return {k: v for k, _, v in (line.partition(" ") for line in lines[1:-1]) if k != "range"}


async def test_the_token_works_once_from_the_nodes_address(rig: Rig) -> None:
    ident = await rig.started()
    token = rig.engine.tokens[ident]
    with pytest.raises(Forbidden):
        await rig.service.hello(token, "198.18.0.12", REPORT)  # another node's address
    with pytest.raises(Forbidden):
        await rig.service.hello("pm-guess", NODE_IP, REPORT)
    plan = plan_values(await rig.service.hello(token, NODE_IP, REPORT))
    assert plan["deployment"] == str(ident)
    assert plan["resume"] == "0"
    assert plan["image"].endswith(f"/deploy/{ident}/image")
    with pytest.raises(Forbidden):  # used
        await rig.service.hello(token, NODE_IP, REPORT)
    session = plan["session"]
    assert await rig.service.image_for(ident, session, NODE_IP) is not None
    assert await rig.service.image_for(ident, session, "198.18.0.12") is None
    assert await rig.service.image_for(ident + 1, session, NODE_IP) is None
    assert await rig.service.image_for(ident, token, NODE_IP) is None  # not a session
    with pytest.raises(Forbidden):
        await rig.service.progress(ident, token, NODE_IP, {"step": "write_image"})
    await rig.service.progress(ident, session, NODE_IP, {"step": "write_image", "ranges_done": 3,
                                                         "bytes_done": 12 << 20})  # fmt: skip
    record = await rig.service.deployment(ident)
    assert (record.state, record.ranges_done, record.bytes_done) == ("write_image", 3, 12 << 20)


async def test_an_expired_token_is_refused(rig: Rig) -> None:
    ident = await rig.started()
    token = rig.engine.tokens[ident]
    await rig.ctx.store.deployments.update(
        ident, token_expires_at=datetime.now(UTC) - timedelta(seconds=1)
    )
    with pytest.raises(Forbidden, match="expired"):
        await rig.service.hello(token, NODE_IP, REPORT)


async def test_a_cancelled_deployment_tells_the_installer_to_stop(rig: Rig) -> None:
    ident = await rig.started()
    session = plan_values(await rig.service.hello(rig.engine.tokens[ident], NODE_IP, REPORT))[
        "session"
    ]
    cancelled = await rig.service.cancel(ident, actor="test")
    assert (cancelled.state, cancelled.result) == ("cancelled", "cancelled")
    with pytest.raises(Gone):
        await rig.service.progress(ident, session, NODE_IP, {"step": "write_image"})
    assert await rig.service.image_for(ident, session, NODE_IP) is None  # no more image
    node = await rig.ctx.store.nodes.get("pi1")
    assert node.state == "failed_deployment"


async def test_a_retry_resumes_after_the_synced_ranges(rig: Rig) -> None:
    ident = await rig.started()
    session = plan_values(await rig.service.hello(rig.engine.tokens[ident], NODE_IP, REPORT))[
        "session"
    ]
    await rig.service.progress(ident, session, NODE_IP, {"step": "write_image", "ranges_done": 1})
    await rig.service.result(
        ident, session, NODE_IP, {"ok": False, "step": "write_image", "reason": "cut"}
    )
    record = await rig.service.deployment(ident)
    assert (record.state, record.attempt) == ("hello", 1)  # power-cycled, waits again
    new_token = rig.engine.tokens[ident]
    with pytest.raises(Forbidden):  # the old session ended with the retry
        await rig.service.progress(ident, session, NODE_IP, {"step": "write_image"})
    plan = plan_values(await rig.service.hello(new_token, NODE_IP, REPORT))
    assert plan["resume"] == "1"


async def test_one_active_deployment_per_node(rig: Rig) -> None:
    await rig.started()
    with pytest.raises(ConflictError, match="already being deployed"):
        await rig.service.start(["pi1"], "lite", actor="test")


async def test_files_tar_carries_the_first_boot_of_the_chosen_format(rig: Rig) -> None:
    ident = await rig.started(hostname="lab-{node}", customisation="cloudinit")
    session = plan_values(await rig.service.hello(rig.engine.tokens[ident], NODE_IP, REPORT))[
        "session"
    ]
    data = await rig.service.files(ident, session, NODE_IP)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
    # The image is Raspberry Pi OS (firstrun), overridden to cloud-init for this deployment.
    assert "local-hostname: lab-pi1" in files["meta-data"].decode()
    user_data = files["user-data"].decode()
    assert user_data.startswith("#cloud-config")
    (user,) = yaml.safe_load(user_data)["users"]
    assert user["name"] == "lab"
    assert user["ssh_authorized_keys"] == ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK0 ops@lab"]
    assert "firstrun.sh" not in files
    assert files["piman/motd"] == b"welcome to the lab\n"  # deploy.customise.extra_files
    assert any(name.endswith("piman-agent.service") for name in files)
    assert RASPIOS_BOOT["cmdline.txt"] not in files.values()  # the image's own is kept


async def test_a_node_that_boots_the_installer_again_gets_a_new_token(rig: Rig) -> None:
    ident = await rig.started()
    first = rig.engine.tokens[ident]
    old = plan_values(await rig.service.hello(first, NODE_IP, REPORT))["session"]
    await rig.service.progress(ident, old, NODE_IP, {"step": "write_image", "ranges_done": 2})
    # The node restarted (a power blip): its boot tree serves the installer with a new token.
    args = rig.service.installer_args("pi1")
    assert args is not None
    assert args["piman.token"] != first
    await asyncio.sleep(0.1)  # its hash is written meanwhile
    plan = plan_values(await rig.service.hello(args["piman.token"], NODE_IP, REPORT))
    assert plan["resume"] == "2"
    with pytest.raises(Forbidden):  # the first installer's session ended
        await rig.service.progress(ident, old, NODE_IP, {"step": "write_image"})


async def test_what_cannot_be_deployed_is_refused_before_anything_starts(
    rig: Rig, tmp_path: Path
) -> None:
    installer = rig.ctx.config.manager.data_dir / "installer" / "arm64"
    (installer / "kernel8.img").unlink()
    with pytest.raises(ValueError, match="piman installer build --arch arm64"):
        await rig.service.start(["pi1"], "lite", actor="test")
    assert await rig.service.deployments() == []


async def test_a_pi3_keeps_netbooting_after_its_reinstall(rig: Rig) -> None:
    ident = await rig.started("pi3")
    pi3 = "198.18.0.13"
    session = plan_values(await rig.service.hello(rig.engine.tokens[ident], pi3, REPORT))["session"]
    data = await rig.service.files(ident, session, pi3)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        remove = tar.extractfile("piman/remove")
        assert remove is not None
        assert remove.read() == b"bootcode.bin\n"
