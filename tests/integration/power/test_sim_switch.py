"""The demo's virtual PoE switch: a real SNMP agent that net-snmp and piman both talk to."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from pyasn1.codec.ber import decoder, encoder  # type: ignore[import-untyped]
from pysnmp.proto import api

from piman.config import Config
from piman.inventory.bridge import read_fdb
from piman.power.controller import PowerController
from piman.power.snmp import SnmpClient, SnmpTarget
from piman.sim.fleet import build_demo_config
from piman.sim.switch import PORT_TABLE, SYS_DESCR, SwitchMib, handle, run_switches
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

        # A port with no Pi is searching.
        assert sw.ports is not None
        assert sw.uplink_port == sw.ports
        empty = sw.ports - 1
        assert empty not in {p.port for p in fleet.pis if p.switch == sw.name}
        [o] = await controller.run("status", [controller.target(sw.name, empty)])
        assert o.reading is not None
        assert o.reading.detection == "searching"

        # The uplink port is refused and never sent: the virtual switch takes a SET on any of
        # its ports, and it still reads the uplink as on.
        for action in ("off", "cycle"):
            [o] = await controller.run(action, [controller.target(sw.name, sw.uplink_port)])
            assert not o.ok
            assert f"is the uplink_port of switch {sw.name!r}" in (o.error or "")
        uplink = f"{ADMIN}.{sw.uplink_port}"
        assert await net_snmp("snmpget", "-v2c", "-c", "private", "-Oqv", where, uplink) == "1"

        # A wrong community gets no answer at all, as from a real switch.
        wrong = await net_snmp(
            "snmpget", "-v2c", "-c", "wrong", "-t", "0.5", "-r", "0", "-Oqv", where, uplink
        )
        assert wrong == "Timeout: No Response from " + where + "."
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


def snmp_request(
    community: bytes, oid: tuple[int, ...], set_to: int | None = None, *, version: int = 1
) -> bytes:
    """A GET (or a SET of an integer) of one OID, encoded as a manager sends it (v2c default)."""
    pmod = api.PROTOCOL_MODULES[version]
    pdu = pmod.GetRequestPDU() if set_to is None else pmod.SetRequestPDU()
    pmod.apiPDU.set_defaults(pdu)
    value = pmod.Null("") if set_to is None else pmod.Integer(set_to)
    pmod.apiPDU.set_varbinds(pdu, [(oid, value)])
    msg = pmod.Message()
    pmod.apiMessage.set_defaults(msg)
    pmod.apiMessage.set_community(msg, community)
    pmod.apiMessage.set_pdu(msg, pdu)
    encoded: bytes = encoder.encode(msg)
    return encoded


def snmp_response(data: bytes | None, *, version: int = 1) -> tuple[int, list[object]]:
    """(error-status, values) of a response."""
    assert data is not None, "no answer"
    pmod = api.PROTOCOL_MODULES[version]
    msg, _ = decoder.decode(data, asn1Spec=pmod.Message())
    pdu = pmod.apiMessage.get_pdu(msg)
    values = [value for _, value in pmod.apiPDU.get_varbinds(pdu)]
    return int(pmod.apiPDU.get_error_status(pdu)), values


def test_agent_ignores_garbage_and_wrong_communities() -> None:
    changes: list[tuple[int, bool]] = []
    mib = SwitchMib(
        "s", 2, {1: "dc:a6:32:00:00:01"}, on_change=lambda p, on: changes.append((p, on))
    )
    admin1 = (*PORT_TABLE, 3, 1, 1)
    assert handle(mib, b"\x00garbage") is None
    assert handle(mib, b"") is None

    # Wrong community: no answer, for a GET as for a SET, and the port is untouched.
    assert handle(mib, snmp_request(b"wrong", SYS_DESCR)) is None
    assert handle(mib, snmp_request(b"wrong", admin1, 2)) is None
    assert handle(mib, snmp_request(b"wrong", admin1, 2, version=0), community=b"x") is None
    assert (mib.admin[1], mib.sets, changes) == (1, 0, [])

    # The read community reads, but may not write (noAccess); the write community may do both.
    status, [descr] = snmp_response(handle(mib, snmp_request(b"public", SYS_DESCR)))
    assert (status, bytes(descr)) == (0, b"piman virtual PoE switch s")  # type: ignore[call-overload]
    status, _ = snmp_response(handle(mib, snmp_request(b"public", admin1, 2)))
    assert status == 6  # noAccess
    assert (mib.admin[1], mib.sets, changes) == (1, 0, [])
    status, [value] = snmp_response(handle(mib, snmp_request(b"private", admin1, 2)))
    assert (status, int(value)) == (0, 2)  # type: ignore[call-overload]
    assert (mib.admin[1], mib.sets, changes) == (2, 1, [(1, False)])
    status, [value] = snmp_response(handle(mib, snmp_request(b"private", admin1)))
    assert (status, int(value)) == (0, 2)  # type: ignore[call-overload]
