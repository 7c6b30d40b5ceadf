"""Who gets what: the DHCP server's decisions, pure, with time passed in (RFC 2131 §4.3).

Theory of operation
-------------------
:meth:`DhcpPolicy.handle` takes one decoded client message and ``now`` and returns a
:class:`Decision`: the reply (or none), the lease records to make durable *before* the reply goes
out, an optional reply delay, and what was learnt about the client. The policy updates its
:class:`~piman.netboot.dhcp.leases.LeaseTable` as it decides; the server journals
``Decision.leases`` and sends ``Decision.reply`` only after that.

Addresses, in order: a static reservation (``nodes[].mac``+``ip``, hosts.csv), the client's
current lease, the address it asks for (option 50) when free, then the pool (never-used addresses
first, expired ones last). Reserved addresses are never in the pool.

Modes:

- ``authoritative``: DISCOVER → OFFER, the address held ``OFFER_HOLD`` seconds for the REQUEST.
  Only a Pi 3 declared in the configuration (``nodes[]`` with its MAC and a Pi 3 model, or a
  ``b8:27:eb`` MAC and no model) is bound at OFFER time, because its ROM never sends REQUEST;
  anything on the wire that merely says "Pi" (option 97, ``PXEClient``) gets the short hold.
  REQUEST (RFC 2131 §4.3.2) → ACK when the address is the client's (its offer, its lease, its
  reservation); NAK when the address is wrong: off the network, held by another client, reserved,
  or not the one this server offered or leased to the client; silence when the server has no
  record of the client at all (an INIT-REBOOT or a renewal of an address it never gave). DECLINE
  quarantines the address and RELEASE frees it, but only from the client that holds the lease:
  same MAC and same client identifier (option 61, or none when it sent none). INFORM gets the
  options without an address.
- The pool guard (:mod:`piman.netboot.dhcp.guard`) bounds how fast new clients take addresses,
  overall and per client; a refused or an exhausted pool leaves the client unanswered and says so
  in ``Decision.reason`` (:data:`GUARDED`, :data:`EXHAUSTED`), which the server counts and logs.
- ``proxy`` (PROTOCOLS.md §1): only Pis get an answer, to DISCOVER: ``yiaddr`` 0 and options 53,
  54, 60, 97 and 43; the site's DHCP server gives the address.
- ``off``: nothing (the server is not even started).

Pis (option 97 magic, or ``PXEClient`` + Pi OUI) get option 43 byte for byte, option 60
``PXEClient``, their option 97 echoed, ``siaddr`` and option 66 = the manager. Other PXE clients
(``PXEClient`` or iPXE) get ``siaddr`` and the boot file (BOOTP ``file`` and option 67), chosen by
option 93 when ``dhcp.boot_file`` is a map.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING

from piman.fleet.models import PiModel, model_from_mac
from piman.netboot.dhcp.guard import PoolGuard, default_per_minute
from piman.netboot.dhcp.leases import Lease, LeaseState, LeaseTable, client_key
from piman.netboot.dhcp.packets import BOOTREPLY, BOOTREQUEST, DhcpPacket, MessageType, Options
from piman.netboot.dhcp.pxe import PiIdentity, is_ipxe, is_pxe_client, pi_identity, pi_option43

if TYPE_CHECKING:
    from piman.config.models import Config

__all__ = [
    "EXHAUSTED",
    "GUARDED",
    "OFFER_HOLD",
    "Decision",
    "DhcpOutcome",
    "DhcpPolicy",
    "PolicySettings",
    "Reservation",
]

logger = logging.getLogger(__name__)

OFFER_HOLD = 60.0  # seconds an OFFER keeps its address for a client that has not yet REQUESTed
QUARANTINE = 600.0  # seconds a DECLINEd address stays out of the pool
EXHAUSTED = "pool exhausted"  # Decision.reason: no pool address was free
GUARDED = "pool guard"  # Decision.reason: the pool guard refused a new lease
_MAX_REMEMBERED_PIS = 16_384  # Pis known by MAC (least recently seen forgotten first)
_ZERO = IPv4Address(0)


class DhcpOutcome(StrEnum):
    OFFER = "offer"
    ACK = "ack"
    NAK = "nak"
    INFORM = "inform"
    IGNORED = "ignored"  # no answer on purpose (not ours, DECLINE, RELEASE, pool empty …)


@dataclass(frozen=True, slots=True)
class Reservation:
    ip: IPv4Address
    hostname: str | None = None


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """What the policy needs from the configuration, resolved once."""

    server_ip: IPv4Address
    network: IPv4Network
    mode: str = "authoritative"
    pool: tuple[int, int] | None = None
    lease_time: int = 3600
    router: IPv4Address | None = None
    dns: tuple[IPv4Address, ...] = ()
    domain: str | None = None
    boot_file: str | dict[int, str] | None = None
    reservations: dict[str, Reservation] = field(default_factory=dict)
    pi_ouis: frozenset[str] = frozenset()
    reply_delay: dict[str, float] = field(default_factory=dict)
    padded_models: frozenset[str] = frozenset()
    bind_at_offer: frozenset[str] = frozenset()  # MACs of Pi 3s the configuration declares
    new_leases_per_minute: int | None = None  # pool guard; None: default_per_minute(pool); 0: off
    new_leases_per_client: int = 4  # pool guard, per MAC or per relay port; 0: off

    @classmethod
    def from_config(cls, config: Config) -> PolicySettings:
        dhcp = config.dhcp
        assert dhcp is not None
        reservations: dict[str, Reservation] = {}
        for host in config.hosts:
            reservations[host.mac] = Reservation(host.ip, host.hostname)
        for node in config.nodes:
            if node.mac and node.ip:
                reservations[node.mac] = Reservation(node.ip, node.hostname or node.name)
        pool = (int(dhcp.pool.first), int(dhcp.pool.last)) if dhcp.pool else None
        pi3s = frozenset(
            node.mac
            for node in config.nodes
            if node.mac and node.ip is None and _is_pi3(node.model, node.mac)
        )
        return cls(
            server_ip=config.manager.address,
            network=config.manager.effective_network,
            mode=dhcp.mode,
            pool=pool,
            lease_time=int(dhcp.lease_time),
            router=dhcp.router,
            dns=tuple(dhcp.dns),
            domain=dhcp.domain,
            boot_file=dhcp.boot_file,
            reservations=reservations,
            pi_ouis=frozenset(o.lower() for o in dhcp.pi_ouis),
            reply_delay={k.lower(): float(v) for k, v in dhcp.reply_delay.items()},
            padded_models=frozenset(m.lower() for m in dhcp.option43_padded_models),
            bind_at_offer=pi3s,
            new_leases_per_minute=dhcp.new_leases_per_minute,
            new_leases_per_client=dhcp.new_leases_per_client,
        )

    def excluded(self) -> set[int]:
        """Addresses the pool never hands out: reservations, the manager, network, broadcast."""
        out = {int(r.ip) for r in self.reservations.values()}
        out |= {int(self.server_ip), int(self.network.network_address)}
        out.add(int(self.network.broadcast_address))
        if self.router is not None:
            out.add(int(self.router))
        return out


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do about one client message."""

    outcome: DhcpOutcome
    reply: DhcpPacket | None = None
    leases: tuple[Lease, ...] = ()  # journal these before sending ``reply``
    delay: float = 0.0  # seconds to wait before sending (per-class reply delay)
    identity: PiIdentity | None = None  # set when the client is a Pi
    address: IPv4Address | None = None  # the client's address, when known
    reason: str = ""


def _is_pi3(model: str | None, mac: str) -> bool:
    """Does the configuration say this node is a Pi 3 (by model, or by its MAC when no model)?"""
    if model is None:
        return model_from_mac(mac).family == 3
    try:
        return PiModel(model.lower()).family == 3
    except ValueError:
        return model.lower().startswith(("pi3", "cm3"))


def _client(packet: DhcpPacket) -> str:
    """Who the pool guard's per-client bucket is for: the relay's port (option 82), or the MAC."""
    relay = packet.options.relay_agent
    if relay:
        return f"{packet.giaddr}/{relay[:64].hex()}"
    return packet.mac


def _class_keys(mac: str, identity: PiIdentity | None) -> list[str]:
    keys = [mac[:8]]
    if identity is not None:
        keys.append(identity.model.value)
        if identity.model.family:
            keys.append(f"pi{identity.model.family}")
    return keys


class DhcpPolicy:
    """The decisions of one DHCP server (see the module docstring)."""

    def __init__(self, settings: PolicySettings, table: LeaseTable | None = None) -> None:
        self.settings = settings
        self.table = table if table is not None else LeaseTable(settings.pool, settings.excluded())
        size = settings.pool[1] - settings.pool[0] + 1 if settings.pool else 0
        per_minute = settings.new_leases_per_minute
        self.guard = PoolGuard(
            default_per_minute(size) if per_minute is None else per_minute,
            settings.new_leases_per_client,
        )
        self._pis: OrderedDict[str, PiIdentity] = OrderedDict()

    # --- entry point ---------------------------------------------------------------------------

    def handle(self, packet: DhcpPacket, now: float) -> Decision:
        if packet.op != BOOTREQUEST:
            return Decision(DhcpOutcome.IGNORED, reason="not a BOOTREQUEST")
        mtype = packet.message_type
        if mtype is None:
            return Decision(DhcpOutcome.IGNORED, reason="BOOTP without DHCP message type")
        if packet.giaddr != _ZERO and packet.giaddr not in self.settings.network:
            return Decision(DhcpOutcome.IGNORED, reason=f"relayed from foreign {packet.giaddr}")
        identity = self._identify(packet)
        if self.settings.mode == "proxy":
            return self._proxy(packet, mtype, identity)
        if self.settings.mode != "authoritative":
            return Decision(DhcpOutcome.IGNORED, reason="DHCP is off")
        if mtype is MessageType.DISCOVER:
            return self._discover(packet, identity, now)
        if mtype is MessageType.REQUEST:
            return self._request(packet, identity, now)
        if mtype is MessageType.DECLINE:
            return self._decline(packet, identity, now)
        if mtype is MessageType.RELEASE:
            return self._release(packet, identity, now)
        if mtype is MessageType.INFORM:
            return self._inform(packet, identity)
        return Decision(
            DhcpOutcome.IGNORED, identity=identity, reason=f"{mtype.name} from a client"
        )

    def _identify(self, packet: DhcpPacket) -> PiIdentity | None:
        found = pi_identity(packet, self.settings.pi_ouis)
        pis = self._pis
        if found is not None:
            pis[packet.mac] = found
            pis.move_to_end(packet.mac)
            if len(pis) > _MAX_REMEMBERED_PIS:
                pis.popitem(last=False)  # a flood of fake Pis forgets the oldest, not all
            return found
        # A Pi 4 leaves options 60 and 97 out of its REQUEST: Pis are remembered by MAC.
        known = pis.get(packet.mac)
        if known is not None:
            pis.move_to_end(packet.mac)
        return known

    # --- message types -------------------------------------------------------------------------

    def _discover(self, packet: DhcpPacket, identity: PiIdentity | None, now: float) -> Decision:
        mac = packet.mac
        reserved = self.settings.reservations.get(mac)
        leases: tuple[Lease, ...] = ()
        if reserved is not None:
            address = reserved.ip
        else:
            ip = self._choose(packet, now)
            if ip is None:
                why = "no pool" if self.settings.pool is None else EXHAUSTED
                return Decision(DhcpOutcome.IGNORED, identity=identity, reason=why)
            current = self.table.for_ip(ip)
            holds = (
                current is not None
                and current.mac == mac
                and current.state is not LeaseState.DECLINED
                and current.held(now)
            )
            if not holds and not self.guard.admit(_client(packet), now):
                return Decision(DhcpOutcome.IGNORED, identity=identity, reason=GUARDED)
            address = IPv4Address(ip)
            client_id = client_key(packet.options.client_id)
            lease: Lease
            if mac in self.settings.bind_at_offer:  # a declared Pi 3: it will never REQUEST
                lease = Lease(ip, mac, now + self.settings.lease_time, LeaseState.BOUND, client_id)
            elif holds and current is not None and current.state is LeaseState.BOUND:
                lease = current  # a bound client asking again keeps its lease as it is
            else:
                lease = Lease(ip, mac, now + OFFER_HOLD, LeaseState.OFFERED, client_id)
            if lease is not current:
                self.table.apply(lease)
                leases = (lease,)
        reply = self._reply(packet, MessageType.OFFER, address, identity)
        return Decision(
            DhcpOutcome.OFFER, reply, leases, self._delay(mac, identity), identity, address, "offer"
        )

    def _choose(self, packet: DhcpPacket, now: float) -> int | None:
        current = self.table.for_mac(packet.mac)
        if current is not None and self.table.available(current.ip, packet.mac, now):
            return current.ip
        wanted = packet.options.requested_ip
        if wanted is not None and self.table.available(int(wanted), packet.mac, now):
            return int(wanted)
        return self.table.allocate(now)

    def _not_mine(
        self,
        packet: DhcpPacket,
        identity: PiIdentity | None,
        address: IPv4Address,
        now: float,
        *,
        selecting: bool,
    ) -> Decision:
        """A REQUEST for an address this server has not given the client: NAK or silence."""
        ip = int(address)
        held = self.table.for_ip(ip)
        if (held is not None and held.held(now)) or ip in self.table.excluded:
            return self._nak(packet, identity, f"{address} is not this client's")
        if selecting:
            return self._nak(packet, identity, f"{address} was not offered to this client")
        ours = self.table.for_mac(packet.mac)
        if ours is not None:
            return self._nak(
                packet, identity, f"{address} is not this client's ({ours.address} is)"
            )
        # RFC 2131 §4.3.2: no record of this client → remain silent.
        return Decision(DhcpOutcome.IGNORED, identity=identity, reason="no record of this client")

    def _request(self, packet: DhcpPacket, identity: PiIdentity | None, now: float) -> Decision:
        opts, mac = packet.options, packet.mac
        if opts.server_id is not None and opts.server_id != self.settings.server_ip:
            # SELECTING another server's offer: forget ours.
            ours = self.table.for_mac(mac)
            if ours is not None and ours.state is LeaseState.OFFERED:
                freed = Lease(ours.ip, mac, now, LeaseState.RELEASED)
                self.table.apply(freed)
                return Decision(DhcpOutcome.IGNORED, leases=(freed,), reason="chose another server")
            return Decision(DhcpOutcome.IGNORED, identity=identity, reason="chose another server")
        address = opts.requested_ip or (packet.ciaddr if packet.ciaddr != _ZERO else None)
        if address is None:
            return self._nak(packet, identity, "REQUEST names no address")
        if address not in self.settings.network:
            return self._nak(packet, identity, f"{address} is not on this network")
        leases: tuple[Lease, ...] = ()
        reserved = self.settings.reservations.get(mac)
        if reserved is not None:
            if reserved.ip != address:
                return self._nak(packet, identity, f"{address} is not this client's reservation")
        else:
            ip = int(address)
            current = self.table.for_ip(ip)
            mine = (
                current is not None
                and current.mac == mac
                and current.state is not LeaseState.DECLINED
                and self.table.in_pool(ip)
            )
            if not mine:
                selecting = opts.server_id is not None
                return self._not_mine(packet, identity, address, now, selecting=selecting)
            assert current is not None
            if not current.held(now) and not self.guard.admit(_client(packet), now):
                return Decision(DhcpOutcome.IGNORED, identity=identity, reason=GUARDED)
            client_id = client_key(opts.client_id)
            lease = Lease(ip, mac, now + self.settings.lease_time, LeaseState.BOUND, client_id)
            self.table.apply(lease)
            leases = (lease,)
        reply = self._reply(packet, MessageType.ACK, address, identity)
        return Decision(
            DhcpOutcome.ACK, reply, leases, self._delay(mac, identity), identity, address, "ack"
        )

    def _nak(self, packet: DhcpPacket, identity: PiIdentity | None, why: str) -> Decision:
        reply = DhcpPacket(
            op=BOOTREPLY,
            xid=packet.xid,
            chaddr=packet.chaddr,
            htype=packet.htype,
            flags=packet.flags,
            giaddr=packet.giaddr,
            options=Options(
                message_type=MessageType.NAK,
                server_id=self.settings.server_ip,
                relay_agent=packet.options.relay_agent,
            ),
        )
        return Decision(DhcpOutcome.NAK, reply, identity=identity, reason=why)

    def _decline(self, packet: DhcpPacket, identity: PiIdentity | None, now: float) -> Decision:
        address = packet.options.requested_ip
        if address is None or not self.table.in_pool(int(address)):
            return Decision(
                DhcpOutcome.IGNORED, identity=identity, reason=f"DECLINE of {address}: not pooled"
            )
        current = self.table.for_ip(int(address))
        if (
            current is None
            or current.state not in (LeaseState.OFFERED, LeaseState.BOUND)
            or not current.held(now)
            or not current.holder(packet.mac, packet.options.client_id)
        ):
            return Decision(
                DhcpOutcome.IGNORED,
                identity=identity,
                reason=f"DECLINE of {address} from a client that does not hold it",
            )
        lease = Lease(int(address), "", now + QUARANTINE, LeaseState.DECLINED)
        self.table.apply(lease)
        return Decision(DhcpOutcome.IGNORED, leases=(lease,), identity=identity, reason="declined")

    def _release(self, packet: DhcpPacket, identity: PiIdentity | None, now: float) -> Decision:
        current = self.table.for_ip(int(packet.ciaddr))
        if (
            current is None
            or current.state not in (LeaseState.OFFERED, LeaseState.BOUND)
            or not current.holder(packet.mac, packet.options.client_id)
        ):
            return Decision(
                DhcpOutcome.IGNORED,
                identity=identity,
                reason=f"RELEASE of {packet.ciaddr} from a client that does not hold it",
            )
        lease = Lease(current.ip, packet.mac, now, LeaseState.RELEASED, current.client_id)
        self.table.apply(lease)
        return Decision(DhcpOutcome.IGNORED, leases=(lease,), identity=identity, reason="released")

    def _inform(self, packet: DhcpPacket, identity: PiIdentity | None) -> Decision:
        reply = self._reply(packet, MessageType.ACK, None, identity)
        return Decision(DhcpOutcome.INFORM, reply, identity=identity, address=packet.ciaddr)

    def _proxy(
        self, packet: DhcpPacket, mtype: MessageType, identity: PiIdentity | None
    ) -> Decision:
        if identity is None or mtype is not MessageType.DISCOVER:
            return Decision(
                DhcpOutcome.IGNORED, identity=identity, reason="proxy: not a Pi DISCOVER"
            )
        s = self.settings
        options = Options(
            message_type=MessageType.OFFER,
            server_id=s.server_ip,
            vendor_class="PXEClient",
            client_machine_id=packet.options.client_machine_id,
            vendor_specific=pi_option43(padded=self._padded(packet.mac, identity)),
        )
        reply = DhcpPacket(
            op=BOOTREPLY,
            xid=packet.xid,
            chaddr=packet.chaddr,
            htype=packet.htype,
            flags=packet.flags,
            giaddr=packet.giaddr,
            siaddr=s.server_ip,
            options=options,
        )
        delay = self._delay(packet.mac, identity)
        return Decision(DhcpOutcome.OFFER, reply, (), delay, identity, None, "proxy offer")

    # --- replies -------------------------------------------------------------------------------

    def _delay(self, mac: str, identity: PiIdentity | None) -> float:
        for key in _class_keys(mac, identity):
            if key in self.settings.reply_delay:
                return self.settings.reply_delay[key]
        return 0.0

    def _padded(self, mac: str, identity: PiIdentity | None) -> bool:
        return any(k in self.settings.padded_models for k in _class_keys(mac, identity))

    def _boot_file(self, packet: DhcpPacket) -> str | None:
        chosen = self.settings.boot_file
        if isinstance(chosen, dict):
            arch = packet.options.client_arch
            return chosen.get(arch[0]) if arch else None
        return chosen

    def _reply(
        self,
        packet: DhcpPacket,
        mtype: MessageType,
        address: IPv4Address | None,
        identity: PiIdentity | None,
    ) -> DhcpPacket:
        s, net = self.settings, self.settings.network
        lease = s.lease_time if address is not None else None
        reserved = s.reservations.get(packet.mac)
        options = Options(
            message_type=mtype,
            server_id=s.server_ip,
            lease_time=lease,
            renewal_time=lease // 2 if lease else None,
            rebinding_time=lease * 7 // 8 if lease else None,
            subnet_mask=net.netmask,
            broadcast_address=net.broadcast_address,
            router=(s.router,) if s.router else (),
            dns=s.dns,
            domain_name=s.domain,
            hostname=reserved.hostname if reserved and address is not None else None,
            relay_agent=packet.options.relay_agent,
        )
        siaddr, file = IPv4Address(0), b""
        if identity is not None:
            siaddr = s.server_ip
            options = replace(
                options,
                vendor_class="PXEClient",
                client_machine_id=packet.options.client_machine_id,
                vendor_specific=pi_option43(padded=self._padded(packet.mac, identity)),
                tftp_server=str(s.server_ip),
            )
        elif is_pxe_client(packet) or is_ipxe(packet):
            siaddr = s.server_ip
            boot = self._boot_file(packet)
            if boot is not None:
                file = boot.encode("latin-1")[:127]
                options = replace(options, bootfile_name=boot)
            if is_pxe_client(packet):
                options = replace(options, vendor_class="PXEClient")
        return DhcpPacket(
            op=BOOTREPLY,
            xid=packet.xid,
            chaddr=packet.chaddr,
            htype=packet.htype,
            flags=packet.flags,
            ciaddr=packet.ciaddr,
            yiaddr=address or IPv4Address(0),
            siaddr=siaddr,
            giaddr=packet.giaddr,
            file=file,
            options=options,
        )
