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
rate-limited per source address and from all sources together
(:mod:`~piman.netboot.tftp.ratelimit`).

Bounds. At most ``tftp.max_transfers`` transfers run at once, fewer if the open-file limit
(raised when the service starts, :mod:`~piman.netboot.tftp.fdlimit`) would not leave
``tftp.fd_reserve`` descriptors to the rest of the manager; each lasts at most
``tftp.transfer_timeout``. A netascii file is converted in a worker thread and then a chunk at
a time (:class:`~piman.netboot.tftp.files.NetasciiSource`). Whatever fails while a transfer
starts ends that transfer with an ERROR and closes its socket. When the pump thread itself
dies, :meth:`TftpServer.serve` raises: the manager's supervisor restarts the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from piman.config.netboot import TftpSettings
from piman.errors import PimanError
from piman.netboot.tftp.fdlimit import MIN_TRANSFERS, open_fds, raise_nofile, transfer_room
from piman.netboot.tftp.files import AccessViolation, ByteSource, NetasciiSource, Opener
from piman.netboot.tftp.packets import ErrorCode, MalformedPacket, Opcode, Request, decode
from piman.netboot.tftp.pump import TransferPump
from piman.netboot.tftp.ratelimit import Refusal, RequestLimiter
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
        self.limit = Gauge(
            "piman_tftp_transfer_limit",
            "TFTP transfers allowed at once (tftp.max_transfers, lowered to fit the fd limit).",
            registry=registry,
        )


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
            max_client_timeout=settings.max_client_timeout,
        )
        self.limiter = RequestLimiter(
            settings.rate_limit, settings.rate_limit_total, settings.rate_limit_exempt
        )  # fmt: skip
        self.max_transfers = settings.max_transfers  # lowered at start to fit the fd limit
        self.transfers: dict[int, Transfer] = {}
        self.history: deque[SessionStats] = deque(maxlen=1000)
        self.address: tuple[str, int] | None = None  # where the listener is bound
        self.ready = asyncio.Event()
        self._ids = itertools.count(1)
        self._requests: dict[tuple[tuple[str, int], Request], Transfer] = {}  # repeats
        self._garbage_logged: dict[str, float] = {}
        self._warned: dict[str, float] = {}  # last WARNING about the listener, by reason
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._pump: TransferPump | None = None
        self._scans = asyncio.Semaphore(1)  # netascii files read through, one at a time

    # -- lifecycle ----------------------------------------------------------------------------

    async def serve(self) -> None:
        """Listen until cancelled; open transfers are closed on the way out.

        Raises :class:`PimanError` when the listener cannot be bound, or when the pump thread
        died (a fault of the pump, logged with its traceback): the supervisor restarts us.
        """
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._fit_fd_limit()
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
        pump_failed: asyncio.Future[Exception] = loop.create_future()

        def on_fail(err: Exception) -> None:  # in the pump thread
            def tell() -> None:
                if not pump_failed.done():
                    pump_failed.set_result(err)

            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to tell
                loop.call_soon_threadsafe(tell)

        self._pump = TransferPump(
            self._closed, on_fail=on_fail, busy_poll=self.settings.busy_poll,
            native=self.settings.native,
        )  # fmt: skip
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
            failure = await pump_failed
            raise PimanError(f"TFTP transfer pump stopped: {failure!r}") from failure
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

    def _fit_fd_limit(self) -> None:
        """Raise the open-file limit; lower :attr:`max_transfers` to what it leaves room for
        beside ``tftp.fd_reserve`` (at least :data:`MIN_TRANSFERS`, with a warning)."""
        soft, hard = raise_nofile()
        wanted = self.settings.max_transfers
        room = transfer_room(soft, open_fds(), self.settings.fd_reserve)
        self.max_transfers = wanted
        if room < wanted:
            self.max_transfers = max(room, min(MIN_TRANSFERS, wanted))
            logger.warning(
                "tftp: the open-file limit (%d, hard %d) leaves room for %d transfers beside the "
                "%d descriptors kept for the rest of the manager (tftp.fd_reserve); serving at "
                "most %d at once, not %d (tftp.max_transfers): raise the limit (LimitNOFILE=)",
                soft, hard, max(room, 0), self.settings.fd_reserve, self.max_transfers, wanted,
            )  # fmt: skip
        self.metrics.limit.set(self.max_transfers)

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
        refusal = self.limiter.check(peer[0], now)
        if refusal is not None:
            self.metrics.dropped.labels(refusal.value).inc()
            if refusal is Refusal.OVERLOAD:
                self._warn("overload", now, "tftp: more than %g new requests per second from all "
                           "sources (tftp.rate_limit_total): dropping some, the latest from %s",
                           self.limiter.total, peer[0])  # fmt: skip
            else:
                logger.debug("tftp[peer=%s:%d]: rate limited, request dropped", *peer)
            return
        if (peer, packet) in self._requests:
            logger.debug("tftp[peer=%s:%d]: repeated request ignored", *peer)
            return
        if len(self.transfers) >= self.max_transfers:
            self.metrics.dropped.labels("busy").inc()
            self._warn("busy", now, "tftp: %d transfers running (the limit): refusing new "
                       "requests, the latest from %s", self.max_transfers, peer[0])  # fmt: skip
            return
        session = TftpSession(packet, f"{peer[0]}:{peer[1]}", self.session_settings, now)
        xfer = next(self._ids)
        transfer = Transfer(xfer, peer, session, log_prefix=f"tftp[peer={peer[0]}:{peer[1]} "
                             f"xfer={xfer}]")  # fmt: skip
        self.transfers[xfer] = transfer
        self._requests[peer, packet] = transfer
        self.metrics.active.inc()
        task = self._loop.create_task(self._start(transfer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _warn(self, reason: str, now: float, message: str, *args: object) -> None:
        """A WARNING about the listener, at most once every :data:`LOG_EVERY` seconds per
        reason (a flood must not flood the log); DEBUG otherwise."""
        if now - self._warned.get(reason, -LOG_EVERY) >= LOG_EVERY:
            self._warned[reason] = now
            logger.warning(message, *args)
        else:
            logger.debug(message, *args)

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
        """Answer a request and hand its transfer to the pump. Whatever fails on the way ends
        the transfer with an ERROR (when its socket is open) and closes it: none is leaked."""
        assert self._loop is not None
        try:
            actions = await self._begin(transfer)
        except Exception:  # a fault of ours or of the hook's source: this transfer ends
            logger.exception("%s starting the transfer failed", transfer.log_prefix)
            actions = transfer.session.refuse(
                ErrorCode.NOT_DEFINED, "server error", TransferOutcome.ERROR, self._loop.time()
            )  # fmt: skip
        self._submit(transfer, actions)

    async def _begin(self, transfer: Transfer) -> list[Action]:
        """The transfer's socket, the hook's source and the session's first actions."""
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
            self._warn("socket", self._loop.time(), "%s cannot open a transfer socket: %s",
                       transfer.log_prefix, err)  # fmt: skip
            return session.refuse(ErrorCode.NOT_DEFINED, "", TransferOutcome.ERROR,
                                  self._loop.time())  # fmt: skip
        transfer.sock = sock
        if request.opcode == Opcode.WRQ:
            logger.warning("%s write request for %r refused", transfer.log_prefix, request.filename)
            return session.refuse(
                ErrorCode.ACCESS_VIOLATION, "read-only server", TransferOutcome.REFUSED,
                self._loop.time(),
            )  # fmt: skip
        try:
            async with asyncio.timeout(OPEN_TIMEOUT):
                source = await self.opener(request.filename, transfer.peer)
                if source is not None and request.mode.lower() == "netascii":
                    source = await _converted(source, self._scans)
        except AccessViolation as err:
            logger.warning(
                "%s refused path %r: %s", transfer.log_prefix, request.filename, err
            )  # fmt: skip
            return session.refuse(
                ErrorCode.ACCESS_VIOLATION, "access violation", TransferOutcome.ACCESS_DENIED,
                self._loop.time(),
            )  # fmt: skip
        except (OSError, TimeoutError) as err:
            return self._read_error(transfer, err)
        except Exception:  # one request's failure must not leak its transfer
            logger.exception("%s opening %r failed", transfer.log_prefix, request.filename)
            return session.refuse(
                ErrorCode.NOT_DEFINED, "server error", TransferOutcome.ERROR, self._loop.time()
            )  # fmt: skip
        now = self._loop.time()
        if source is None:
            return session.refuse(
                ErrorCode.FILE_NOT_FOUND, "file not found", TransferOutcome.NOT_FOUND, now
            )  # fmt: skip
        try:
            return session.start(source, now)  # reads block 1; on failure, closes the source
        except OSError as err:
            return self._read_error(transfer, err)

    def _read_error(self, transfer: Transfer, err: Exception) -> list[Action]:
        assert self._loop is not None
        logger.error("%s cannot read %r: %r", transfer.log_prefix,
                     transfer.session.request.filename, err)  # fmt: skip
        return transfer.session.refuse(
            ErrorCode.NOT_DEFINED, "read error", TransferOutcome.ERROR, self._loop.time()
        )  # fmt: skip

    def _submit(self, transfer: Transfer, actions: list[Action]) -> None:
        if self._pump is None or transfer.sock is None:  # stopping, or no socket to send on
            transfer.session.abort(TransferOutcome.ABORTED, time.monotonic())
            self._finish(transfer)
            return
        self._pump.submit(transfer, _send_first(transfer, actions))

    def _finish(self, transfer: Transfer) -> None:
        """A transfer is over (its socket closed): stats to the log, the metrics, the history."""
        if self.transfers.pop(transfer.xfer, None) is None:
            return
        key = (transfer.peer, transfer.session.request)
        if self._requests.get(key) is transfer:
            del self._requests[key]
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


async def _converted(source: ByteSource, scans: asyncio.Semaphore) -> NetasciiSource:
    """``source`` as netascii, made in a worker thread: making it reads the whole file once
    (once per cached file), so ``scans`` lets one thread at a time do it, whatever a flood of
    netascii requests asks.

    If the caller is cancelled (a timeout, the server stopping), the source is closed, once
    the thread is done with it."""
    try:
        await scans.acquire()
    except BaseException:
        source.close()
        raise
    job = asyncio.get_running_loop().run_in_executor(None, NetasciiSource, source)
    job.add_done_callback(lambda _: scans.release())  # when the thread is done, not before
    try:
        return await asyncio.shield(job)
    except BaseException:

        def close(done: asyncio.Future[NetasciiSource]) -> None:
            if not done.cancelled():
                done.exception()  # retrieved: the caller has logged or dropped it already
            source.close()

        job.add_done_callback(close)
        raise


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
