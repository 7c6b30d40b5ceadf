"""The asyncio shell around :class:`~piman.netboot.tftp.session.TftpSession`.

One listener socket takes requests (0.0.0.0:69 pinned to ``manager.interface`` with
``SO_BINDTODEVICE``, or the ``tftp.listen`` address); every accepted request gets a new socket on
a fresh ephemeral port (its TID), connected to the client, so the kernel filters foreign TIDs and
a send is one ``sendto`` without an address. Datagrams go to the session, whose actions are
carried out here: ``Send`` → ``socket.send`` (transfer sockets are read with
``loop.add_reader`` one datagram per wake-up, which costs far less per datagram than a
transport), ``ArmTimer`` → one lazily re-armed ``loop.call_at`` handle per transfer (moving the
deadline is an attribute write, not a new timer per block), ``Close`` → stats logged and
exported, socket closed. With a window (RFC 7440), a run of full-size blocks leaves in one
``send`` through UDP generic segmentation offload (``UDP_SEGMENT``): the kernel cuts it into
the same datagrams, for one system call per window instead of one per block.

Garbage never crashes the server: malformed datagrams are counted and logged at WARNING with the
peer (at most once per source every :data:`LOG_EVERY` seconds) and dropped; new requests are
rate-limited per source address (a token bucket of ``tftp.rate_limit`` per second).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import socket
import time
from collections import deque
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from piman.config.netboot import TftpSettings
from piman.netboot.tftp.files import AccessViolation, Opener
from piman.netboot.tftp.packets import (
    ErrorCode,
    MalformedPacket,
    Opcode,
    Request,
    decode,
)
from piman.netboot.tftp.session import (
    ArmTimer,
    Close,
    Outcome,
    Send,
    SessionSettings,
    SessionStats,
    TftpSession,
)

__all__ = ["LOG_EVERY", "OPEN_TIMEOUT", "TftpMetrics", "TftpServer"]

logger = logging.getLogger(__name__)

LOG_EVERY = 10.0  # seconds between two WARNINGs about the same source's garbage
OPEN_TIMEOUT = 10.0  # seconds the application hook may take to find a file
_SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
_ACK = int(Opcode.ACK)
_monotonic = time.monotonic  # what the asyncio loop's time() reads
_UDP_SEGMENT = 103  # linux/udp.h: UDP GSO segment size
_GSO_MAX_SEGMENTS = 64  # UDP_MAX_SEGMENTS
_GSO_MAX_BYTES = 65507 - 8  # one UDP payload at most (and an IPv4 datagram)


class TftpMetrics:
    """The manager metrics of the TFTP server (registered on the manager's registry)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.transfers = Counter(
            "piman_tftp_transfers",
            "TFTP transfers that ended, by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.bytes = Counter(
            "piman_tftp_sent_bytes", "TFTP payload bytes sent (with retransmissions).",
            registry=registry,
        )  # fmt: skip
        self.retransmits = Counter(
            "piman_tftp_retransmits", "TFTP datagrams sent again after a timeout.",
            registry=registry,
        )  # fmt: skip
        self.duration = Histogram(
            "piman_tftp_transfer_duration_seconds",
            "Duration of TFTP transfers.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=registry,
        )
        self.active = Gauge(
            "piman_tftp_active_transfers", "TFTP transfers in progress.", registry=registry
        )
        self.dropped = Counter(
            "piman_tftp_dropped_requests",
            "Datagrams the TFTP listener dropped, by reason.",
            ["reason"],
            registry=registry,
        )


@dataclass(eq=False)
class _Transfer:
    xfer: int
    peer: tuple[str, int]
    session: TftpSession
    sock: socket.socket | None = None
    handle: asyncio.TimerHandle | None = None
    handle_at: float = 0.0
    deadline: float = 0.0
    log_prefix: str = field(default="")
    segment: int = 0  # UDP GSO segment size (blksize + 4) when windows go out in one send


class _Bucket:
    __slots__ = ("last", "tokens")

    def __init__(self, tokens: float, last: float) -> None:
        self.tokens = tokens
        self.last = last


class TftpServer:
    """``tftp``: a read-only TFTP server whose files come from an :data:`Opener` hook."""

    name = "tftp"

    def __init__(
        self,
        opener: Opener,
        settings: TftpSettings,
        *,
        listen: tuple[str, int] = ("0.0.0.0", 69),
        interface: str | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.opener = opener
        self.settings = settings
        self.listen = listen
        self.interface = interface
        self.metrics = TftpMetrics(registry if registry is not None else CollectorRegistry())
        self.session_settings = SessionSettings(
            retransmit_timeout=settings.retransmit_timeout,
            max_retries=settings.max_retries,
            max_blksize=settings.mtu - 32,
            max_windowsize=settings.max_windowsize,
            transfer_timeout=settings.transfer_timeout,
        )
        self.transfers: dict[int, _Transfer] = {}
        self.history: deque[SessionStats] = deque(maxlen=1000)
        self.address: tuple[str, int] | None = None  # where the listener is bound
        self.ready = asyncio.Event()
        self._ids = itertools.count(1)
        self._buckets: dict[str, _Bucket] = {}
        self._garbage_logged: dict[str, float] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle ----------------------------------------------------------------------------

    async def serve(self) -> None:
        """Listen until cancelled; open transfers are closed on the way out."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        sock = self._socket(self.listen, listener=True)
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Listener(self), sock=sock
        )  # fmt: skip
        self.address = sock.getsockname()
        logger.info(
            "tftp: listening on %s:%d%s",
            *self.address,
            f" (interface {self.interface})" if self.interface else "",
        )
        self.ready.set()
        try:
            await asyncio.Future()
        finally:
            self.ready.clear()
            transport.close()
            for task in list(self._tasks):
                task.cancel()
            for transfer in list(self.transfers.values()):
                self._finish(transfer)

    def _socket(self, address: tuple[str, int], *, listener: bool) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            if listener:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.interface is not None:
                sock.setsockopt(
                    socket.SOL_SOCKET, _SO_BINDTODEVICE, self.interface.encode() + b"\0"
                )
            sock.bind(address)
        except BaseException:
            sock.close()
            raise
        return sock

    # -- listener -----------------------------------------------------------------------------

    def on_request(self, data: bytes, peer: tuple[str, int]) -> None:
        """A datagram on the listener."""
        try:
            packet = decode(data)
        except MalformedPacket as err:
            self._garbage(peer, f"malformed request: {err}")
            return
        if not isinstance(packet, Request):
            self._garbage(peer, f"{type(packet).__name__} sent to the listener")
            return
        assert self._loop is not None
        now = self._loop.time()
        if not self._allow(peer[0], now):
            self.metrics.dropped.labels("rate_limited").inc()
            logger.debug("tftp[peer=%s:%d]: rate limited, request dropped", *peer)
            return
        for other in self.transfers.values():
            if other.peer == peer and other.session.request == packet:
                logger.debug("tftp[peer=%s:%d]: repeated request ignored", *peer)
                return
        limit = self.settings.max_transfers
        if limit is not None and len(self.transfers) >= limit:
            self.metrics.dropped.labels("busy").inc()
            logger.warning("tftp[peer=%s:%d]: %d transfers running, refused", *peer, limit)
            return
        session = TftpSession(packet, f"{peer[0]}:{peer[1]}", self.session_settings, now)
        xfer = next(self._ids)
        transfer = _Transfer(xfer, peer, session, log_prefix=f"tftp[peer={peer[0]}:{peer[1]} "
                             f"xfer={xfer}]")  # fmt: skip
        self.transfers[xfer] = transfer
        self.metrics.active.inc()
        task = self._loop.create_task(self._start(transfer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _allow(self, source: str, now: float) -> bool:
        rate = self.settings.rate_limit
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) > 10000:
                self._buckets = {
                    k: b for k, b in self._buckets.items() if now - b.last < 60
                }  # fmt: skip
            bucket = self._buckets[source] = _Bucket(max(rate, 1.0), now)
        bucket.tokens = min(max(rate, 1.0), bucket.tokens + (now - bucket.last) * rate)
        bucket.last = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def _garbage(self, peer: tuple[str, int], what: str) -> None:
        self.metrics.dropped.labels("malformed").inc()
        assert self._loop is not None
        now = self._loop.time()
        if now - self._garbage_logged.get(peer[0], -LOG_EVERY) >= LOG_EVERY:
            if len(self._garbage_logged) > 10000:
                self._garbage_logged.clear()
            self._garbage_logged[peer[0]] = now
            logger.warning("tftp[peer=%s:%d]: %s (dropped)", peer[0], peer[1], what)
        else:
            logger.debug("tftp[peer=%s:%d]: %s (dropped)", peer[0], peer[1], what)

    # -- transfers ----------------------------------------------------------------------------

    async def _start(self, transfer: _Transfer) -> None:
        assert self._loop is not None
        session = transfer.session
        request = session.request
        try:
            sock = self._socket((self.listen[0], 0), listener=False)
            try:
                sock.connect(transfer.peer)
                self._loop.add_reader(sock.fileno(), self._readable, transfer)
            except BaseException:
                sock.close()
                raise
        except OSError as err:
            logger.warning("%s cannot open a transfer socket: %s", transfer.log_prefix, err)
            session.refuse(ErrorCode.NOT_DEFINED, "", Outcome.ERROR, self._loop.time())
            self._finish(transfer)
            return
        transfer.sock = sock
        if request.opcode == Opcode.WRQ:
            logger.warning("%s write request for %r refused", transfer.log_prefix, request.filename)
            self._run(
                transfer,
                session.refuse(
                    ErrorCode.ACCESS_VIOLATION, "read-only server", Outcome.REFUSED,
                    self._loop.time(),
                ),
            )  # fmt: skip
            return
        try:
            async with asyncio.timeout(OPEN_TIMEOUT):
                source = await self.opener(request.filename, transfer.peer)
        except AccessViolation as err:
            logger.warning(
                "%s refused path %r: %s", transfer.log_prefix, request.filename, err
            )  # fmt: skip
            actions = session.refuse(
                ErrorCode.ACCESS_VIOLATION, "access violation", Outcome.ACCESS_DENIED,
                self._loop.time(),
            )  # fmt: skip
        except (OSError, TimeoutError) as err:
            logger.error("%s cannot read %r: %r", transfer.log_prefix, request.filename, err)  # noqa: TRY400
            actions = session.refuse(
                ErrorCode.NOT_DEFINED, "read error", Outcome.ERROR, self._loop.time()
            )  # fmt: skip
        except Exception:  # one request's failure must not leak its transfer
            logger.exception("%s opening %r failed", transfer.log_prefix, request.filename)
            actions = session.refuse(
                ErrorCode.NOT_DEFINED, "server error", Outcome.ERROR, self._loop.time()
            )  # fmt: skip
        else:
            now = self._loop.time()
            if source is None:
                actions = session.refuse(
                    ErrorCode.FILE_NOT_FOUND, "file not found", Outcome.NOT_FOUND, now
                )  # fmt: skip
            else:
                actions = session.start(source, now)
                if session.stats.windowsize > 1 and transfer.sock is not None:
                    transfer.segment = _enable_gso(transfer.sock, session.stats.blksize + 4)
        self._run(transfer, actions)

    def _readable(self, transfer: _Transfer) -> None:
        """The transfer socket has a datagram. One per wake-up: the selector is level-triggered,
        and not draining spares the failing ``recv`` (an exception) in the lock-step case."""
        sock = transfer.sock
        if sock is None:
            return
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:  # ICMP port unreachable reported on a connected socket
            self.on_unreachable(transfer, err)
            return
        self.on_datagram(transfer, data)

    def on_datagram(self, transfer: _Transfer, data: bytes) -> None:
        """A datagram from the client's TID."""
        assert self._loop is not None
        if len(data) == 4 and data[1] == _ACK and data[0] == 0:
            block = (data[2] << 8) | data[3]
            now = _monotonic()
            session = transfer.session
            datagram = session.ack_lockstep(block, now)
            if datagram is not None:
                if self._send(transfer, datagram):
                    self._arm(transfer, session.deadline)
                return
            actions = session.receive_ack(block, now)
        else:
            try:
                packet = decode(data)
            except MalformedPacket as err:
                logger.debug("%s malformed datagram ignored: %s", transfer.log_prefix, err)
                return
            actions = transfer.session.receive(packet, self._loop.time())
        self._run(transfer, actions)

    def on_unreachable(self, transfer: _Transfer, err: Exception) -> None:
        """The client's port is gone (ICMP unreachable): nobody will ACK any more."""
        if transfer.session.closed or self._loop is None:
            return
        logger.debug("%s client unreachable: %s", transfer.log_prefix, err)
        self._run(transfer, transfer.session.abort(Outcome.ABORTED, self._loop.time()))

    def _run(self, transfer: _Transfer, actions: list[Send | ArmTimer | Close]) -> None:
        batch: list[bytes] = []
        for action in actions:
            if type(action) is Send:
                batch.append(action.data)
                continue
            if batch:
                if not self._send_all(transfer, batch):
                    return
                batch = []
            if type(action) is ArmTimer:
                self._arm(transfer, action.deadline)
            else:
                self._finish(transfer)
        if batch:
            self._send_all(transfer, batch)

    def _send_all(self, transfer: _Transfer, datagrams: list[bytes]) -> bool:
        """Send datagrams in order; a window of full blocks goes out in one GSO send."""
        segment = transfer.segment
        if segment and len(datagrams) > 1:
            per_call = max(1, min(_GSO_MAX_SEGMENTS, _GSO_MAX_BYTES // segment))
            for i in range(0, len(datagrams), per_call):
                chunk = datagrams[i : i + per_call]
                if len(chunk) > 1 and all(len(d) == segment for d in chunk[:-1]):
                    if not self._send(transfer, b"".join(chunk), gso=True):
                        return False
                    if transfer.segment:
                        continue
                for datagram in chunk:  # short blocks inside, or GSO just turned itself off
                    if not self._send(transfer, datagram):
                        return False
            return True
        return all(self._send(transfer, datagram) for datagram in datagrams)

    def _send(self, transfer: _Transfer, data: bytes, *, gso: bool = False) -> bool:
        """Send one datagram (or one GSO train); False when the client is gone (the transfer is
        then finished). A GSO send the device refuses turns GSO off for this transfer and
        returns True without sending: the caller then sends the datagrams one by one."""
        sock = transfer.sock
        if sock is None:
            return True
        try:
            sock.send(data)
        except (BlockingIOError, InterruptedError):
            pass  # socket buffer full: the datagram is lost, the timer resends it
        except OSError as err:
            if gso and err.errno in (errno.EIO, errno.EINVAL, errno.EMSGSIZE):
                logger.debug("%s UDP GSO refused (%s): sending datagrams one by one",
                             transfer.log_prefix, err)  # fmt: skip
                transfer.segment = 0
                _disable_gso(sock)
                return True
            self.on_unreachable(transfer, err)
            return False
        return True

    def _arm(self, transfer: _Transfer, deadline: float) -> None:
        transfer.deadline = deadline
        if transfer.handle is not None:
            if transfer.handle_at <= deadline:
                return  # fires early, then re-arms for the new deadline
            transfer.handle.cancel()
        assert self._loop is not None
        transfer.handle_at = deadline
        transfer.handle = self._loop.call_at(deadline, self._fire, transfer)

    def _fire(self, transfer: _Transfer) -> None:
        transfer.handle = None
        if transfer.session.closed:
            return
        assert self._loop is not None
        now = self._loop.time()
        if now < transfer.deadline:
            self._arm(transfer, transfer.deadline)
            return
        self._run(transfer, transfer.session.timer(now))

    def _finish(self, transfer: _Transfer) -> None:
        if self.transfers.pop(transfer.xfer, None) is None:
            return
        self._release(transfer)
        self.metrics.active.dec()
        stats = transfer.session.stats
        self.history.append(stats)
        outcome = stats.outcome or Outcome.ERROR
        self.metrics.transfers.labels(outcome.value).inc()
        self.metrics.bytes.inc(stats.sent_bytes)
        self.metrics.retransmits.inc(stats.retransmits)
        self.metrics.duration.observe(stats.duration)
        level = logging.DEBUG if outcome in (Outcome.PROBE, Outcome.NOT_FOUND) else logging.INFO
        logger.log(
            level,
            "%s file=%s outcome=%s bytes=%d blocks=%d retransmits=%d blksize=%d windowsize=%d "
            "duration=%.3fs",
            transfer.log_prefix, stats.file, outcome.value, stats.bytes, stats.blocks,
            stats.retransmits, stats.blksize, stats.windowsize, stats.duration,
        )  # fmt: skip

    def _release(self, transfer: _Transfer) -> None:
        if transfer.handle is not None:
            transfer.handle.cancel()
            transfer.handle = None
        sock = transfer.sock
        if sock is not None:
            transfer.sock = None
            if self._loop is not None:
                self._loop.remove_reader(sock.fileno())
            sock.close()
        if not transfer.session.closed and self._loop is not None:
            transfer.session.abort(Outcome.ABORTED, self._loop.time())


def _enable_gso(sock: socket.socket, segment: int) -> int:
    """Let one ``send`` carry a train of datagrams of ``segment`` bytes (Linux UDP GSO, 4.18+);
    returns the segment size, or 0 when the kernel does not offer it."""
    try:
        sock.setsockopt(socket.IPPROTO_UDP, _UDP_SEGMENT, segment)
    except OSError:
        return 0
    return segment


def _disable_gso(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_UDP, _UDP_SEGMENT, 0)


class _Listener(asyncio.DatagramProtocol):
    def __init__(self, server: TftpServer) -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.server.on_request(data, addr)

    def error_received(self, exc: Exception) -> None:
        logger.debug("tftp: listener socket error: %s", exc)
