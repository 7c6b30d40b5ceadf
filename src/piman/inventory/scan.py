"""One discovery run on this machine: the sources that look at the network from here.

:func:`run` does what a :class:`ScanPlan` asks, concurrently where that is safe: the switches'
tables (SNMP) at the same time as the optional sweep and the mDNS listening; then the neighbour
table is read once, after both. Addresses that mDNS announced without a MAC, inside the scope,
are then each sent one datagram (as the sweep would) and the table read again, so that their
MACs join them. The manager's discovered list is not read here: it lives in the manager's
memory (``GET /api/v1/discovered``).

Progress goes to a callback (``progress(source, text)``): the CLI shows it on stderr.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from piman.config.power import SwitchSettings
from piman.inventory import mdns, neighbours, switchscan
from piman.inventory.discover import Observation

__all__ = ["ScanPlan", "ScanResult", "run"]

Progress = Callable[[str, str], None]


@dataclass(frozen=True, slots=True)
class ScanPlan:
    """What to look at. ``scope``: the subnet whose neighbour entries count (and that a sweep
    covers); None: every entry, no sweep."""

    scope: ipaddress.IPv4Network | None
    sweep: bool = False
    rate: float = neighbours.DEFAULT_RATE
    settle: float = neighbours.SETTLE
    mdns_seconds: float = 0.0
    mdns_max: int = mdns.MAX_DEVICES
    switches: Sequence[SwitchSettings] = ()
    lldp: bool = True
    own: Sequence[str] = ()  # this machine's addresses: not swept


@dataclass(slots=True)
class ScanResult:
    observations: list[Observation] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # one line per source that failed
    swept: neighbours.SweepResult | None = None
    mdns: mdns.MdnsResult | None = None
    switches: int = 0
    neighbours: int = 0


def _quiet(_source: str, _text: str) -> None:
    return None


async def _switches(plan: ScanPlan, result: ScanResult, progress: Progress) -> None:
    if not switchscan.scannable(plan.switches):
        return
    progress("switches", f"asking {len(switchscan.scannable(plan.switches))} switch(es)")
    found = await switchscan.scan(plan.switches, lldp=plan.lldp)
    result.switches = found.switches
    result.observations.extend(found.observations)
    result.problems.extend(f"switch {p}" for p in found.problems)
    progress("switches", f"{len(found.observations)} MAC/port entries")


async def _sweep(plan: ScanPlan, result: ScanResult, progress: Progress) -> None:
    if not plan.sweep or plan.scope is None:
        return
    scope = plan.scope

    def step(sent: int, total: int) -> None:
        progress("sweep", f"{sent}/{total} addresses of {scope}")

    try:
        result.swept = await neighbours.sweep(
            scope, rate=plan.rate, settle=plan.settle, skip=plan.own, progress=step
        )
    except OSError as err:
        result.problems.append(f"sweep: {err}")


async def _mdns(plan: ScanPlan, result: ScanResult, progress: Progress) -> None:
    if plan.mdns_seconds <= 0:
        return

    def step(elapsed: float, heard: int) -> None:
        progress("mdns", f"{elapsed:.0f}/{plan.mdns_seconds:g} s, {heard} heard")

    try:
        result.mdns = await mdns.browse(plan.mdns_seconds, max_devices=plan.mdns_max, progress=step)
    except OSError as err:
        result.problems.append(f"mdns: cannot listen: {err}")
        return
    result.observations.extend(mdns.observations(result.mdns))


async def _poke(addresses: Sequence[str], settle: float) -> None:
    """One datagram to each address, so that the kernel asks ARP for its MAC."""
    for ip in addresses:
        await neighbours.sweep(ipaddress.IPv4Network(f"{ip}/32"), settle=0)
    await asyncio.sleep(settle)


async def run(plan: ScanPlan, progress: Progress = _quiet) -> ScanResult:
    """Run the plan (see the module's docstring)."""
    result = ScanResult()
    await asyncio.gather(
        _switches(plan, result, progress),
        _sweep(plan, result, progress),
        _mdns(plan, result, progress),
    )
    table = await neighbours.read_neighbours()
    known = {n.ip for n in table}
    scope = plan.scope
    missing = sorted(
        {
            o.ip
            for o in result.observations
            if o.seen.source == "mdns" and o.mac is None and o.ip is not None
            and o.ip not in known and o.ip not in plan.own
            and (scope is None or ipaddress.IPv4Address(o.ip) in scope)
        }
    )  # fmt: skip
    if missing:
        progress("arp", f"asking the MACs of {len(missing)} mDNS address(es)")
        await _poke(missing, min(plan.settle, 1.0))
        table = await neighbours.read_neighbours()
    result.neighbours = len(table)
    result.observations.extend(neighbours.observations(table, scope))
    return result
