"""Vendor profiles of the ``snmp-poe`` driver: an OID map plus value translation (PROTOCOLS.md §3).

A :class:`Profile` says where a port's admin switch is, what to write for on and off, and, when
the switch has them, where its PSE detection status and power reading are. OIDs are templates
with ``{g}`` (the PSE group: 1 on a single switch, the unit number on a stack) and ``{p}`` (the
port index: the port number plus the switch's ``port_offset``).
"""

from __future__ import annotations

from dataclasses import dataclass

from piman.fleet.lifecycle import PowerState

__all__ = ["AUTO_ORDER", "DETECTION_NAMES", "PROFILES", "Profile"]

# RFC 3621 pethPsePortDetectionStatus.
DETECTION_NAMES: dict[int, str] = {
    1: "disabled",
    2: "searching",
    3: "deliveringPower",
    4: "fault",
    5: "test",
    6: "otherFault",
}

_RFC3621_PORT = "1.3.6.1.2.1.105.1.1.1"  # pethPsePortTable.pethPsePortEntry
_NETGEAR_PORT = "1.3.6.1.4.1.4526.11.16.1.1.1"  # Netgear's copy of the RFC table
_TPLINK_PORT = "1.3.6.1.4.1.11863.6.56.1.1.2.1.1"  # tpPoePortConfigEntry
_CISCO_PORT_MW = "1.3.6.1.4.1.9.9.402.1.2.1.9"  # cpeExtPsePortPwrConsumption (mW)


@dataclass(frozen=True, slots=True)
class Profile:
    """How one family of switches exposes PoE ports over SNMP."""

    name: str
    admin: str  # OID template of the settable admin switch
    on: int
    off: int
    detection: str | None = None  # OID template of the detection status (RFC 3621 values)
    watts: str | None = None  # OID template of the port's power draw
    watts_scale: float = 1.0  # multiply the raw reading to get watts
    probe: str | None = None  # what `profile: auto` reads to recognise the switch

    def oid(self, template: str, group: int, port: int) -> str:
        return template.format(g=group, p=port)

    def admin_oid(self, group: int, port: int) -> str:
        return self.oid(self.admin, group, port)

    def detection_oid(self, group: int, port: int) -> str | None:
        return None if self.detection is None else self.oid(self.detection, group, port)

    def watts_oid(self, group: int, port: int) -> str | None:
        return None if self.watts is None else self.oid(self.watts, group, port)

    def value_for(self, state: PowerState) -> int:
        if state is PowerState.ON:
            return self.on
        if state is PowerState.OFF:
            return self.off
        raise ValueError(f"cannot set a port to {state}")

    def admin_state(self, raw: object) -> PowerState:
        if raw == self.on:
            return PowerState.ON
        if raw == self.off:
            return PowerState.OFF
        return PowerState.UNKNOWN

    @staticmethod
    def detection_name(raw: object) -> str:
        if isinstance(raw, int):
            return DETECTION_NAMES.get(raw, f"unknown({raw})")
        return f"unknown({raw!r})"


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            name="rfc3621",
            admin=_RFC3621_PORT + ".3.{g}.{p}",  # pethPsePortAdminEnable: 1 true, 2 false
            on=1,
            off=2,
            detection=_RFC3621_PORT + ".6.{g}.{p}",  # pethPsePortDetectionStatus
            probe=_RFC3621_PORT + ".3.{g}.{p}",
        ),
        Profile(
            name="netgear",
            admin=_NETGEAR_PORT + ".3.{g}.{p}",
            on=1,
            off=2,
            detection=_NETGEAR_PORT + ".6.{g}.{p}",
            probe=_NETGEAR_PORT + ".3.{g}.{p}",
        ),
        Profile(
            name="tplink",
            admin=_TPLINK_PORT + ".2.{p}",  # tpPoePortStatus: 0 off, 1 on
            on=1,
            off=0,
            watts=_TPLINK_PORT + ".7.{p}",  # tpPoePower, 0.1 W
            watts_scale=0.1,
            probe=_TPLINK_PORT + ".2.{p}",
        ),
        Profile(
            name="cisco",
            admin=_RFC3621_PORT + ".3.{g}.{p}",
            on=1,
            off=2,
            detection=_RFC3621_PORT + ".6.{g}.{p}",
            watts=_CISCO_PORT_MW + ".{g}.{p}",
            watts_scale=0.001,
            probe=_CISCO_PORT_MW + ".{g}.{p}",
        ),
    )
}

# `profile: auto` probes in this order. TP-Link first: probing it after other vendors' OIDs
# can make it stop answering (PROTOCOLS.md §3). Cisco before plain RFC 3621, which it extends.
AUTO_ORDER: tuple[str, ...] = ("tplink", "netgear", "cisco", "rfc3621")
