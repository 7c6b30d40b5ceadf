"""The demo's virtual PoE switch: a real SNMP agent that net-snmp and piman both talk to."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from piman.config import Config
from piman.inventory.bridge import read_fdb
from piman.power.controller import PowerController
from piman.power.snmp import SnmpClient, SnmpTarget
from piman.sim.fleet import build_demo_config
from piman.sim.switch import SwitchMib, handle, run_switches
from tests.support import needs_tool

DETECTION = "1.3.6.1.2.1.105.1.1.1.6.1"
ADMIN = "1.3.6.1.2.1.105.1.1.1.3.1"


class Fleet:
    """A demo configuration and its virtual Pis, powered."""

    def __init__(self, tmp: Path, nodes: int) -> None:
        data, self.pis = build_demo_config(tmp, nodes, 18000)
        self.config = Config.model_validate(data)
        for pi in self.pis:
            pi.powered.set()


async def net_snmp(*argv: str) -> str:
    result = await asyncio.to_thread(
        subprocess.run, list(argv), capture_output=True, text=True, check=False
    )
    return (result.stdout + result.stderr).strip()


async def test_ports_power_the_virtual_pis_and_net_snmp_agrees(tmp_path: Path) -> None:
    needs_tool("snmpget", "snmpset")
    fleet = Fleet(tmp_path, 4)
    sw = fleet.config.switches[0]
    where = f"127.0.0.1:{sw.snmp.port}"
    task = asyncio.create_task(run_switches(fleet.config, fleet.pis))
    controller = PowerController(fleet.config, retry_delays=(0.2, 0.5))
    try:
        pi = fleet.pis[0]
        [o] = await controller.run("off", controller.resolve([pi.name]))
        assert o.ok, o.error
        assert not pi.powered.is_set()
        assert fleet.pis[1].powered.is_set()
        assert (
            await net_snmp(
                "snmpget",
                "-v2c",
                "-c",
                "private",
                "-Oqv",
                where,
                f"{ADMIN}.{pi.port}",
                f"{DETECTION}.{pi.port}",
            )
            == "2\n1"
        )

        [o] = await controller.run("on", controller.resolve([pi.name]))
        assert o.ok, o.error
        assert o.reading is not None
        assert o.reading.detection == "deliveringPower"
        assert pi.powered.is_set()

        # net-snmp switches a port too, and the Pi follows it.
        await net_snmp("snmpset", "-v2c", "-c", "private", where, f"{ADMIN}.{pi.port}", "i", "2")
        assert not pi.powered.is_set()
        await net_snmp("snmpset", "-v2c", "-c", "private", where, f"{ADMIN}.{pi.port}", "i", "1")
        assert pi.powered.is_set()

        # A port with no Pi is searching; the uplink port is refused.
        empty = sw.ports - 1 if sw.ports else 40
        [o] = await controller.run("status", [controller.target(sw.name, empty)])
        assert o.reading is not None
        assert o.reading.detection == "searching"
    finally:
        await controller.close()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_bridge_table_lists_the_powered_pis(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path, 4)
    sw = fleet.config.switches[0]
    task = asyncio.create_task(run_switches(fleet.config, fleet.pis))
    client = SnmpClient(SnmpTarget.from_settings(sw.name, None, sw.snmp))
    try:
        await asyncio.sleep(0.05)
        entries = {e.mac: e.port for e in await read_fdb(client)}
        mine = {pi.mac: pi.port for pi in fleet.pis if pi.switch == sw.name}
        assert entries == mine
    finally:
        await client.close()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_agent_ignores_garbage_and_wrong_communities() -> None:
    mib = SwitchMib("s", 2)
    assert handle(mib, b"\x00garbage") is None
    assert handle(mib, b"") is None
