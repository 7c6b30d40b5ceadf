"""The manager builds the TFTP service from the configuration: boot trees, metrics, warnings."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from pathlib import Path

import pytest

from piman.config import parse_config
from piman.manager import Manager
from piman.netboot.service import Netboot
from tests.support import free_udp_port, needs_tool

CONFIG = """\
manager: {{address: 198.18.0.1, network: 198.18.0.0/24, data_dir: {data_dir}}}
tftp: {{enabled: true, listen: "127.0.0.1:{port}"}}
nodes:
  - {{name: rack1-01, mac: "dc:a6:32:00:00:01", ip: 198.18.0.11, serial: 1234abcd, model: pi4}}
"""


async def curl(url: str, out: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-o", str(out), url, "--tftp-blksize", "1468",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    async with asyncio.timeout(60):
        text, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, text.decode()


async def test_manager_serves_boot_trees_over_tftp_and_exports_metrics(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    needs_tool("curl")
    data = tmp_path / "data"
    (data / "boot").mkdir(parents=True)
    (data / "boot" / "start4.elf").write_bytes(os.urandom(300_000))
    node_boot = data / "nodes" / "rack1-01" / "boot"
    node_boot.mkdir(parents=True)
    (node_boot / "start4.elf").write_bytes(os.urandom(200_000))
    with (node_boot / "huge.img").open("wb") as f:
        f.truncate(65535 * 1024)  # one byte too many for a Pi 4 at blksize 1024
    port = free_udp_port()
    config = parse_config(CONFIG.format(data_dir=data, port=port), "piman.yaml")
    manager = Manager(config, capabilities=("inventory", "netboot"))
    caplog.set_level(logging.WARNING, logger="piman.netboot")
    task = asyncio.create_task(manager.run())
    try:
        async with asyncio.timeout(30):
            await manager.ready.wait()
            assert manager.ctx is not None
            netboot = manager.ctx.netboot
            assert isinstance(netboot, Netboot)
            assert netboot.tftp is not None
            await netboot.tftp.ready.wait()
        assert "huge.img" in caplog.text  # warned at start

        out = tmp_path / "out"
        code, text = await curl(f"tftp://127.0.0.1:{port}/start4.elf", out)
        assert code == 0, text
        digest = hashlib.sha256(out.read_bytes()).hexdigest()
        assert digest == hashlib.sha256((data / "boot" / "start4.elf").read_bytes()).hexdigest()

        code, text = await curl(f"tftp://127.0.0.1:{port}/1234abcd/start4.elf", out)
        assert code == 0, text
        assert out.read_bytes() == (node_boot / "start4.elf").read_bytes()

        code, text = await curl(f"tftp://127.0.0.1:{port}/1234abcd/cmdline.txt", out)
        assert code == 0, text
        assert b"root=/dev/mmcblk0p2" in out.read_bytes()

        async with asyncio.timeout(10):
            while netboot.tftp.transfers:  # noqa: ASYNC110 - polling the server's table
                await asyncio.sleep(0.02)
        registry = manager.registry
        assert registry.get_sample_value("piman_tftp_transfers_total", {"outcome": "ok"}) == 3
        sent = registry.get_sample_value("piman_tftp_sent_bytes_total")
        assert sent is not None
        assert sent >= 500_000
        node = await manager.ctx.store.nodes.get("rack1-01")
        assert node.last_seen is not None
    finally:
        manager.stop()
        async with asyncio.timeout(10):
            await task
