"""Discovery: what every source saw, merged into one candidate per device.

Theory of operation. Each source turns what it read into :class:`Observation` values: the
manager's discovered list (DHCP and TFTP sightings, :func:`from_discovered`), the kernel's
neighbour table (``inventory.neighbours``), mDNS announcements (``inventory.mdns``) and the
switches' forwarding and LLDP tables (``inventory.switchscan``). An observation says what one
source saw of one device, where and when: a MAC (mDNS may only know an address), an address, a
host name, a model, a switch port. Nothing here does I/O.

:func:`merge` groups the observations by MAC. One without a MAC joins the device whose MAC
another source saw at the same address; if none did, it stays a candidate without a MAC (it
can be shown, not accepted). Per field, the newest observation that says something wins; a
model from the netboot servers (a Pi's DHCP option 97) beats the one its OUI suggests. Each
candidate keeps every ``Seen`` (source, where, when) it was built from, oldest first.

Candidates are sorted Raspberry Pis first (by OUI), then by address, then by MAC. Devices that
are nodes already carry the node's name and are left out unless asked for.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from piman.fleet.models import PI_OUIS, PiModel, model_from_mac
from piman.fleet.records import DiscoveredDevice

__all__ = [
    "PI_VENDOR",
    "SOURCES",
    "Candidate",
    "Observation",
    "Seen",
    "from_discovered",
    "merge",
    "node_line",
    "vendor_of",
]

PI_VENDOR = "Raspberry Pi"
SOURCES = ("dhcp", "tftp", "arp", "mdns", "bridge", "lldp")

# A small note of vendors a rack commonly holds besides Pis (first three octets).
_OUI_NOTE: dict[str, str] = {
    "52:54:00": "QEMU/KVM",
    "08:00:27": "VirtualBox",
    "00:50:56": "VMware",
    "00:0c:29": "VMware",
    "00:16:3e": "Xen",
    "00:15:5d": "Hyper-V",
    "02:42:ac": "Docker",
}


@dataclass(frozen=True, slots=True)
class Seen:
    """One source saw the device: which (``arp``, ``mdns`` …), where (an interface, a switch
    port, a manager, a service type) and when (aware UTC)."""

    source: str
    where: str
    when: datetime


@dataclass(frozen=True, slots=True)
class Observation:
    """What one source saw of one device (None: this source does not say)."""

    seen: Seen
    mac: str | None
    ip: str | None = None
    hostname: str | None = None
    model: str | None = None
    switch: str | None = None
    port: int | None = None


@dataclass(frozen=True, slots=True)
class Candidate:
    """One device, as every source saw it. ``node``: the name of the node it already is."""

    mac: str | None
    vendor: str
    model: str | None
    ip: str | None
    hostname: str | None
    switch: str | None
    port: int | None
    sources: tuple[Seen, ...]
    node: str | None = None

    @property
    def is_pi(self) -> bool:
        return self.vendor == PI_VENDOR

    @property
    def switch_port(self) -> str | None:
        if self.switch is None:
            return None
        return f"{self.switch}:{self.port}" if self.port is not None else self.switch

    @property
    def source_names(self) -> list[str]:
        """The sources that saw it, each once, in :data:`SOURCES` order."""
        names = {s.source for s in self.sources}
        return [s for s in SOURCES if s in names] + sorted(names - set(SOURCES))


def vendor_of(mac: str | None) -> str:
    """``Raspberry Pi`` for a Pi OUI, a few other well-known vendors, ``locally administered``
    for a MAC with that bit set, else ``unknown``."""
    if mac is None:
        return "unknown"
    prefix = mac.lower()[:8]
    if prefix in PI_OUIS:
        return PI_VENDOR
    if prefix in _OUI_NOTE:
        return _OUI_NOTE[prefix]
    try:
        first = int(prefix[:2], 16)
    except ValueError:
        return "unknown"
    return "locally administered" if first & 0x02 else "unknown"


def from_discovered(devices: Iterable[DiscoveredDevice], where: str) -> list[Observation]:
    """The manager's discovered list as observations.

    The list does not record which server saw a device. Only DHCP learns a model or a vendor
    class, so a device with either is a ``dhcp`` sighting; one with neither was named by a TFTP
    request (a serial in the path) and is a ``tftp`` one.
    """
    out = []
    for d in devices:
        source = "dhcp" if d.model is not None or d.vendor_class is not None else "tftp"
        out.append(Observation(Seen(source, where, d.last_seen), d.mac, ip=d.ip, model=d.model))
    return out


@dataclass(slots=True)
class _Acc:
    mac: str | None
    seen: list[Observation] = field(default_factory=list)


def _newest(found: Sequence[Observation], attr: str) -> object | None:
    for o in reversed(found):  # sorted by time: the newest last
        value: object | None = getattr(o, attr)
        if value is not None:
            return value
    return None


def _ip_key(ip: str | None) -> int:
    if ip is None:
        return 1 << 40
    try:
        return int(ipaddress.IPv4Address(ip))
    except ValueError:
        return 1 << 41


def _candidate(acc: _Acc, known: Mapping[str, str]) -> Candidate:
    found = sorted(acc.seen, key=lambda o: o.seen.when)
    netboot = [o for o in found if o.seen.source in ("dhcp", "tftp")]
    model = _newest(netboot, "model") or _newest(found, "model")
    if model is None and acc.mac is not None:
        by_oui = model_from_mac(acc.mac)
        model = None if by_oui is PiModel.UNKNOWN else by_oui.value
    ports = [o for o in found if o.switch is not None]
    port_seen = ports[-1] if ports else None
    return Candidate(
        mac=acc.mac,
        vendor=vendor_of(acc.mac),
        model=str(model) if model is not None else None,
        ip=_str(_newest(found, "ip")),
        hostname=_str(_newest(found, "hostname")),
        switch=port_seen.switch if port_seen else None,
        port=port_seen.port if port_seen else None,
        sources=tuple(o.seen for o in found),
        node=known.get(acc.mac) if acc.mac is not None else None,
    )


def _str(value: object | None) -> str | None:
    return None if value is None else str(value)


def merge(
    observations: Iterable[Observation],
    *,
    known: Mapping[str, str] | None = None,
    include_known: bool = False,
) -> list[Candidate]:
    """One candidate per device (see the module's docstring). ``known`` maps the MACs of
    existing nodes to their names; those devices are left out unless ``include_known``."""
    known = known or {}
    by_mac: dict[str, _Acc] = {}
    macless: list[Observation] = []
    for o in observations:
        if o.mac is None:
            macless.append(o)
            continue
        by_mac.setdefault(o.mac, _Acc(o.mac)).seen.append(o)
    # An address → the MAC seen at it most recently (the neighbour table, DHCP, a switch …).
    at: dict[str, tuple[datetime, str]] = {}
    for acc in by_mac.values():
        for o in acc.seen:
            if o.ip is not None and acc.mac is not None:
                last = at.get(o.ip)
                if last is None or last[0] <= o.seen.when:
                    at[o.ip] = (o.seen.when, acc.mac)
    alone: dict[str, _Acc] = {}
    for o in macless:
        owner = at.get(o.ip) if o.ip is not None else None
        if owner is not None:
            by_mac[owner[1]].seen.append(o)
        else:  # keyed by address, else by host name: one candidate per device still
            key = o.ip or o.hostname or o.seen.where
            alone.setdefault(key, _Acc(None)).seen.append(o)
    candidates = [_candidate(acc, known) for acc in (*by_mac.values(), *alone.values())]
    if not include_known:
        candidates = [c for c in candidates if c.node is None]
    candidates.sort(key=lambda c: (not c.is_pi, c.node is not None, _ip_key(c.ip), c.mac or ""))
    return candidates


_YAML_PLAIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def node_line(
    candidate: Candidate,
    name: str,
    *,
    network: ipaddress.IPv4Network | None = None,
    switches: Iterable[str] = (),
) -> str:
    """The ``nodes:`` entry (one YAML flow mapping, indented for the config) that declares
    this candidate as node ``name``. The address is given only inside ``network`` (the config
    refuses others without an ``agent_url``), the switch port only on a configured switch, the
    model only when it names one."""
    parts = [f"name: {name}"]
    if candidate.mac is not None:
        parts.append(f'mac: "{candidate.mac}"')
    note = ""
    if candidate.ip is not None:
        inside = network is None or ipaddress.IPv4Address(candidate.ip) in network
        if inside:
            parts.append(f"ip: {candidate.ip}")
        else:
            note = f"  # seen at {candidate.ip}, outside manager.network"
    if candidate.model and candidate.model not in (PiModel.PI.value, PiModel.UNKNOWN.value):
        model = candidate.model
        parts.append(f"model: {model if _YAML_PLAIN.match(model) else repr(model)}")
    if candidate.switch is not None and candidate.switch in set(switches):
        parts.append(f"switch: {candidate.switch}")
        if candidate.port is not None:
            parts.append(f"port: {candidate.port}")
    if candidate.hostname and _YAML_PLAIN.match(candidate.hostname):
        parts.append(f"hostname: {candidate.hostname}")
    return "  - {" + ", ".join(parts) + "}" + note
