"""The data path of TFTP transfers: one thread, one epoll, every transfer socket.

Theory of operation
-------------------
The asyncio shell (:mod:`piman.netboot.tftp.server`) accepts requests, runs the application hook,
makes each transfer's session and socket and sends the answer to the request; then it hands the
transfer and the session's other first actions to :meth:`TransferPump.submit`. From there on a
single pump thread owns the transfer: it waits on an epoll set of every transfer socket (plus a
wake-up socket for submissions and stop), feeds each datagram to the session and carries out
the actions it returns — ``Send`` →
``socket.send``, ``ArmTimer`` → a lazily re-armed entry in one deadline heap, ``Close`` → the
socket is closed and the transfer handed back to the event loop with
``loop.call_soon_threadsafe`` for its stats, metrics and log line.

Why a thread: in lock-step every block costs a round trip, and the asyncio dispatch of one
datagram (selector, handle, callback) cost more than the session's own work. Here a datagram is
``epoll_wait`` → ``read`` → :meth:`~piman.netboot.tftp.session.TftpSession.ack_datagram` →
``send``. The pump holds the GIL only between system calls, so the event loop thread is not
starved. Sessions are touched by the pump thread only, after :meth:`submit`.

With two transfers or more, lock-step blocks go through C (:mod:`piman.netboot.tftp._lanes`,
built with piman when a C compiler is there; ``tftp.native: false`` turns it off). The session
plans each transfer's next turns (:meth:`~piman.netboot.tftp.session.TftpSession.lockstep_plan`:
256 ACKs it expects, and the DATA datagram that answers each); ``Lanes.run`` waits on the epoll
set without the GIL and answers every expected ACK from its lane. It hands back to Python what
needs the protocol: a lane done (the pump records its turns with
:meth:`~piman.netboot.tftp.session.TftpSession.lockstep_advance` and plans the next), any other
datagram (a duplicate ACK, an ERROR: the lane has not moved), a failed socket, a socket with no
lane (an OACK awaiting ACK 0, a window, the last block) and the wake-up socket. Timers see the
turns done in C before they judge (:meth:`_settle`). Its waits spin as the Python loop's do
(below): with fifty clients on another CPU, a wait that sleeps costs each ACK a wake-up across
CPUs, paid by the clients (fifty curl processes on CPU 1, piman alone on CPU 0: 0.87× dnsmasq
without the spin, 1.02× with it). Per block that leaves ``recv``, a
comparison of four bytes and ``send`` in C, against some 1 µs of Python in the loop below,
which serves when the C path is not there.

When one transfer is all there is (a Pi booting alone: the common case), the pump *parks* on
it: a blocking ``read`` (at most 5 ms; a new transfer waits one block at most, a due timer one
batch) replaces ``epoll_wait`` + ``read``, and the answers to the next ACKs are ready before
the ACKs arrive (:meth:`~piman.netboot.tftp.session.TftpSession.lockstep_turns`), so one bytes
comparison is all that stands between the ``read`` and the ``write``; the bookkeeping follows a
batch of blocks, while the client works. DATA datagrams come from the file cache's memo when
an earlier transfer of the same file at the same block size built them
(:meth:`~piman.netboot.tftp.files.ByteSource.memo`).

Before it sleeps for a client (in the parked ``read`` or in ``epoll_wait``), the pump spins a
while (``tftp.busy_poll``, 100 µs by default), asking again without blocking and giving the CPU
away between asks: when the ACK comes within that, as it does from a client on this machine or a
fast LAN, the wake-up it saves costs more than the spin. :mod:`piman.netboot.tftp.busypoll`
decides how long, and stops spinning for a while when spins do not pay.

With a window (RFC 7440), a run of full-size blocks leaves in one ``sendmsg`` through UDP
generic segmentation offload (:meth:`~piman.netboot.tftp.transfer.Transfer.send_all`).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import select
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable

from piman.netboot.tftp.busypoll import BusyPoll

try:
    from piman.netboot.tftp import _lanes
except ImportError:  # built without a C compiler: the Python data path serves alone
    _lanes = None  # type: ignore[assignment]
from piman.netboot.tftp.packets import MalformedPacket, Opcode, decode
from piman.netboot.tftp.session import Action, ArmTimer, Send, TransferOutcome
from piman.netboot.tftp.transfer import Transfer, enable_gso

__all__ = ["TransferPump"]

logger = logging.getLogger(__name__)

_ACK = int(Opcode.ACK)
_READ_SIZE = 512 - 33  # a client datagram at most: 4-byte ACKs, ERRORs; 479 keeps the bytes
# object in Python's small-object allocator (a 64 KiB buffer cost a malloc and realloc per ACK)
_MAX_EVENTS = 256  # per epoll_wait (the default sizes a 1023-entry buffer per call)
_PARK_TIMEVAL = struct.pack("ll", 0, 5000)  # a parked pump blocks 5 ms at most per read
_PARK_TURNS = 64  # lock-step turns prepared at once; the session's bookkeeping follows each batch
_DONTWAIT = socket.MSG_DONTWAIT
_MAX_WAIT = 1.0  # seconds the pump sleeps at most (it is woken for submissions and stop)
_LANE_TURNS = 256  # lock-step turns handed to the C data path at once, per transfer


class TransferPump:
    """Runs transfers in one thread; see the module docstring."""

    def __init__(
        self,
        on_close: Callable[[Transfer], None],
        *,
        on_fail: Callable[[Exception], None] | None = None,
        busy_poll: float = 0.0,
        native: bool = True,
    ) -> None:
        self.on_close = on_close  # called in the pump thread; must be thread-safe
        self.on_fail = on_fail  # called in the pump thread when it dies; must be thread-safe
        self.busy = BusyPoll(busy_poll)  # how long a wait for a client spins before it sleeps
        self._lanes = (
            _lanes.Lanes(read_size=_READ_SIZE, max_events=_MAX_EVENTS)
            if native and _lanes is not None
            else None
        )
        self._epoll = select.epoll()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._epoll.register(self._wake_r.fileno(), select.EPOLLIN)
        self._by_fd: dict[int, Transfer] = {}
        self._submitted: deque[tuple[Transfer, list[Action]]] = deque()
        self._heap: list[tuple[float, int, Transfer]] = []
        self._seq = itertools.count()
        self._stopping = False
        self._thread = threading.Thread(target=self._main, name="tftp-pump", daemon=True)

    # -- called from the event loop thread ----------------------------------------------------

    @property
    def native(self) -> bool:
        """Whether lock-step blocks go through the C data path (:mod:`._lanes`)."""
        return self._lanes is not None

    def start(self) -> None:
        self._thread.start()

    def submit(self, transfer: Transfer, actions: list[Action]) -> None:
        """Hand a transfer (socket connected, session started or refused) to the pump."""
        self._submitted.append((transfer, actions))
        self._wake()

    def stop(self) -> list[Transfer]:
        """Stop the thread; returns the transfers still open (their sockets closed)."""
        self._stopping = True
        self._wake()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        left = list(self._by_fd.values())
        left += [t for t, _ in self._submitted]
        self._submitted.clear()
        for transfer in left:
            self._release(transfer)
            transfer.session.abort(TransferOutcome.ABORTED, time.monotonic())
        self._by_fd.clear()
        self._epoll.close()
        self._wake_r.close()
        self._wake_w.close()
        return left

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    # -- the pump thread ----------------------------------------------------------------------

    def _main(self) -> None:
        """The thread's top level. An exception in one transfer ends that transfer
        (:meth:`_guarded`); one that reaches here is a fault of the pump itself: the thread
        ends and ``on_fail`` tells the server, whose service then fails and is restarted."""
        try:
            if self._lanes is not None:
                self._main_lanes(self._lanes)
            else:
                self._main_python()
        except Exception as err:
            logger.exception("tftp: the transfer pump failed; the TFTP service stops to restart")
            if self.on_fail is not None:
                self.on_fail(err)

    def _main_lanes(self, lanes: _lanes.Lanes) -> None:
        """The epoll loop with the C data path: :meth:`_lanes.Lanes.run` answers the expected
        ACKs of lock-step transfers from their lanes and hands everything else back here."""
        wake_fd = self._wake_r.fileno()
        epoll_fd = self._epoll.fileno()
        by_fd = self._by_fd
        run = lanes.run
        busy = self.busy
        now = time.monotonic()
        while not self._stopping:
            spin = busy.spin_for() if by_fd and busy.budget else 0.0
            results, hits, missed = run(epoll_fd, self._wait_time(now), spin)
            if hits:
                busy.hit(hits)
            if missed:
                busy.miss()
            now = time.monotonic()
            for fd, kind, value in results:
                transfer = by_fd.get(fd)
                if transfer is not None:
                    self._guarded(self._lane_event, transfer, kind, value, now)
                elif fd == wake_fd:
                    self._drain_wake()
            now = self._between_batches(now)

    def _lane_event(
        self, transfer: Transfer, kind: int, value: bytes | int | None, now: float
    ) -> None:
        """What :meth:`_lanes.Lanes.run` handed back for one transfer."""
        self._settle(transfer, now)
        if kind == _lanes.DATAGRAM:
            assert isinstance(value, bytes)
            self._datagram(transfer, value)
        elif kind == _lanes.FAILED:
            assert isinstance(value, int)
            self._unreachable(transfer, OSError(value, os.strerror(value)))
        elif kind == _lanes.READY:  # no lane: an OACK, a window, the last block outstanding
            try:
                data = os.read(transfer.fd, _READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # ICMP port unreachable on the connected socket
                self._unreachable(transfer, err)
                return
            self._datagram(transfer, data)
        self._relane(transfer)  # EXHAUSTED, or the session moved on

    def _settle(self, transfer: Transfer, now: float) -> None:
        """Record in the session the lock-step turns the C data path did for it."""
        lanes = self._lanes
        if lanes is None or transfer.sock is None:
            return
        done = lanes.take(transfer.fd)
        if done:
            session = transfer.session
            session.lockstep_advance(done, now)
            if transfer.armed_at is None:
                self._arm(transfer, session.deadline)

    def _relane(self, transfer: Transfer) -> None:
        """Give a settled transfer the lane of its next lock-step turns, or none."""
        lanes = self._lanes
        if lanes is None or transfer.sock is None:
            return
        if transfer.session.lockstep:
            lanes.set(transfer.fd, *transfer.session.lockstep_plan(_LANE_TURNS))
        else:
            lanes.drop(transfer.fd)

    def _main_python(self) -> None:
        wake_fd = self._wake_r.fileno()
        by_fd = self._by_fd
        poll = self._epoll.poll
        monotonic = time.monotonic
        read = os.read
        write = os.write
        busy = self.busy
        now = monotonic()
        while not self._stopping:
            wait = self._wait_time(now)
            if by_fd and busy.budget:
                events = busy.poll(poll, wait, _MAX_EVENTS)
            else:
                events = poll(wait, _MAX_EVENTS)
            now = monotonic()  # one clock read per batch: a batch lasts microseconds
            for fd, _ in events:
                transfer = by_fd.get(fd)
                if transfer is None:
                    if fd == wake_fd:
                        self._drain_wake()
                    continue
                # The lock-step hot path, inlined: read, ack_datagram, write, and the
                # timer only when none is armed (the session keeps the live deadline).
                try:
                    data = read(fd, _READ_SIZE)
                    session = transfer.session
                    datagram = session.ack_datagram(data, now)
                    if datagram is not None:
                        write(fd, datagram)
                        if transfer.armed_at is None:
                            self._arm(transfer, session.deadline)
                        continue
                except (BlockingIOError, InterruptedError):
                    continue  # nothing to read, or a full buffer: the timer resends
                except OSError as err:  # ICMP port unreachable on the connected socket
                    self._guarded(self._unreachable, transfer, err)
                    continue
                except Exception as err:  # noqa: BLE001 - ends this transfer, not the pump
                    self._failed(transfer, err)
                    continue
                self._guarded(self._datagram, transfer, data)
            now = self._between_batches(now)

    def _wait_time(self, now: float) -> float:
        """How long the next wait may last: until the first timer, or :data:`_MAX_WAIT`
        (``now`` is the clock read after the last batch: a timer is late by that batch)."""
        heap = self._heap
        if not heap:
            return _MAX_WAIT
        wait = heap[0][0] - now
        return 0.0 if wait < 0.0 else min(wait, _MAX_WAIT)

    def _between_batches(self, now: float) -> float:
        """Take submissions, run due timers, and park on a lone lock-step transfer (for as
        long as it stays alone); returns the clock, read again after parking."""
        if self._submitted:
            self._take_submissions()
        heap = self._heap
        if heap and heap[0][0] <= now:
            self._expire()
        if len(self._by_fd) == 1 and not self._submitted and not self._stopping:
            (only,) = self._by_fd.values()
            if only.session.lockstep:
                self._guarded(self._park_alone, only, now)
                now = time.monotonic()
                self._guarded(self._relane, only)
        return now

    def _park_alone(self, transfer: Transfer, now: float) -> None:
        self._settle(transfer, now)  # its lane's turns, then no lane while parked
        if self._lanes is not None and transfer.sock is not None:
            self._lanes.drop(transfer.fd)
        self._park(transfer)

    def _park(self, transfer: Transfer) -> None:
        """Serve the only transfer, lock-step, with blocking reads.

        The session prepares the next turns (:meth:`TftpSession.lockstep_turns`: the ACK each
        block should bring and the DATA that answers it) a batch at a time, before their ACKs
        arrive. Per block there is then a ``read``, one comparison of bytes and a ``write``;
        the session records the batch (:meth:`TftpSession.lockstep_advance`) after its last
        ``write``, while the client works. One system call less per block than the epoll
        loop, too.

        Parking ends, and the epoll loop takes over, when the client is quiet for 5 ms, when
        a timer of this transfer is due (the whole-transfer limit with a client that keeps
        up; checked after each batch), on any datagram but the expected ACK, when a transfer
        is submitted or the pump stops (checked before each block) and when the transfer
        leaves lock-step (last block sent, closed).
        """
        sock = transfer.sock
        session = transfer.session
        turns = session.lockstep_turns(_PARK_TURNS)
        if sock is None or not turns:
            return
        fd = transfer.fd
        recv = sock.recv
        read = os.read
        write = os.write
        submitted = self._submitted
        busy = self.busy
        spins = self.busy.budget > 0  # else every wait sleeps in read at once
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _PARK_TIMEVAL)
            os.set_blocking(fd, True)
        except OSError:
            return
        try:
            while turns and not submitted and not self._stopping:
                done = 0
                data = b""
                try:
                    for expected, datagram in turns:
                        if submitted or self._stopping:  # a newcomer waits one block at most
                            data = b""
                            break
                        if spins:
                            try:
                                data = recv(_READ_SIZE, _DONTWAIT)  # the ACK may be here
                            except BlockingIOError:
                                data = busy.read(fd, recv, _READ_SIZE)
                        else:
                            data = read(fd, _READ_SIZE)
                        if data != expected:
                            break
                        write(fd, datagram)
                        done += 1
                except (BlockingIOError, InterruptedError):
                    data = b""  # quiet for a while: the epoll loop watches the timers
                finally:
                    now = time.monotonic()
                    if done:
                        session.lockstep_advance(done, now)
                        if transfer.armed_at is None:
                            self._arm(transfer, session.deadline)
                if done < len(turns):
                    if data:
                        self._datagram(transfer, data)  # a duplicate ACK, an ERROR, junk …
                    return
                armed = transfer.armed_at
                if armed is not None and now >= armed:
                    return  # a timer is due: the epoll loop runs it (and parks again)
                turns = session.lockstep_turns(_PARK_TURNS)
        except OSError as err:  # ICMP port unreachable on the connected socket
            self._unreachable(transfer, err)
        except Exception as err:  # noqa: BLE001 - ends this transfer, not the pump
            self._failed(transfer, err)
        finally:
            if transfer.sock is not None:
                with contextlib.suppress(OSError):
                    os.set_blocking(fd, False)

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while self._wake_r.recv(4096):
                pass

    def _take_submissions(self) -> None:
        while self._submitted:
            transfer, actions = self._submitted.popleft()
            self._guarded(self._take, transfer, actions)

    def _take(self, transfer: Transfer, actions: list[Action]) -> None:
        sock = transfer.sock
        if sock is None:
            return
        fd = sock.fileno()
        self._epoll.register(fd, select.EPOLLIN)  # raises: this transfer fails, not the pump
        transfer.fd = fd
        self._by_fd[fd] = transfer
        if transfer.session.stats.windowsize > 1:
            transfer.segment = enable_gso(sock, transfer.session.stats.blksize + 4)
        self._guarded(self._run, transfer, actions)
        self._guarded(self._relane, transfer)

    def _guarded(self, call: Callable[..., None], transfer: Transfer, *args: object) -> None:
        try:
            call(transfer, *args)
        except Exception as err:  # noqa: BLE001 - ends this transfer, not the pump
            self._failed(transfer, err)

    def _failed(self, transfer: Transfer, err: Exception) -> None:
        """An unexpected error in one transfer (logged with its traceback) ends that transfer."""
        logger.error("%s transfer failed", transfer.log_prefix, exc_info=err)
        transfer.session.abort(TransferOutcome.ERROR, time.monotonic())
        self._close(transfer)

    def _datagram(self, transfer: Transfer, data: bytes) -> None:
        """The general path for a datagram from the client."""
        if transfer.sock is None:
            return
        session = transfer.session
        now = time.monotonic()
        if len(data) == 4 and data[1] == _ACK and data[0] == 0:  # not the lock-step hot path
            block = (data[2] << 8) | data[3]
            train = session.ack_window(block, now)
            if train is not None:  # a window moved on: its new blocks, in one GSO send
                if train and not self._send_all(transfer, train):
                    return
                if transfer.armed_at is None:
                    self._arm(transfer, session.deadline)
                return
            actions = session.receive_ack(block, now)
        else:
            if len(data) == _READ_SIZE and data[:2] == b"\0\5" and b"\0" not in data[4:]:
                data += b"\0"  # an ERROR whose message was longer than the read: keep its start
            try:
                packet = decode(data)
            except MalformedPacket as err:
                logger.debug("%s malformed datagram ignored: %s", transfer.log_prefix, err)
                return
            actions = session.receive(packet, now)
        self._run(transfer, actions)

    def _unreachable(self, transfer: Transfer, err: OSError) -> None:
        logger.debug("%s client unreachable: %s", transfer.log_prefix, err)
        transfer.session.abort(TransferOutcome.ABORTED, time.monotonic())
        self._close(transfer)

    def _run(self, transfer: Transfer, actions: list[Action]) -> None:
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
                self._close(transfer)
        if batch:
            self._send_all(transfer, batch)

    def _send_all(self, transfer: Transfer, datagrams: list[bytes]) -> bool:
        """:meth:`Transfer.send_all`; False when the transfer ended (client gone, or closed)."""
        if transfer.sock is None:
            return False
        try:
            transfer.send_all(datagrams)
        except OSError as err:
            self._unreachable(transfer, err)
            return False
        return True

    def _arm(self, transfer: Transfer, deadline: float) -> None:
        transfer.deadline = deadline
        if transfer.armed_at is None or deadline < transfer.armed_at:
            transfer.armed_at = deadline
            heapq.heappush(self._heap, (deadline, next(self._seq), transfer))

    def _expire(self) -> None:
        now = time.monotonic()
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, transfer = heapq.heappop(heap)
            if transfer.armed_at == when:
                transfer.armed_at = None
            if transfer.session.closed or transfer.sock is None:
                continue
            self._guarded(self._settle, transfer, now)  # turns the C data path did since
            deadline = transfer.deadline = transfer.session.deadline
            if deadline > now:
                self._arm(transfer, deadline)  # moved on since: wait for the new one
            else:
                self._guarded(self._run, transfer, transfer.session.timer(now))
                self._guarded(self._relane, transfer)

    def _close(self, transfer: Transfer) -> None:
        if transfer.sock is None:
            return
        self._release(transfer)
        self.on_close(transfer)

    def _release(self, transfer: Transfer) -> None:
        sock = transfer.sock
        if sock is None:
            return
        transfer.sock = None
        if self._lanes is not None and transfer.fd >= 0:  # fd -1: submitted, never taken
            with contextlib.suppress(RuntimeError):  # stop() after a join that timed out
                self._lanes.drop(transfer.fd)
        if self._by_fd.pop(transfer.fd, None) is not None:
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(transfer.fd)
        sock.close()
