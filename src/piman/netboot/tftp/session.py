"""One TFTP read transfer as a pure state machine: packets and time in, actions out.

Theory of operation
-------------------
The server shell makes a :class:`TftpSession` for every request that reaches the listener and
then either calls :meth:`~TftpSession.refuse` (write request, file not found, access violation)
or :meth:`~TftpSession.start` with the byte source the application hook returned. From then on
it feeds every packet from the client's TID to :meth:`~TftpSession.receive` and calls
:meth:`~TftpSession.timer` when the last :class:`ArmTimer` deadline passes. Each call returns a
list of actions, in order: :class:`Send` (one datagram, already encoded), :class:`ArmTimer`
(replace the single deadline; a timer event before it is harmless) and :class:`Close` (the
transfer is over; ``stats.outcome`` says how). Nothing here reads the clock or touches a socket.

States: *negotiating* (an OACK was sent, waiting for ACK 0), *sending* (a window of DATA blocks
is outstanding) and *closed*. Blocks are numbered absolutely inside the session (1, 2, …) and
written on the wire modulo 65536, so the 16-bit number wraps to 0 after 65535 (what tftp-hpa,
iPXE, U-Boot and the Pi firmware expect). An ACK is mapped to the absolute block in the
outstanding window; an ACK that moves nothing (a duplicate, or one outside the window) is
ignored: it never triggers a retransmission (no Sorcerer's Apprentice, RFC 1123 §4.2.3.1 — the
Pi 4 re-ACKs duplicates). Retransmission happens only on timeout: the whole outstanding window
(or the OACK) is sent again, up to ``max_retries`` times, then the session closes with outcome
``timeout``. A new ACK slides the window: with windowsize W (RFC 7440) up to W blocks beyond the
last acknowledged one are in flight, and only blocks never sent before are sent on an ACK.

Options (RFC 2347): ``blksize`` (RFC 2348, 8–65464, capped to ``max_blksize``), ``timeout``
(RFC 2349, 1–255 s; above ``max_client_timeout`` it is left out of the OACK, since the server
may not change its value, and the server's own timeout applies), ``tsize`` (RFC 2349, the file
size is returned; in netascii, the converted size) and ``windowsize``
(RFC 7440, 1–65535, capped to ``max_windowsize``). Unknown options are left out of the OACK; a
known option with a value that is not valid is refused with ERROR 8. An ERROR from the client
with code 0 once block 1 was sent and before block 2 was acknowledged (the Pi's ``Early
terminate`` after reading block 1) or with code 8 in answer to the OACK (a size query) ends the
session with outcome ``probe``: it is a normal end, not a failure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import cast

from piman.netboot.tftp.files import ByteSource, Memo, NetasciiSource
from piman.netboot.tftp.packets import (
    MAX_BLOCK,
    Ack,
    Error,
    ErrorCode,
    OAck,
    Opcode,
    Options,
    Packet,
    Request,
    encode,
    encode_data,
    pack_header,
)

_ACK = int(Opcode.ACK)

__all__ = [
    "MAX_BLKSIZE",
    "Action",
    "ArmTimer",
    "Close",
    "Send",
    "SessionSettings",
    "SessionStats",
    "TftpSession",
    "TransferOutcome",
]

MAX_BLKSIZE = 65464  # RFC 2348
DEFAULT_BLKSIZE = 512  # RFC 1350


class TransferOutcome(StrEnum):
    """How a transfer ended (the ``outcome`` label of the transfer metrics)."""

    OK = "ok"
    PROBE = "probe"  # the client read block 1 (or the OACK) and stopped on purpose
    NOT_FOUND = "not_found"
    ACCESS_DENIED = "access_denied"
    REFUSED = "refused"  # write request, bad mode, refused option
    TIMEOUT = "timeout"  # the client stopped answering
    ABORTED = "aborted"  # the client sent an ERROR mid-transfer
    EXPIRED = "expired"  # the whole-transfer time limit passed
    ERROR = "error"  # the server could not read the file


@dataclass(frozen=True, slots=True)
class Send:
    """Send this datagram to the client."""

    data: bytes


@dataclass(frozen=True, slots=True)
class ArmTimer:
    """Call :meth:`TftpSession.timer` at (or after) this time; replaces any earlier deadline."""

    deadline: float


@dataclass(frozen=True, slots=True)
class Close:
    """The transfer is over; release its socket."""

    outcome: TransferOutcome


Action = Send | ArmTimer | Close


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """Limits the server applies to every transfer."""

    retransmit_timeout: float = 1.0
    max_retries: int = 5
    max_blksize: int = 1468
    max_windowsize: int = 64
    transfer_timeout: float | None = None  # None: no whole-transfer limit
    max_client_timeout: float = 10.0  # a longer ``timeout`` option is not acknowledged


@dataclass(slots=True)
class SessionStats:
    """What a finished transfer logs and exports."""

    peer: str
    file: str
    started: float
    size: int | None = None
    bytes: int = 0  # file bytes the client acknowledged
    sent_bytes: int = 0  # payload bytes sent, retransmissions included
    blocks: int = 0  # blocks the client acknowledged
    retransmits: int = 0  # datagrams sent again after a timeout
    blksize: int = DEFAULT_BLKSIZE
    windowsize: int = 1
    options: dict[str, str] = field(default_factory=dict)
    ended: float | None = None
    outcome: TransferOutcome | None = None

    @property
    def duration(self) -> float:
        return 0.0 if self.ended is None else self.ended - self.started


class _Refusal(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class TftpSession:
    """A read transfer to one client TID; see the module docstring."""

    def __init__(self, request: Request, peer: str, settings: SessionSettings, now: float) -> None:
        self.request = request
        self.settings = settings
        self.stats = SessionStats(peer=peer, file=request.filename, started=now)
        self.closed = False
        self._source: ByteSource | None = None
        self._read: Callable[[int, int], bytes] = _nothing
        self._memo: Memo | None = None  # datagrams built once per file and block size
        self._oack: bytes | None = None  # pending OACK datagram until ACK 0 arrives
        self._timeout = settings.retransmit_timeout
        self._blksize = DEFAULT_BLKSIZE
        self._window = 1
        self._total = 0  # number of blocks in the file (the last one is short, maybe empty)
        self._acked = 0
        self._sent = 0
        self._retries = 0
        self._resent_bytes = 0
        self._deadline = now
        self._expect: bytes | None = None  # in lock-step, the ACK of the block outstanding
        limit = settings.transfer_timeout
        self._limit = None if limit is None else now + limit  # whole-transfer deadline

    # -- entry points -------------------------------------------------------------------------

    def refuse(
        self, code: ErrorCode, message: str, outcome: TransferOutcome, now: float
    ) -> list[Action]:
        """Answer the request with an ERROR and close (not found, access violation …)."""
        return self._fail(code, message, outcome, now)

    def start(self, source: ByteSource, now: float) -> list[Action]:
        """Begin the transfer of ``source``: an OACK, or block 1 when no option was accepted.

        In netascii mode the file is served through a :class:`NetasciiSource`; pass one made
        beforehand (its making reads the whole file: the server does that in a thread), or the
        source itself and it is made here. The session owns ``source`` from this call on: it
        is closed when the transfer ends, or here when this raises (a source whose reads fail).
        """
        try:
            return self._start(source, now)
        except BaseException:
            self._source = None
            source.close()
            raise

    def _start(self, source: ByteSource, now: float) -> list[Action]:
        mode = self.request.mode.lower()
        if mode not in ("octet", "netascii"):
            source.close()
            return self._fail(
                ErrorCode.ILLEGAL_OPERATION, f"unsupported mode {self.request.mode!r}",
                TransferOutcome.REFUSED, now,
            )  # fmt: skip
        if mode == "netascii" and not isinstance(source, NetasciiSource):
            source = NetasciiSource(source)
        self._source = source
        self._read = source.read
        self.stats.size = source.size
        try:
            accepted = self._negotiate(source.size)
        except _Refusal as refusal:
            return self._fail(refusal.code, refusal.message, TransferOutcome.REFUSED, now)
        self._total = source.size // self._blksize + 1
        self._memo = source.memo(self._blksize)
        self.stats.blksize = self._blksize
        self.stats.windowsize = self._window
        self.stats.options = dict(accepted)
        if accepted:
            self._oack = encode(OAck(accepted))
            return [Send(self._oack), self._arm(now)]
        return self._send_window(now)

    @property
    def deadline(self) -> float:
        """The current timer deadline (what the last :class:`ArmTimer` said, or later)."""
        limit = self._limit
        return self._deadline if limit is None or self._deadline < limit else limit

    def ack_datagram(self, data: bytes, now: float) -> bytes | None:
        """The hot path of a lock-step transfer, for shells that count microseconds.

        When ``data``, a datagram from the client, is the ACK of the one outstanding block and
        more blocks remain, this is exactly ``receive_ack(block, now)`` — whose actions would be
        ``Send(next block)`` and ``ArmTimer(deadline)`` — returned as the datagram alone; the
        deadline is then :attr:`deadline`. In every other case it changes nothing and returns
        None: decode the datagram and call :meth:`receive`. The test is one comparison of
        bytes with the ACK the session expects.
        """
        if data != self._expect:
            return None
        sent = self._sent  # what lockstep_advance and _block do, inlined: once per block
        self._sent = sent + 1
        self._acked = sent
        self._retries = 0
        self._deadline = now + self._timeout  # the whole-transfer limit: see deadline
        self._expect = pack_header(_ACK, (sent + 1) & MAX_BLOCK) if sent + 1 < self._total else None
        memo = self._memo
        if memo is not None:
            datagram = memo[sent]
            if datagram is not None:
                return datagram
        return self._block(sent + 1)

    def ack_window(self, block: int, now: float) -> list[bytes] | None:
        """The hot path of a windowed transfer (RFC 7440), one call per window.

        When ``block`` acknowledges some or all of the blocks in flight and the transfer goes
        on, this is exactly ``receive_ack(block, now)`` — whose actions would be one ``Send``
        per new block, then ``ArmTimer(deadline)`` — returned as the datagrams alone (maybe
        none); the deadline is then :attr:`deadline`. In every other case (lock-step, OACK
        pending, a duplicate or out-of-window ACK, the final ACK) it changes nothing and
        returns None: call :meth:`receive_ack`.
        """
        acked = self._acked
        n = acked + ((block - acked) & MAX_BLOCK)
        if (
            self._window == 1
            or self._oack is not None
            or self.closed
            or n == acked
            or n > self._sent
            or n >= self._total
        ):
            return None
        self._acked = n
        self._retries = 0
        first = self._sent + 1
        last = min(n + self._window, self._total)
        if last > self._sent:
            self._sent = last
        self._deadline = now + self._timeout  # the whole-transfer limit: see deadline
        memo = self._memo
        if memo is not None:
            train = memo[first - 1 : last]
            if None not in train:
                return cast("list[bytes]", train)  # every slot filled
        return [self._block(k) for k in range(first, last + 1)]

    @property
    def lockstep(self) -> bool:
        """Whether :meth:`lockstep_turns` has turns to offer: a lock-step transfer with a block
        outstanding and more to send."""
        return self._expect is not None

    def lockstep_turns(self, limit: int) -> list[tuple[bytes, bytes]]:
        """The next turns of a lock-step transfer, ready before the client's ACKs arrive.

        Turn ``i`` is the ACK datagram the client will send if all goes well, and the DATA
        datagram that answers it: first for the block outstanding now, then for each block
        after, up to ``limit`` turns and never past the last block. Changes nothing; empty
        unless the transfer is in lock-step with a block outstanding and more to send.

        A shell that receives exactly those ACKs in order may send each answer at once and
        call :meth:`lockstep_advance` with the number of turns done afterwards, out of the
        round trips' way: that is ``receive_ack`` for each of them.
        """
        if self._expect is None:
            return []
        first = self._sent  # the block outstanding
        last = min(first + limit - 1, self._total - 1)
        block = self._block
        return [(pack_header(_ACK, n & MAX_BLOCK), block(n + 1)) for n in range(first, last + 1)]

    def lockstep_plan(self, limit: int) -> tuple[int, list[bytes]]:
        """The turns of :meth:`lockstep_turns`, told the short way: ``(first, datagrams)``.

        The ACK of block ``first`` (modulo 65536) is answered by ``datagrams[0]``, the ACK of
        the block after by ``datagrams[1]``, and so on; ``datagrams`` is empty when
        :meth:`lockstep_turns` would be. Cheaper to make (no ACK datagrams; a slice of the memo
        when it holds them all), for a shell that compares block numbers itself.
        """
        if self._expect is None:
            return 0, []
        first = self._sent  # the block outstanding
        last = min(first + limit - 1, self._total - 1)
        memo = self._memo
        if memo is not None:
            datagrams = memo[first : last + 1]
            if None not in datagrams:
                return first & MAX_BLOCK, cast("list[bytes]", datagrams)
        block = self._block
        return first & MAX_BLOCK, [block(n + 1) for n in range(first, last + 1)]

    def lockstep_advance(self, turns: int, now: float) -> None:
        """Record ``turns`` turns of :meth:`lockstep_turns` as done (their ACKs came, their
        DATA went out, the last at about ``now``: the deadline is then :attr:`deadline`)."""
        if self._expect is None or not 0 < turns < self._total - self._sent + 1:
            raise RuntimeError(f"lockstep_advance({turns}) beyond what lockstep_turns offers")
        sent = self._sent + turns
        self._sent = sent
        self._acked = sent - 1
        self._retries = 0
        self._deadline = now + self._timeout  # the whole-transfer limit: see deadline
        self._expect = pack_header(_ACK, sent & MAX_BLOCK) if sent < self._total else None

    def receive_ack(self, block: int, now: float) -> list[Action]:
        """Same as ``receive(Ack(block), now)``, without building the packet (the hot path)."""
        if self.closed:
            return []
        return self._on_ack(block, now)

    def receive(self, packet: Packet, now: float) -> list[Action]:
        """A packet from the client's TID."""
        if self.closed:
            return []
        if isinstance(packet, Ack):
            return self._on_ack(packet.block, now)
        if isinstance(packet, Error):
            return self._on_error(packet, now)
        return []  # DATA, requests and OACKs have no meaning here: ignore them

    def abort(self, outcome: TransferOutcome, now: float) -> list[Action]:
        """End the transfer without telling the client (it is gone, or the server stops)."""
        if self.closed:
            return []
        return self._close(outcome, now)

    def timer(self, now: float) -> list[Action]:
        """The last armed deadline may have passed: retransmit, give up, or wait longer."""
        if self.closed:
            return []
        limit = self.settings.transfer_timeout
        if limit is not None and now >= self.stats.started + limit:
            return self._fail(
                ErrorCode.NOT_DEFINED, "transfer time limit reached", TransferOutcome.EXPIRED, now
            )
        deadline = self.deadline
        if now < deadline:
            return [ArmTimer(deadline)]
        self._retries += 1
        if self._retries > self.settings.max_retries:
            return self._close(TransferOutcome.TIMEOUT, now)
        actions: list[Action] = []
        if self._oack is not None:
            actions.append(Send(self._oack))
            self.stats.retransmits += 1
        else:
            for n in range(self._acked + 1, self._sent + 1):
                block = self._block(n)
                actions.append(Send(block))
                self._resent_bytes += len(block) - 4
                self.stats.retransmits += 1
        actions.append(self._arm(now))
        return actions

    # -- internals ----------------------------------------------------------------------------

    def _negotiate(self, size: int) -> Options:
        accepted: list[tuple[str, str]] = []
        seen: set[str] = set()
        for name, value in self.request.options:
            key = name.lower()
            if key in seen:
                continue
            seen.add(key)
            if key == "blksize":
                asked = _number(name, value, 8, None)
                self._blksize = min(asked, MAX_BLKSIZE, self.settings.max_blksize)
                accepted.append((name, str(self._blksize)))
            elif key == "timeout":
                asked = _number(name, value, 1, 255)
                if asked <= self.settings.max_client_timeout:
                    self._timeout = float(asked)
                    accepted.append((name, value.strip()))
            elif key == "tsize":
                _number(name, value, 0, None)
                accepted.append((name, str(size)))
            elif key == "windowsize":
                asked = _number(name, value, 1, MAX_BLOCK)
                self._window = min(asked, self.settings.max_windowsize)
                accepted.append((name, str(self._window)))
        return tuple(accepted)

    def _on_ack(self, block: int, now: float) -> list[Action]:
        if self._oack is not None:
            if block != 0:
                return []
            self._oack = None
            self._retries = 0
            return self._send_window(now)
        n = self._acked + ((block - self._acked) & MAX_BLOCK)
        if n == self._acked or n > self._sent:
            return []  # duplicate or out-of-window ACK: never answered
        self._acked = n
        self._retries = 0
        if n == self._total:
            return self._close(TransferOutcome.OK, now)
        return self._send_window(now)

    def _on_error(self, packet: Error, now: float) -> list[Action]:
        probe = (packet.code == ErrorCode.NOT_DEFINED and self._sent >= 1 and self._acked <= 1) or (
            packet.code == ErrorCode.OPTION_REFUSED and self._oack is not None
        )
        return self._close(TransferOutcome.PROBE if probe else TransferOutcome.ABORTED, now)

    def _send_window(self, now: float) -> list[Action]:
        if self._window == 1 and self._sent == self._acked:  # lock-step: the hot path
            n = self._sent = self._acked + 1
            self._expect = pack_header(_ACK, n & MAX_BLOCK) if n < self._total else None
            return [Send(self._block(n)), self._arm(now)]
        actions: list[Action] = []
        last = min(self._acked + self._window, self._total)
        for n in range(self._sent + 1, last + 1):
            actions.append(Send(self._block(n)))
        self._sent = max(self._sent, last)
        actions.append(self._arm(now))
        return actions

    def _block(self, n: int) -> bytes:
        """The DATA datagram of block ``n``, from the memo when another transfer built it."""
        memo = self._memo
        if memo is not None:
            datagram = memo[n - 1]
            if datagram is not None:
                return datagram
        blksize = self._blksize
        datagram = encode_data(n, self._read((n - 1) * blksize, blksize))
        if memo is not None:
            memo[n - 1] = datagram
        return datagram

    def _arm(self, now: float) -> ArmTimer:
        deadline = now + self._timeout
        if self._limit is not None and deadline > self._limit:
            deadline = self._limit
        self._deadline = deadline
        return ArmTimer(deadline)

    def _fail(
        self, code: ErrorCode, message: str, outcome: TransferOutcome, now: float
    ) -> list[Action]:
        return [Send(encode(Error(code, message))), *self._close(outcome, now)]

    def _close(self, outcome: TransferOutcome, now: float) -> list[Action]:
        self.closed = True
        self._expect = None
        stats = self.stats
        stats.ended = now
        stats.outcome = outcome
        if stats.size is not None:
            stats.blocks = self._acked
            stats.bytes = min(self._acked * self._blksize, stats.size)
            stats.sent_bytes = min(self._sent * self._blksize, stats.size) + self._resent_bytes
        if self._source is not None:
            self._source.close()
            self._source = None
        return [Close(outcome)]


def _nothing(offset: int, length: int) -> bytes:
    return b""


def _number(name: str, value: str, low: int, high: int | None) -> int:
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 10:
        raise _Refusal(ErrorCode.OPTION_REFUSED, f"option {name}={value!r} is not a number")
    number = int(text)
    if number < low or (high is not None and number > high):
        raise _Refusal(ErrorCode.OPTION_REFUSED, f"option {name}={value} is out of range")
    return number
