"""The asyncio shell around :class:`~piman.netboot.tftp.session.TftpSession`.

One listener socket takes requests (0.0.0.0:69 pinned to ``manager.interface`` with
``SO_BINDTODEVICE``, or the ``tftp.listen`` address); every accepted request gets a new socket on
a fresh ephemeral port (its TID), connected to the client, so the kernel filters foreign TIDs and
a send is one ``send`` without an address. The event loop runs the listener and the
application hook (``opener``: path and client → byte source or None), makes the session, sends
the answer to the request (OACK, first DATA or ERROR) and hands the session with the actions left
to the :class:`~piman.netboot.tftp.pump.TransferPump`, whose thread carries the data path of
every transfer; when a transfer ends, its stats come back to the loop, which logs them and
exports them as metrics.

Garbage never crashes the server: malformed datagrams are counted and logged at WARNING with the
peer (at most once per source every :data:`LOG_EVERY` seconds) and dropped; new requests are
rate-limited per source address (a token bucket of ``tftp.rate_limit`` per second).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import time
from collections import deque
from ipaddress import IPv4Address

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from piman.config.netboot import TftpSettings
from piman.errors import PimanError
from piman.netboot.tftp.files import AccessViolation, Opener
from piman.netboot.tftp.packets import ErrorCode, MalformedPacket, Opcode, Request, decode
from piman.netboot.tftp.pump import TransferPump
from piman.netboot.tftp.session import (
    Action,
    Send,
    SessionSettings,
    SessionStats,
    TftpSession,
    TransferOutcome,
)
from piman.netboot.tftp.transfer import Transfer

__all__ = ["LOG_EVERY", "OPEN_TIMEOUT", "TftpMetrics", "TftpServer"]

logger = logging.getLogger(__name__)

LOG_EVERY = 10.0  # seconds between two WARNINGs about the same source's garbage
OPEN_TIMEOUT = 10.0  # seconds the application hook may take to find a file
_SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)


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
        self.transfers: dict[int, Transfer] = {}
        self.history: deque[SessionStats] = deque(maxlen=1000)
        self.address: tuple[str, int] | None = None  # where the listener is bound
        self.ready = asyncio.Event()
        self._ids = itertools.count(1)
        self._buckets: dict[str, _Bucket] = {}
        self._garbage_logged: dict[str, float] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._pump: TransferPump | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    async def serve(self) -> None:
        """Listen until cancelled; open transfers are closed on the way out."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        try:
            sock = self._socket(self.listen, listener=True)
        except OSError as err:  # one line, as DHCP says it: no such interface, port taken …
            where = f"{self.listen[0]}:{self.listen[1]}"
            if self.interface is not None:
                where += f" on interface {self.interface}"
            raise PimanError(f"TFTP cannot listen on {where}: {err.strerror or err}") from err
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Listener(self), sock=sock
        )  # fmt: skip
        self.address = sock.getsockname()
        self._pump = TransferPump(
            self._closed, busy_poll=self.settings.busy_poll, native=self.settings.native
        )
        self._pump.start()
        logger.info(
            "tftp: listening on %s:%d%s; data path in %s",
            *self.address,
            f" (interface {self.interface})" if self.interface else "",
            "C" if self._pump.native else "Python",
        )
        if self.settings.native and not self._pump.native:
            logger.info("tftp: piman was built without its C data path (no C compiler then)")
        self.ready.set()
        try:
            await asyncio.Future()
        finally:
            self.ready.clear()
            transport.close()
            for task in list(self._tasks):
                task.cancel()
            self._pump.stop()
            self._pump = None
            now = time.monotonic()
            for transfer in list(self.transfers.values()):
                if transfer.sock is not None:  # still waiting for the hook
                    transfer.sock.close()
                    transfer.sock = None
                transfer.session.abort(TransferOutcome.ABORTED, now)
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
        transfer = Transfer(xfer, peer, session, log_prefix=f"tftp[peer={peer[0]}:{peer[1]} "
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
            if self._exempt(source):
                return True
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

    def _exempt(self, source: str) -> bool:
        try:
            address = IPv4Address(source)
        except ValueError:
            return False
        return any(address in network for network in self.settings.rate_limit_exempt)

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

    async def _start(self, transfer: Transfer) -> None:
        assert self._loop is not None
        session = transfer.session
        request = session.request
        try:
            sock = self._socket((self.listen[0], 0), listener=False)
            try:
                sock.connect(transfer.peer)
            except BaseException:
                sock.close()
                raise
        except OSError as err:
            logger.warning("%s cannot open a transfer socket: %s", transfer.log_prefix, err)
            session.refuse(ErrorCode.NOT_DEFINED, "", TransferOutcome.ERROR, self._loop.time())
            self._finish(transfer)
            return
        transfer.sock = sock
        if request.opcode == Opcode.WRQ:
            logger.warning("%s write request for %r refused", transfer.log_prefix, request.filename)
            self._submit(
                transfer,
                session.refuse(
                    ErrorCode.ACCESS_VIOLATION, "read-only server", TransferOutcome.REFUSED,
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
                ErrorCode.ACCESS_VIOLATION, "access violation", TransferOutcome.ACCESS_DENIED,
                self._loop.time(),
            )  # fmt: skip
        except (OSError, TimeoutError) as err:
            logger.error("%s cannot read %r: %r", transfer.log_prefix, request.filename, err)  # noqa: TRY400
            actions = session.refuse(
                ErrorCode.NOT_DEFINED, "read error", TransferOutcome.ERROR, self._loop.time()
            )  # fmt: skip
        except Exception:  # one request's failure must not leak its transfer
            logger.exception("%s opening %r failed", transfer.log_prefix, request.filename)
            actions = session.refuse(
                ErrorCode.NOT_DEFINED, "server error", TransferOutcome.ERROR, self._loop.time()
            )  # fmt: skip
        else:
            now = self._loop.time()
            if source is None:
                actions = session.refuse(
                    ErrorCode.FILE_NOT_FOUND, "file not found", TransferOutcome.NOT_FOUND, now
                )  # fmt: skip
            else:
                actions = session.start(source, now)
        self._submit(transfer, actions)

    def _submit(self, transfer: Transfer, actions: list[Action]) -> None:
        if self._pump is None:  # stopping
            transfer.session.abort(TransferOutcome.ABORTED, time.monotonic())
            self._finish(transfer)
            return
        self._pump.submit(transfer, _send_first(transfer, actions))

    def _finish(self, transfer: Transfer) -> None:
        """A transfer is over (its socket closed): stats to the log, the metrics, the history."""
        if self.transfers.pop(transfer.xfer, None) is None:
            return
        if transfer.sock is not None:
            transfer.sock.close()
            transfer.sock = None
        self.metrics.active.dec()
        stats = transfer.session.stats
        self.history.append(stats)
        outcome = stats.outcome or TransferOutcome.ERROR
        self.metrics.transfers.labels(outcome.value).inc()
        self.metrics.bytes.inc(stats.sent_bytes)
        self.metrics.retransmits.inc(stats.retransmits)
        self.metrics.duration.observe(stats.duration)
        level = (
            logging.DEBUG
            if outcome in (TransferOutcome.PROBE, TransferOutcome.NOT_FOUND)
            else logging.INFO
        )
        logger.log(
            level,
            "%s file=%s outcome=%s bytes=%d blocks=%d retransmits=%d blksize=%d windowsize=%d "
            "duration=%.3fs",
            transfer.log_prefix, stats.file, outcome.value, stats.bytes, stats.blocks,
            stats.retransmits, stats.blksize, stats.windowsize, stats.duration,
        )  # fmt: skip

    def _closed(self, transfer: Transfer) -> None:
        """Called in the pump thread when a transfer ends: finish it in the loop thread."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop stopped meanwhile
                loop.call_soon_threadsafe(self._finish, transfer)


def _send_first(transfer: Transfer, actions: list[Action]) -> list[Action]:
    """Send the answer to the request (OACK, first DATA or ERROR) from the event loop, before
    the pump takes the transfer: the client does not wait for the pump thread to wake up. The
    actions left are the pump's; when this send fails, the pump sends it again and deals with
    the error."""
    sock = transfer.sock
    if not actions or type(actions[0]) is not Send or sock is None:
        return actions
    try:
        sock.send(actions[0].data)
    except OSError:
        return actions
    return actions[1:]


class _Listener(asyncio.DatagramProtocol):
    def __init__(self, server: TftpServer) -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.server.on_request(data, addr)

    def error_received(self, exc: Exception) -> None:
        logger.debug("tftp: listener socket error: %s", exc)
