"""Demo: virtual PoE switches — real SNMP agents on 127.0.0.1 whose ports power the virtual Pis.

Theory of operation. :class:`SwitchMib` is the switch's data, pure: the RFC 3621 port table
(``pethPsePortAdminEnable`` settable, ``pethPsePortDetectionStatus`` following it: 3
deliveringPower when on with a Pi attached, 2 searching when on with nothing attached,
1 disabled when off), ``sysDescr``, and BRIDGE-MIB's forwarding table (the MAC of each powered
Pi on its port). :func:`handle` turns one SNMP v1/v2c request (bytes) into a response (bytes)
with pysnmp's message codecs; a wrong community gets no answer, as on a real switch.
:class:`SnmpAgent` is the thin asyncio shell. :func:`run_switches` starts one agent per switch
of the demo configuration; a port switched off clears its Pi's ``powered`` event, on sets it.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast

from pyasn1.codec.ber import decoder, encoder  # type: ignore[import-untyped]
from pyasn1.error import PyAsn1Error  # type: ignore[import-untyped]

if TYPE_CHECKING:
    from piman.config.models import Config
    from piman.sim.pi import VirtualPi

__all__ = ["SnmpAgent", "SwitchMib", "handle", "run_switches"]

logger = logging.getLogger(__name__)

Oid = tuple[int, ...]

PORT_TABLE: Oid = (1, 3, 6, 1, 2, 1, 105, 1, 1, 1)
ADMIN, DETECTION = 3, 6
SYS_DESCR: Oid = (1, 3, 6, 1, 2, 1, 1, 1, 0)
FDB_PORT: Oid = (1, 3, 6, 1, 2, 1, 17, 4, 3, 1, 2)
BASE_PORT_IFINDEX: Oid = (1, 3, 6, 1, 2, 1, 17, 1, 4, 1, 2)
ON, OFF = 1, 2
DELIVERING, SEARCHING, DISABLED = 3, 2, 1
# RFC 3416 error-status values used here.
NO_SUCH_NAME, BAD_VALUE, NO_ACCESS, WRONG_TYPE, WRONG_VALUE, NOT_WRITABLE = 2, 3, 6, 7, 10, 17


class SwitchMib:
    """The data of one virtual PoE switch; ``on_change(port, on)`` hears every admin change."""

    def __init__(
        self,
        name: str,
        ports: int,
        attached: dict[int, str] | None = None,
        *,
        group: int = 1,
        on_change: Callable[[int, bool], None] | None = None,
    ) -> None:
        self.name = name
        self.ports = ports
        self.group = group
        self.attached = dict(attached or {})  # port -> MAC of the Pi on it
        self.admin = dict.fromkeys(range(1, ports + 1), ON)
        self.on_change = on_change
        self.sets = 0

    def _values(self) -> dict[Oid, Any]:
        values: dict[Oid, Any] = {SYS_DESCR: f"piman virtual PoE switch {self.name}".encode()}
        for port in range(1, self.ports + 1):
            values[(*PORT_TABLE, ADMIN, self.group, port)] = self.admin[port]
            values[(*PORT_TABLE, DETECTION, self.group, port)] = self.detection(port)
            values[(*BASE_PORT_IFINDEX, port)] = port
        for port, mac in self.attached.items():
            if self.admin.get(port) == ON:
                octets = tuple(int(b, 16) for b in mac.split(":"))
                values[(*FDB_PORT, *octets)] = port
        return values

    def detection(self, port: int) -> int:
        if self.admin[port] != ON:
            return DISABLED
        return DELIVERING if port in self.attached else SEARCHING

    def get(self, oid: Oid) -> Any | None:
        return self._values().get(oid)

    def next(self, oid: Oid) -> tuple[Oid, Any] | None:
        values = self._values()
        keys = sorted(values)
        i = bisect.bisect_right(keys, oid)
        return (keys[i], values[keys[i]]) if i < len(keys) else None

    def check_set(self, oid: Oid, value: object) -> int:
        """0 when ``oid := value`` is allowed, else the SNMP error status."""
        if len(oid) != len(PORT_TABLE) + 3 or oid[: len(PORT_TABLE)] != PORT_TABLE:
            return NOT_WRITABLE if oid in self._values() else NO_ACCESS
        column, group, port = oid[len(PORT_TABLE) :]
        if column != ADMIN or group != self.group or port not in self.admin:
            return NOT_WRITABLE if oid in self._values() else NO_ACCESS
        if not isinstance(value, int):
            return WRONG_TYPE
        return 0 if value in (ON, OFF) else WRONG_VALUE

    def set(self, oid: Oid, value: int) -> None:
        port = oid[-1]
        before = self.admin[port]
        self.admin[port] = value
        self.sets += 1
        if before != value and self.on_change is not None:
            self.on_change(port, value == ON)


def _encode_value(pmod: Any, value: Any) -> Any:
    if isinstance(value, bytes):
        return pmod.OctetString(value)
    return pmod.Integer(value)


def _plain(value: Any) -> object:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def handle(
    mib: SwitchMib, data: bytes, *, community: bytes = b"private", read_community: bytes = b"public"
) -> bytes | None:
    """One SNMP v1/v2c request → the response bytes, or None (garbage, wrong community)."""
    from pysnmp.proto import api

    try:
        version = int(api.decodeMessageVersion(data))
        pmod = api.PROTOCOL_MODULES[version]
        msg, _ = decoder.decode(data, asn1Spec=pmod.Message())
    except (PyAsn1Error, KeyError, ValueError):
        return None
    given = bytes(pmod.apiMessage.get_community(msg))
    if given not in (community, read_community):
        return None
    req = pmod.apiMessage.get_pdu(msg)
    rsp_msg = pmod.apiMessage.get_response(msg)
    rsp = pmod.apiMessage.get_pdu(rsp_msg)
    binds = [(tuple(oid), val) for oid, val in pmod.apiPDU.get_varbinds(req)]
    out: list[tuple[Oid, Any]] = []
    error = index = 0
    v1 = version == api.SNMP_VERSION_1

    def missing(i: int, oid: Oid, end: bool = False) -> None:
        nonlocal error, index
        if v1:
            error, index = error or NO_SUCH_NAME, index or i + 1
            out.append((oid, pmod.Null("")))
        else:
            out.append((oid, pmod.EndOfMibView("") if end else pmod.NoSuchInstance("")))

    if req.isSameTypeWith(pmod.GetRequestPDU()):
        for i, (oid, _) in enumerate(binds):
            value = mib.get(oid)
            if value is None:
                missing(i, oid)
            else:
                out.append((oid, _encode_value(pmod, value)))
    elif req.isSameTypeWith(pmod.GetNextRequestPDU()) or (
        not v1 and req.isSameTypeWith(pmod.GetBulkRequestPDU())
    ):
        repeat = 1
        fixed = len(binds)
        if not v1 and req.isSameTypeWith(pmod.GetBulkRequestPDU()):
            fixed = min(int(pmod.apiBulkPDU.get_non_repeaters(req)), len(binds))
            repeat = max(int(pmod.apiBulkPDU.get_max_repetitions(req)), 1)
        _walk(mib, pmod, binds, fixed, repeat, out, missing)
    elif req.isSameTypeWith(pmod.SetRequestPDU()):
        writable = given == community
        for i, (oid, val) in enumerate(binds):
            status = mib.check_set(oid, _plain(val)) if writable else NO_ACCESS
            if status:
                error, index = (NO_SUCH_NAME if v1 else status), i + 1
                break
        if not error:
            for oid, val in binds:
                mib.set(oid, int(val))
        out = [(oid, val) for oid, val in binds]
    else:
        return None
    pmod.apiPDU.set_error_status(rsp, error)
    pmod.apiPDU.set_error_index(rsp, index)
    pmod.apiPDU.set_varbinds(rsp, out)
    encoded: bytes = encoder.encode(rsp_msg)
    return encoded


def _walk(
    mib: SwitchMib,
    pmod: Any,
    binds: list[tuple[Oid, Any]],
    fixed: int,
    repeat: int,
    out: list[tuple[Oid, Any]],
    missing: Callable[[int, Oid, bool], None],
) -> None:
    for i, (oid, _) in enumerate(binds[:fixed]):
        found = mib.next(oid)
        if found is None:
            missing(i, oid, True)
        else:
            out.append((found[0], _encode_value(pmod, found[1])))
    cursors = [oid for oid, _ in binds[fixed:]]
    ended: set[int] = set()
    for _ in range(repeat if cursors else 0):
        for j, oid in enumerate(cursors):
            found = mib.next(oid)
            if found is None:
                missing(fixed + j, oid, True)
                ended.add(j)
                continue
            cursors[j] = found[0]
            out.append((found[0], _encode_value(pmod, found[1])))
        if len(ended) == len(cursors):
            break  # RFC 3416 4.2.3 lets a response stop early


class SnmpAgent(asyncio.DatagramProtocol):
    """The asyncio shell around :func:`handle`."""

    def __init__(self, mib: SwitchMib, community: bytes = b"private") -> None:
        self.mib = mib
        self.community = community
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = handle(self.mib, data, community=self.community)
        if reply is None:
            logger.debug("[switch=%s] dropped a request from %s", self.mib.name, addr)
        elif self.transport is not None:
            self.transport.sendto(reply, addr)


async def serve_agent(mib: SwitchMib, host: str, port: int, community: bytes) -> None:
    """Serve one switch until cancelled."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: SnmpAgent(mib, community), local_addr=(host, port)
    )
    logger.info("virtual switch %s answering SNMP on %s:%d", mib.name, host, port)
    try:
        await asyncio.Event().wait()
    finally:
        transport.close()


def _power_follows(pis: Iterable[VirtualPi]) -> Callable[[int, bool], None]:
    by_port = {pi.port: pi for pi in pis}

    def changed(port: int, on: bool) -> None:
        pi = by_port.get(port)
        if pi is None:
            return
        logger.info(
            "[switch=%s port=%d] %s powered %s", pi.switch, port, pi.name, "on" if on else "off"
        )
        pi.set_power(on)

    return changed


async def run_switches(config: Config, pis: Sequence[VirtualPi]) -> None:
    """Run one SNMP agent per configured switch until cancelled."""
    async with asyncio.TaskGroup() as group:
        for sw in config.switches:
            if sw.driver != "snmp-poe" or sw.snmp.host is None:
                continue
            mine = [pi for pi in pis if pi.switch == sw.name]
            mib = SwitchMib(
                sw.name,
                sw.ports or max((pi.port for pi in mine), default=1),
                {pi.port: pi.mac for pi in mine},
                group=sw.group,
                on_change=_power_follows(mine),
            )
            community = sw.snmp.community.get_secret_value().encode()
            group.create_task(serve_agent(mib, sw.snmp.host, sw.snmp.port, community))
