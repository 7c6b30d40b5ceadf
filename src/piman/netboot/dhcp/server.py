"""The DHCP server: a thin asyncio shell around :mod:`packets`, :mod:`policy` and :mod:`leases`.

Theory of operation
-------------------
The socket's reader drains pending datagrams; each is decoded (garbage is logged at WARNING
with the peer and dropped), handed to the policy, and its decision queued. A flusher task takes
everything queued, appends the lease records to the journal with one ``fdatasync`` (group
commit, in a worker thread while the loop keeps receiving), and only then sends the replies of
that batch, so nothing a client was told is lost by a crash. Decisions without lease records
(reservations, NAKs, INFORM) are sent at once.

Where replies go (RFC 2131 §4.1): to the relay (``giaddr``) on port 67; NAKs broadcast; to
``ciaddr`` when the client has one; broadcast when the client set the broadcast flag (or when
there is no address to unicast to, as in proxy offers); otherwise unicast to ``yiaddr`` at
``chaddr``: the kernel cannot ARP for an address nobody holds yet, so the server first writes the
neighbour entry itself (``SIOCSARP`` on ``manager.interface``), as dnsmasq does. A client talking
from a port other than 68 (the demo's virtual Pis, tests on loopback) is answered where it spoke
from.

A client left unanswered because the pool is exhausted or the pool guard refused it is counted
(``piman_dhcp_pool_exhausted``, ``piman_dhcp_pool_guard_refused``) and logged at WARNING at most
once a minute each, with how many there were; a failing journal likewise.

Sightings: Pis, and clients whose MAC the store already knows, are handed to the inventory's
sightings (:mod:`piman.inventory.sightings`: one throttle and one writer for DHCP and TFTP). An
unknown Pi goes to its bounded list of discovered devices, and becomes a node only when an
operator accepts it. Other clients (laptops, perfdhcp's thousands) are not noted at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge

from piman.errors import PimanError
from piman.netboot.dhcp.leases import LeaseJournal, LeaseTable
from piman.netboot.dhcp.packets import DhcpPacket, MalformedPacket, MessageType, decode, encode
from piman.netboot.dhcp.policy import (
    EXHAUSTED,
    GUARDED,
    Decision,
    DhcpOutcome,
    DhcpPolicy,
    PolicySettings,
)

if TYPE_CHECKING:
    from piman.context import InventoryHandle

__all__ = ["DhcpServer", "DhcpServerError", "reply_destination"]

logger = logging.getLogger(__name__)

SIOCSARP = 0x8955
SO_RCVBUFFORCE = 33  # Linux <asm-generic/socket.h>
ATF_COM = 0x02
ARPHRD_ETHER = 1
_BROADCAST = "255.255.255.255"
_ZERO = IPv4Address(0)
_READ_BURST = 64
_RCVBUF = 8 << 20
_REPORT_EVERY = 60.0  # seconds between two WARNINGs about the same trouble
_CLOSE_WAIT = 5.0  # seconds a stopping server waits for an append in flight
_MAX_BACKLOG = 8192  # decisions waiting for the journal before the server stops reading


class DhcpServerError(PimanError):
    """The DHCP server cannot run (its socket cannot be set up)."""


@dataclass(frozen=True, slots=True)
class Destination:
    host: str
    port: int
    arp: bool = False  # write a neighbour entry yiaddr → chaddr before sending


def reply_destination(request: DhcpPacket, reply: DhcpPacket, peer: tuple[str, int]) -> Destination:
    """Where ``reply`` to ``request`` (received from ``peer``) must go (RFC 2131 §4.1)."""
    if request.giaddr != _ZERO:
        return Destination(str(request.giaddr), 67)
    if peer[1] != 68 and peer[0] != "0.0.0.0":
        return Destination(peer[0], peer[1])
    if reply.message_type is MessageType.NAK:
        return Destination(_BROADCAST, 68)
    if request.ciaddr != _ZERO:
        return Destination(str(request.ciaddr), 68)
    if request.broadcast or reply.yiaddr == _ZERO:
        return Destination(_BROADCAST, 68)
    return Destination(str(reply.yiaddr), 68, arp=True)


def _arpreq(ip: str, mac: bytes, device: str) -> bytes:
    pa = struct.pack("=H2s4s8s", socket.AF_INET, b"\0\0", socket.inet_aton(ip), b"\0" * 8)
    ha = struct.pack("=H14s", ARPHRD_ETHER, mac.ljust(14, b"\0"))
    netmask = b"\0" * 16
    return pa + ha + struct.pack("=i", ATF_COM) + netmask + device.encode()[:15].ljust(16, b"\0")


class _Metrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        reg = registry if registry is not None else CollectorRegistry()
        self.offers = Counter("piman_dhcp_offers", "DHCPOFFERs sent.", registry=reg)
        self.acks = Counter("piman_dhcp_acks", "DHCPACKs sent (INFORM included).", registry=reg)
        self.naks = Counter("piman_dhcp_naks", "DHCPNAKs sent.", registry=reg)
        self.drops = Counter(
            "piman_dhcp_drops", "DHCP messages dropped, by reason.", ["reason"], registry=reg
        )
        self.leases = Gauge("piman_dhcp_leases_active", "Addresses held now.", registry=reg)
        self.pool = Gauge("piman_dhcp_pool_addresses", "Addresses in the pool.", registry=reg)
        self.backlog = Gauge(
            "piman_dhcp_journal_backlog",
            "Decisions waiting for the lease journal (their replies wait with them).",
            registry=reg,
        )
        self.exhausted = Counter(
            "piman_dhcp_pool_exhausted",
            "DISCOVERs left unanswered because no pool address was free.",
            registry=reg,
        )
        self.guarded = Counter(
            "piman_dhcp_pool_guard_refused",
            "New leases the pool guard refused (too many new clients a minute).",
            registry=reg,
        )


class _Report:
    """A WARNING about a recurring trouble at most every ``every`` seconds, with the count."""

    def __init__(self, every: float = _REPORT_EVERY) -> None:
        self.every = every
        self.pending = 0
        self._last: float | None = None

    def due(self, now: float) -> int:
        """Count one more; how many to report now (0: not yet)."""
        self.pending += 1
        if self._last is not None and now - self._last < self.every:
            return 0
        self._last = now
        count, self.pending = self.pending, 0
        return count


class DhcpServer:
    """``dhcp`` service: run with :meth:`serve` until cancelled."""

    name = "dhcp"

    def __init__(
        self,
        settings: PolicySettings,
        *,
        journal_path: Path,
        listen: tuple[str, int] = ("0.0.0.0", 67),
        interface: str | None = None,
        sightings: InventoryHandle | None = None,
        metrics: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.listen = listen
        self.interface = interface
        self.sightings = sightings
        self.journal = LeaseJournal(journal_path)
        self.policy: DhcpPolicy | None = None
        self.metrics = _Metrics(metrics)
        self.metrics.leases.set_function(self._active_leases)
        self.bound: tuple[str, int] | None = None
        self.ready = asyncio.Event()
        self._sock: socket.socket | None = None
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dhcp-journal")
        self._batch: list[tuple[DhcpPacket, Decision, tuple[str, int]]] = []
        self._wake = asyncio.Event()
        self._warned: dict[str, float] = {}
        self._exhausted = _Report()
        self._guarded = _Report()
        self._journal_failed = _Report()
        self._backlogged = _Report()
        self._paused = False
        self.metrics.backlog.set_function(lambda: float(len(self._batch)))
        pool = settings.pool
        self.metrics.pool.set(pool[1] - pool[0] + 1 if pool else 0)

    def _active_leases(self) -> float:
        return float(self.policy.table.active(time.time())) if self.policy else 0.0

    # --- lifecycle -----------------------------------------------------------------------------

    def _socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            try:  # a deep queue absorbs bursts (mass power-on); FORCE needs CAP_NET_ADMIN
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, _RCVBUF)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
            if self.interface:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.interface.encode())
            sock.bind(self.listen)
            sock.setblocking(False)
        except OSError as err:
            sock.close()
            where = f"{self.listen[0]}:{self.listen[1]}"
            if self.interface:
                where += f" on interface {self.interface}"
            raise DhcpServerError(f"DHCP cannot listen on {where}: {err.strerror}") from err
        return sock

    async def serve(self) -> None:
        # One thread of its own for the journal: ordered writes, never queued behind other
        # services' blocking work in the default executor.
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dhcp-journal")
        try:
            leases = await asyncio.get_running_loop().run_in_executor(self._io, self.journal.load)
        except OSError as err:
            self._io.shutdown(wait=False)
            why = err.strerror or str(err)
            raise DhcpServerError(f"lease journal {self.journal.path}: {why}") from err
        table = LeaseTable(self.settings.pool, self.settings.excluded())
        for lease in leases:
            table.apply(lease)
        self.policy = DhcpPolicy(self.settings, table)
        self._batch = []  # a restart after a failure starts from the journal, not from memory
        self._paused = False
        if self.sightings is not None:
            await self.sightings.load()  # which non-Pi MACs are nodes (their sightings count)
        loop = asyncio.get_running_loop()
        try:
            sock = self._socket()
        except DhcpServerError:
            self.journal.close()
            self._io.shutdown(wait=False)
            raise
        self._sock = sock
        self.bound = sock.getsockname()
        loop.add_reader(sock.fileno(), self._readable)
        logger.info(
            "[dhcp] %s mode on %s:%d%s, %d leases loaded from %s",
            self.settings.mode,
            *self.listen,
            f" (interface {self.interface})" if self.interface else "",
            len(table),
            self.journal.path,
        )
        self.ready.set()
        try:
            await self._flusher()
        finally:
            self.ready.clear()
            loop.remove_reader(sock.fileno())
            sock.close()
            self._sock = None
            # Closed by the journal's own thread, after an append still in flight: never under it.
            closing = loop.run_in_executor(self._io, self.journal.close)
            self._io.shutdown(wait=False)
            with contextlib.suppress(TimeoutError, OSError):
                await asyncio.wait_for(asyncio.shield(closing), _CLOSE_WAIT)

    # --- receiving -----------------------------------------------------------------------------

    def _warn(self, peer: tuple[str, int], size: int, err: MalformedPacket) -> None:
        """WARNING for garbage, at most once a second per peer (DEBUG for the rest)."""
        now = time.monotonic()
        level = logging.DEBUG
        if now - self._warned.get(peer[0], 0.0) >= 1.0:
            self._warned[peer[0]] = now
            if len(self._warned) > 10_000:
                self._warned.clear()
            level = logging.WARNING
        logger.log(
            level, "[dhcp peer=%s:%d] dropping a malformed packet (%d bytes): %s", *peer, size, err
        )

    def _readable(self) -> None:
        """Drain the socket (up to a bound, to stay fair to other tasks)."""
        sock = self._sock
        if sock is None:
            return
        for _ in range(_READ_BURST):
            if self._paused:
                return
            try:
                data, peer = sock.recvfrom(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                logger.debug("[dhcp] receive error: %s", err)
                return
            self.received(data, peer)

    def received(self, data: bytes, peer: tuple[str, int]) -> None:
        """One datagram from ``peer``: decode, decide, queue or send. Never raises."""
        try:
            packet = decode(data)
        except MalformedPacket as err:
            self.metrics.drops.labels("malformed").inc()
            self._warn(peer, len(data), err)
            return
        assert self.policy is not None
        try:
            decision = self.policy.handle(packet, time.time())
        except Exception:  # a policy bug must not take the server down
            self.metrics.drops.labels("error").inc()
            logger.exception("[dhcp peer=%s:%d mac=%s] policy failed", *peer, packet.mac)
            return
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "[dhcp mac=%s xid=%08x] %s → %s %s (%s)",
                packet.mac,
                packet.xid,
                packet.message_type.name if packet.message_type else "BOOTP",
                decision.outcome.value,
                decision.address or "",
                decision.reason,
            )
        ident = decision.identity
        if ident is not None and decision.outcome in (DhcpOutcome.OFFER, DhcpOutcome.ACK):
            # Pis are few and netboot rarely: worth a line at INFO each.
            logger.info(
                "[dhcp mac=%s model=%s serial=%s] %s %s",
                packet.mac,
                ident.model.value,
                ident.serial or "?",
                decision.outcome.value,
                decision.address or "(proxy: boot options only)",
            )
        if decision.reason == EXHAUSTED or decision.reason == GUARDED:
            self._pool_trouble(decision.reason)
        self._note_sighting(packet, decision)
        if decision.leases:
            self._queue(packet, decision, peer)
        elif decision.reply is not None:
            self._dispatch(packet, decision, peer)
        elif decision.outcome is DhcpOutcome.IGNORED:
            self.metrics.drops.labels("ignored").inc()

    def _queue(self, packet: DhcpPacket, decision: Decision, peer: tuple[str, int]) -> None:
        """Hold a decision for the journal; a full backlog stops reading until it is written."""
        self._batch.append((packet, decision, peer))
        self._wake.set()
        if len(self._batch) >= _MAX_BACKLOG and not self._paused and self._sock is not None:
            self._paused = True
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            count = self._backlogged.due(time.monotonic())
            if count:
                logger.warning(
                    "[dhcp] the lease journal is behind (%d decisions waiting): not reading until "
                    "they are written (%d time(s) since the last report)",
                    len(self._batch),
                    count,
                )

    def _resume(self) -> None:
        if self._paused and self._sock is not None:
            self._paused = False
            asyncio.get_running_loop().add_reader(self._sock.fileno(), self._readable)

    def _pool_trouble(self, reason: str) -> None:
        now = time.monotonic()
        pool = self.settings.pool
        span = f"{IPv4Address(pool[0])}-{IPv4Address(pool[1])}" if pool else "-"
        if reason == EXHAUSTED:
            self.metrics.exhausted.inc()
            count = self._exhausted.due(now)
            if count:
                logger.warning(
                    "[dhcp] pool %s exhausted: %d DISCOVER(s) unanswered since the last report",
                    span,
                    count,
                )
            return
        self.metrics.guarded.inc()
        count = self._guarded.due(now)
        if count and self.policy is not None:
            guard = self.policy.guard
            logger.warning(
                "[dhcp] pool guard: %d new lease(s) refused since the last report (limits: %d a "
                "minute in all, %d a minute per client; 0 is none)",
                count,
                guard.per_minute,
                guard.per_client,
            )

    async def _flusher(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._batch = self._batch, []
            self._resume()
            if not batch:
                continue
            records = [lease for _, d, _ in batch for lease in d.leases]
            try:
                await loop.run_in_executor(self._io, self.journal.append, records)
            except OSError as err:
                self.metrics.drops.labels("journal").inc(len(batch))
                count = self._journal_failed.due(time.monotonic())
                if count:
                    logger.error(  # noqa: TRY400 - one line, not a traceback
                        "[dhcp] lease journal %s: %s; %d batch(es) of replies dropped since the "
                        "last report",
                        self.journal.path,
                        err.strerror or err,
                        count,
                    )
                continue
            for packet, decision, peer in batch:
                self._dispatch(packet, decision, peer)
            assert self.policy is not None
            table = self.policy.table
            if self.journal.needs_compaction(len(table.by_mac)):
                live = table.live(time.time())
                try:
                    await loop.run_in_executor(self._io, self.journal.compact, live)
                except OSError as err:
                    logger.error("[dhcp] compacting %s: %s", self.journal.path, err)  # noqa: TRY400

    # --- sending -------------------------------------------------------------------------------

    def _dispatch(self, packet: DhcpPacket, decision: Decision, peer: tuple[str, int]) -> None:
        if decision.reply is None:
            return
        if decision.delay > 0:
            asyncio.get_running_loop().call_later(
                decision.delay, self._send, packet, decision.reply, peer
            )
        else:
            self._send(packet, decision.reply, peer)

    def _send(self, request: DhcpPacket, reply: DhcpPacket, peer: tuple[str, int]) -> None:
        sock = self._sock
        if sock is None:
            return
        dest = reply_destination(request, reply, peer)
        if dest.arp:
            if self.interface and len(request.chaddr) == 6:
                try:
                    fcntl.ioctl(
                        sock.fileno(),
                        SIOCSARP,
                        _arpreq(dest.host, request.chaddr, self.interface),
                    )
                except OSError as err:
                    logger.warning("[dhcp mac=%s] cannot set ARP entry: %s", request.mac, err)
                    dest = Destination(_BROADCAST, 68)
            else:
                dest = Destination(_BROADCAST, 68)
        try:
            sock.sendto(encode(reply), (dest.host, dest.port))
        except OSError as err:
            self.metrics.drops.labels("send").inc()
            logger.warning("[dhcp mac=%s] cannot send to %s: %s", request.mac, dest.host, err)
            return
        mtype = reply.message_type
        if mtype is MessageType.OFFER:
            self.metrics.offers.inc()
        elif mtype is MessageType.ACK:
            self.metrics.acks.inc()
        elif mtype is MessageType.NAK:
            self.metrics.naks.inc()

    # --- sightings -----------------------------------------------------------------------------

    def _note_sighting(self, packet: DhcpPacket, decision: Decision) -> None:
        if self.sightings is None or len(packet.chaddr) != 6:
            return
        mac = packet.mac
        ident = decision.identity
        if ident is None and not self.sightings.is_known(mac):
            return
        self.sightings.note(
            mac,
            ip=str(decision.address) if decision.address else None,
            serial=ident.serial if ident else None,
            model=ident.model.value if ident else None,
            vendor_class=packet.options.vendor_class,
        )
