"""The demo fleet: a generated configuration, the manager, virtual switches and virtual Pis.

Everything listens on 127.0.0.1; nothing needs root. The configuration is written to
``<root>/piman.yaml`` so that a user can read it and run other commands against it
(``piman nodes -c <root>/piman.yaml``). Before the manager starts, the demo makes one account per
role (:data:`DEMO_USERS`) with fresh random passwords, prints them and writes them to
``<root>/demo-logins.txt`` (mode 0600).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from piman.config import Config, load_config
from piman.manager import Manager
from piman.sim.agents import run_agents
from piman.sim.image import (
    DEMO_ENVIRONMENT,
    build_demo_image,
    missing_tools,
    stand_in_installer_tree,
)
from piman.sim.netboot import run_netboot
from piman.sim.pi import VirtualPi, make_pi
from piman.sim.switch import run_switches
from piman.web.server import HttpService

__all__ = ["DEMO_USERS", "LOGINS_FILE", "DemoFleet", "build_demo_config", "free_port"]

logger = logging.getLogger(__name__)

SWITCHES = ("rack1", "rack2")
# (name, role): one account per role, so the demo shows what each one sees.
DEMO_USERS = (("admin", "admin"), ("operator", "operator"), ("viewer", "viewer"), ("alice", "user"))
LOGINS_FILE = "demo-logins.txt"
PORTS_PER_SWITCH = 48


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port on 127.0.0.1 that is free now (TCP by default, UDP with SOCK_DGRAM)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def build_demo_config(
    root: Path, nodes: int, http_port: int
) -> tuple[dict[str, Any], list[VirtualPi]]:
    """The demo's configuration mapping and its virtual Pis."""
    if nodes > 2 * (PORTS_PER_SWITCH - 1):
        per_switch = -(-nodes // 2)
    else:
        per_switch = PORTS_PER_SWITCH - 1
    pis: list[VirtualPi] = []
    for i in range(nodes):
        switch = SWITCHES[0] if i < -(-nodes // 2) else SWITCHES[1]
        port = (i if switch == SWITCHES[0] else i - (-(-nodes // 2))) + 1
        host = 10 + i
        ip = f"198.18.{host // 250}.{host % 250 + 2}"
        pis.append(make_pi(i, switch, port, ip))
    for pi in pis:
        pi.agent_port = free_port()
    data: dict[str, Any] = {
        "manager": {
            "address": "198.18.0.1",
            "network": "198.18.0.0/16",
            "data_dir": str(root),
            "http": f"127.0.0.1:{http_port}",
        },
        "dhcp": {
            "mode": "authoritative",
            "listen": f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}",
            "pool": "198.18.200.10-198.18.200.250",
            "router": "198.18.0.1",
            "dns": ["198.18.0.1"],
        },
        "tftp": {"enabled": True, "listen": f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}"},
        "monitoring": {"scrape_interval": "5s", "group_wait": "5s"},
        "deploy": {
            "default_environment": DEMO_ENVIRONMENT,
            "image_listen": f"127.0.0.1:{free_port()}",
            "check_address": False,  # every virtual Pi speaks from 127.0.0.1
            "timeouts": {
                "power_off": "30s",
                "netboot_installer": "30s",
                "hello": "2m",
                "write_image": "2m",
                "agent_up": "2m",
            },
        },
        "switches": [
            {
                "name": name,
                "address": f"198.18.255.{250 + k}",
                "driver": "snmp-poe",
                "profile": "rfc3621",
                "ports": max(PORTS_PER_SWITCH, per_switch + 1),
                "uplink_port": max(PORTS_PER_SWITCH, per_switch + 1),
                "snmp": {
                    "version": "2c",
                    "community": "private",
                    "host": "127.0.0.1",
                    "port": free_port(socket.SOCK_DGRAM),
                },
                "off_seconds": "1s",
                "batch_size": 8,
                "batch_interval": "1s",
            }
            for k, name in enumerate(SWITCHES)
        ],
        "nodes": [
            {
                "name": pi.name,
                "switch": pi.switch,
                "port": pi.port,
                "mac": pi.mac,
                "ip": pi.ip,
                "serial": pi.serial,
                "model": pi.model.value,
                "agent_url": f"http://127.0.0.1:{pi.agent_port}/metrics",
                "disk": str(root / "sim" / "sd" / f"{pi.name}.img"),  # its virtual SD card
            }
            for pi in pis
        ],
    }
    return data, pis


class DemoFleet:
    """``piman demo``: the manager plus a simulated fleet, until :meth:`stop`."""

    def __init__(self, root: Path, *, nodes: int = 16, http_port: int = 8000) -> None:
        self.root = root
        data, self.pis = build_demo_config(root, nodes, http_port)
        root.mkdir(parents=True, exist_ok=True)
        self.config_path = root / "piman.yaml"
        self.config_path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        self.config: Config = load_config(self.config_path)
        self.manager = Manager(self.config, frontends=[HttpService])
        self._stop = asyncio.Event()
        self.logins: dict[str, str] = {}

    @property
    def url(self) -> str:
        host, port = self.config.manager.http_host_port
        return f"http://{host}:{port}/"

    def stop(self) -> None:
        self._stop.set()
        self.manager.stop()

    async def make_users(self) -> dict[str, str]:
        """Create (or reset) the demo accounts with new random passwords; name → password."""
        from piman.access.secrets import new_password
        from piman.access.service import AccessService, load_session_key
        from piman.store import Store

        store = Store(self.config.database_url)
        await store.open()
        try:
            access = AccessService(
                store,
                self.config.access,
                data_dir=self.root,
                session_key=load_session_key(self.root),
            )
            known = {u.name for u in await access.users()}
            logins = {name: new_password() for name, _ in DEMO_USERS}

            async def make(name: str, role: str) -> None:
                if name in known:
                    await access.set_role(name, role)
                    await access.set_password(name, logins[name])
                else:
                    await access.add_user(name, role, logins[name])

            # Hashing runs in threads, two at a time: the four accounts take two hash times.
            await asyncio.gather(*(make(name, role) for name, role in DEMO_USERS))
        finally:
            await store.close()
        path = self.root / LOGINS_FILE
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for name, role in DEMO_USERS:
                f.write(f"{name} {logins[name]} {role}\n")
        self.logins = logins
        return logins

    async def demo_environment(self) -> None:
        """Import the demo OS as environment ``demo-os`` (once), so a virtual Pi can be
        reinstalled from the web page or with ``piman deploy``."""
        from piman.deploy.environments import EnvironmentLibrary
        from piman.errors import NotFoundError, PimanError

        stand_in_installer_tree(self.root)
        for pi in self.pis:  # virtual SD cards: sparse files
            card = self.root / "sim" / "sd" / f"{pi.name}.img"
            card.parent.mkdir(parents=True, exist_ok=True)
            if not card.exists():
                with card.open("wb") as f:
                    f.truncate(64 << 20)
        assert self.manager.ctx is not None  # the manager is ready
        store = self.manager.ctx.store
        with contextlib.suppress(NotFoundError):
            await store.environments.get(DEMO_ENVIRONMENT)
            return
        missing = missing_tools()
        if missing:
            logger.warning(
                "demo: no OS image to reinstall with: %s missing (Debian: apt install fdisk "
                "dosfstools mtools e2fsprogs)", ", ".join(missing),
            )  # fmt: skip
            return
        image = self.root / "sim" / "demo-os.img"
        try:
            await asyncio.to_thread(build_demo_image, image)
            await EnvironmentLibrary(self.root, store.environments).add(
                DEMO_ENVIRONMENT, image, created_by="demo",
                description="piman's demo OS: cloud-init seeds, 8 MiB of data",
            )  # fmt: skip
        except (OSError, subprocess.CalledProcessError, PimanError) as err:
            logger.warning("demo: the demo OS image could not be made: %s", err)
            return
        finally:
            image.unlink(missing_ok=True)
        logger.info(
            "demo: environment %s ready: press Deploy on a node, or run "
            "`piman deploy %s -c %s`", DEMO_ENVIRONMENT, self.pis[0].name, self.config_path,
        )  # fmt: skip

    async def run(self, on_ready: Callable[[str], None] | None = None) -> None:
        """Run the manager and the simulated fleet until stopped."""
        if not self.logins:
            await self.make_users()
        async with asyncio.TaskGroup() as group:
            manager = group.create_task(self.manager.run(), name="manager")
            ready = asyncio.create_task(self.manager.ready.wait())
            done, _ = await asyncio.wait({manager, ready}, return_when=asyncio.FIRST_COMPLETED)
            if ready not in done:
                ready.cancel()
                return
            for pi in self.pis:  # until the power capability drives them, Pis start powered
                pi.set_power(True)
            sims = [
                group.create_task(self.demo_environment(), name="sim-environment"),
                group.create_task(run_switches(self.config, self.pis), name="sim-switches"),
                group.create_task(run_netboot(self.config, self.pis), name="sim-netboot"),
                group.create_task(run_agents(self.pis), name="sim-agents"),
            ]
            if on_ready is not None:
                on_ready(self.url)
            await self._stop.wait()
            for task in sims:
                task.cancel()
            with contextlib.suppress(Exception):
                self.manager.stop()
