"""MAC → port: read a switch's forwarding table (BRIDGE-MIB) and compare it with the config.

``dot1dTpFdbPort`` (``1.3.6.1.2.1.17.4.3.1.2.<mac as 6 decimals>``) gives the bridge port each
learnt MAC sits on; ``dot1dBasePortIfIndex`` (``1.3.6.1.2.1.17.1.4.1.2.<bridge port>``) maps a
bridge port to its interface index. On the switches piman knows, bridge port N is front port N.
LLDP-MIB's remote table (``lldpRemTable``, ``1.0.8802.1.1.2.1.4.1.1``, indexed by time mark,
local port and index) names the neighbour heard on each port (a Pi running ``lldpd``): its
chassis and port ids (a MAC when their subtype says so) and its system name; :func:`read_lldp`
reads it, and a switch without the table simply has no rows. :func:`compare` is pure: it
says, for every MAC the configuration knows, where the config puts it and where the switch
saw it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from piman.config.models import Config
from piman.config.power import SwitchSettings
from piman.power.snmp import SnmpClient

__all__ = [
    "DOT1D_BASE_PORT_IFINDEX",
    "DOT1D_TP_FDB_PORT",
    "LLDP_REM",
    "FdbEntry",
    "LldpNeighbour",
    "MapRow",
    "compare",
    "read_fdb",
    "read_lldp",
    "yaml_fixes",
]

DOT1D_TP_FDB_PORT = "1.3.6.1.2.1.17.4.3.1.2"
DOT1D_BASE_PORT_IFINDEX = "1.3.6.1.2.1.17.1.4.1.2"
LLDP_REM = "1.0.8802.1.1.2.1.4.1.1"  # lldpRemEntry: .4 chassis id subtype, .5 chassis id,
# .6 port id subtype, .7 port id, .9 system name; index timeMark.localPortNum.index


@dataclass(frozen=True, slots=True)
class FdbEntry:
    mac: str
    port: int
    if_index: int | None


@dataclass(frozen=True, slots=True)
class LldpNeighbour:
    """The neighbour an LLDP switch heard on one of its ports."""

    port: int  # lldpRemLocalPortNum
    mac: str | None  # the port id if it is a MAC, else the chassis id if it is one
    name: str | None  # lldpRemSysName


@dataclass(frozen=True, slots=True)
class MapRow:
    """One MAC seen on the switch, or one configured MAC that was not seen."""

    mac: str
    node: str | None  # the configured node with this MAC
    seen_port: int | None  # where the switch saw it (None: not seen)
    configured_port: int | None  # where the configuration puts it on this switch
    status: str  # "ok", "moved", "unconfigured", "not seen", "elsewhere"


async def read_fdb(client: SnmpClient) -> list[FdbEntry]:
    """The switch's learnt MACs and their ports."""
    if_index = {}
    for oid, value in await client.walk(DOT1D_BASE_PORT_IFINDEX):
        if isinstance(value, int):
            if_index[int(oid.rsplit(".", 1)[1])] = value
    entries = []
    for oid, value in await client.walk(DOT1D_TP_FDB_PORT):
        parts = oid[len(DOT1D_TP_FDB_PORT) + 1 :].split(".")
        if len(parts) != 6 or not isinstance(value, int):
            continue
        mac = ":".join(f"{int(p):02x}" for p in parts)
        entries.append(FdbEntry(mac, value, if_index.get(value)))
    return sorted(entries, key=lambda e: (e.port, e.mac))


def _mac_of(value: object) -> str | None:
    if isinstance(value, bytes) and len(value) == 6:
        return ":".join(f"{b:02x}" for b in value)
    return None


async def read_lldp(client: SnmpClient, *, max_rows: int = 4096) -> list[LldpNeighbour]:
    """The switch's LLDP neighbours (none when the switch has no LLDP-MIB)."""
    rows: dict[tuple[str, str, str], dict[int, object]] = {}
    for oid, value in await client.walk(LLDP_REM, max_rows=max_rows):
        parts = oid[len(LLDP_REM) + 1 :].split(".")
        if len(parts) != 4 or not all(p.isdigit() for p in parts):
            continue
        column, key = int(parts[0]), (parts[1], parts[2], parts[3])
        if column in (4, 5, 6, 7, 9):
            rows.setdefault(key, {})[column] = value
    found = []
    for (_time_mark, port, _index), cols in sorted(rows.items(), key=lambda r: int(r[0][1])):
        mac = _mac_of(cols.get(7)) if cols.get(6) == 3 else None
        if mac is None and cols.get(4) == 4:
            mac = _mac_of(cols.get(5))
        name = cols.get(9)
        text = name.decode("utf-8", "replace").strip() if isinstance(name, bytes) else None
        found.append(LldpNeighbour(int(port), mac, text or None))
    return found


def compare(config: Config, switch: SwitchSettings, entries: Sequence[FdbEntry]) -> list[MapRow]:
    """Where the switch sees each known MAC, against where the configuration puts it.

    MACs on the uplink port (the rest of the network) are left out.
    """
    by_mac = {n.mac: n for n in config.nodes if n.mac is not None}
    rows: list[MapRow] = []
    seen: set[str] = set()
    for e in entries:
        if switch.uplink_port is not None and e.port == switch.uplink_port:
            continue
        node = by_mac.get(e.mac)
        seen.add(e.mac)
        if node is None:
            rows.append(MapRow(e.mac, None, e.port, None, "unconfigured"))
            continue
        on_this = node.switch is not None and config.switch(node.switch) is switch
        configured = node.port if on_this else None
        if not on_this:
            status = "elsewhere"
        elif configured == e.port:
            status = "ok"
        else:
            status = "moved"
        rows.append(MapRow(e.mac, node.name, e.port, configured, status))
    for node in config.nodes:
        if node.mac is None or node.mac in seen or node.switch is None:
            continue
        if config.switch(node.switch) is switch:
            rows.append(MapRow(node.mac, node.name, None, node.port, "not seen"))
    return rows


def yaml_fixes(switch: SwitchSettings, rows: Sequence[MapRow]) -> list[str]:
    """The ``nodes:`` lines to change so the config matches what the switch sees."""
    lines = []
    for r in rows:
        if r.status in {"moved", "elsewhere"} and r.node is not None:
            where = f"switch: {switch.name}, port: {r.seen_port}"
            lines.append(f'  - {{name: {r.node}, {where}, mac: "{r.mac}"}}')
    return lines
