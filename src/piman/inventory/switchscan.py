"""The switches' view for discovery: which MAC sits on which port (BRIDGE-MIB), and which
neighbour LLDP heard there (LLDP-MIB, where the switch has it).

Every configured switch with the ``snmp-poe`` driver is asked at once, each with its own SNMP
client; a switch that fails is reported (``SwitchScan.problems``) and the others still count.
MACs learnt on a switch's uplink port are the rest of the network, not devices on that switch,
and are left out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from piman.config.power import SwitchSettings
from piman.errors import PimanError
from piman.inventory.bridge import read_fdb, read_lldp
from piman.inventory.discover import Observation, Seen
from piman.power.snmp import SnmpClient, SnmpTarget

__all__ = ["SwitchScan", "scan", "scannable"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class SwitchScan:
    observations: list[Observation] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # "rack1: no answer …", one per switch
    switches: int = 0


def scannable(switches: Sequence[SwitchSettings]) -> list[SwitchSettings]:
    """The switches discovery can ask: those spoken to over SNMP."""
    return [sw for sw in switches if sw.driver == "snmp-poe"]


async def _one(sw: SwitchSettings, lldp: bool) -> list[Observation]:
    address = str(sw.address) if sw.address is not None else None
    client = SnmpClient(SnmpTarget.from_settings(sw.name, address, sw.snmp, vlan=sw.snmp.vlan))
    try:
        entries = await read_fdb(client)
        neighbours = await read_lldp(client) if lldp else []
    finally:
        await client.close()
    now = datetime.now(UTC)
    out = []
    for e in entries:
        if sw.uplink_port is not None and e.port == sw.uplink_port:
            continue
        seen = Seen("bridge", f"{sw.name}:{e.port}", now)
        out.append(Observation(seen, e.mac, switch=sw.name, port=e.port))
    for n in neighbours:
        if sw.uplink_port is not None and n.port == sw.uplink_port:
            continue
        seen = Seen("lldp", f"{sw.name}:{n.port}", now)
        out.append(Observation(seen, n.mac, hostname=n.name, switch=sw.name, port=n.port))
    return out


async def scan(switches: Sequence[SwitchSettings], *, lldp: bool = True) -> SwitchScan:
    """Ask every SNMP switch of ``switches`` (see the module's docstring)."""
    chosen = scannable(switches)
    result = SwitchScan(switches=len(chosen))
    outcomes = await asyncio.gather(*(_one(sw, lldp) for sw in chosen), return_exceptions=True)
    for sw, outcome in zip(chosen, outcomes, strict=True):
        if isinstance(outcome, PimanError):
            result.problems.append(f"{sw.name}: {outcome}")
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            result.observations.extend(outcome)
    return result
