"""The transfer session driven through its public calls: packets and time in, actions out."""

from __future__ import annotations

import pytest

from piman.netboot.tftp.files import BytesSource, netascii
from piman.netboot.tftp.packets import (
    Ack,
    Data,
    Error,
    ErrorCode,
    OAck,
    Opcode,
    Request,
    decode,
    encode,
)
from piman.netboot.tftp.session import (
    Action,
    ArmTimer,
    Close,
    Send,
    SessionSettings,
    TftpSession,
    TransferOutcome,
)

SETTINGS = SessionSettings(retransmit_timeout=1.0, max_retries=3, max_blksize=1468)


def rrq(name: str = "f", mode: str = "octet", **options: str) -> Request:
    return Request(Opcode.RRQ, name, mode, tuple(options.items()))


def sent(actions: list[Action]) -> list[object]:
    return [decode(a.data) for a in actions if isinstance(a, Send)]


def closed(actions: list[Action]) -> TransferOutcome | None:
    return next((a.outcome for a in actions if isinstance(a, Close)), None)


def start(data: bytes, request: Request | None = None, settings: SessionSettings = SETTINGS,
          ) -> tuple[TftpSession, list[Action]]:  # fmt: skip
    session = TftpSession(request or rrq(), "198.18.0.5:1234", settings, now=0.0)
    return session, session.start(BytesSource(data), now=0.0)


def fetch(session: TftpSession, first: list[Action], now: float = 0.0) -> bytes:
    """Play a well-behaved lock-step/window client; returns the bytes received."""
    out = bytearray()
    actions = first
    while True:
        datas = [p for p in sent(actions) if isinstance(p, Data)]
        oacks = [p for p in sent(actions) if isinstance(p, OAck)]
        if closed(actions) is not None:
            return bytes(out)
        if oacks:
            actions = session.receive(Ack(0), now)
            continue
        assert datas, actions
        for d in datas:
            out += d.data
        actions = session.receive(Ack(datas[-1].block), now)


def test_file_without_options_is_sent_in_512_byte_blocks_with_a_short_last_block() -> None:
    data = bytes(range(256)) * 5  # 1280 bytes: 512 + 512 + 256
    session, actions = start(data)
    assert sent(actions) == [Data(1, data[:512])]
    assert any(isinstance(a, ArmTimer) for a in actions)
    assert fetch(session, actions) == data
    assert session.stats.outcome is TransferOutcome.OK
    assert session.stats.blocks == 3
    assert session.stats.bytes == 1280


def test_file_of_exact_multiple_of_blksize_ends_with_an_empty_block() -> None:
    session, _actions = start(b"x" * 1024)
    assert session.receive(Ack(1), 0.1)[0] == Send(b"\x00\x03\x00\x02" + b"x" * 512)
    last = session.receive(Ack(2), 0.2)
    assert sent(last) == [Data(3, b"")]
    assert closed(session.receive(Ack(3), 0.3)) is TransferOutcome.OK


def test_options_are_acknowledged_and_blksize_capped_to_the_mtu_limit() -> None:
    session, actions = start(b"a" * 5000, rrq(tsize="0", blksize="8192", timeout="3"))
    assert sent(actions) == [OAck((("tsize", "5000"), ("blksize", "1468"), ("timeout", "3")))]
    actions = session.receive(Ack(0), 0.0)
    assert sent(actions) == [Data(1, b"a" * 1468)]
    assert actions[-1] == ArmTimer(3.0)  # the client's timeout option is used


def test_unknown_options_are_left_out_of_the_oack() -> None:
    _session, actions = start(b"a", rrq(multicast="", tsize="0"))
    assert sent(actions) == [OAck((("tsize", "1"),))]


def test_only_unknown_options_means_no_oack_at_all() -> None:
    _session, actions = start(b"a", rrq(rollover="0"))
    assert sent(actions) == [Data(1, b"a")]


def test_invalid_option_value_is_refused_with_error_8() -> None:
    for options in ({"blksize": "4"}, {"blksize": "big"}, {"timeout": "0"}, {"windowsize": "0"}):
        _session, actions = start(b"a", rrq(**options))
        (err,) = sent(actions)
        assert isinstance(err, Error)
        assert err.code == ErrorCode.OPTION_REFUSED
        assert closed(actions) is TransferOutcome.REFUSED


def test_unsupported_mode_is_an_illegal_operation() -> None:
    _session, actions = start(b"a", rrq(mode="mail"))
    assert sent(actions)[0] == Error(ErrorCode.ILLEGAL_OPERATION, "unsupported mode 'mail'")
    assert closed(actions) is TransferOutcome.REFUSED


def test_netascii_converts_line_ends_and_tsize_counts_converted_bytes() -> None:
    session, actions = start(b"a\nb\rc", rrq(mode="NetASCII", tsize="0"))
    assert sent(actions) == [OAck((("tsize", "7"),))]
    assert fetch(session, actions) == b"a\r\nb\r\0c"


def test_duplicate_ack_does_not_trigger_retransmit() -> None:
    session, _actions = start(b"z" * 2000)
    session.receive(Ack(1), 0.1)
    assert session.receive(Ack(1), 0.2) == []
    assert session.receive(Ack(1), 0.3) == []
    assert session.stats.retransmits == 0


def test_timeout_retransmits_the_outstanding_block_then_gives_up() -> None:
    session, actions = start(b"z" * 2000)
    assert session.timer(0.5) == [ArmTimer(1.0)]  # early timer: nothing sent
    for attempt in range(1, 4):
        actions = session.timer(float(attempt))
        assert sent(actions) == [Data(1, b"z" * 512)]
    assert closed(session.timer(4.0)) is TransferOutcome.TIMEOUT
    assert session.stats.retransmits == 3
    assert session.closed
    assert session.receive(Ack(1), 5.0) == []


def test_progress_resets_the_retry_budget() -> None:
    session, _ = start(b"z" * 5000)
    for attempt in range(1, 4):
        session.timer(float(attempt))
    session.receive(Ack(1), 3.5)
    assert sent(session.timer(4.5)) == [Data(2, b"z" * 512)]


def test_oack_is_retransmitted_on_timeout_only() -> None:
    session, _actions = start(b"z", rrq(tsize="0"))
    assert session.receive(Ack(1), 0.5) == []  # not ACK 0: ignored
    assert sent(session.timer(1.0)) == [OAck((("tsize", "1"),))]


def test_windowsize_sends_a_window_and_slides_on_acks() -> None:
    data = bytes(100) * 100  # 10000 bytes = 20 blocks of 512 (19 full + 1 of 272)
    session, actions = start(data, rrq(windowsize="4"))
    assert sent(actions) == [OAck((("windowsize", "4"),))]
    first = sent(session.receive(Ack(0), 0.0))
    assert [d.block for d in first] == [1, 2, 3, 4]  # type: ignore[attr-defined]
    nxt = sent(session.receive(Ack(4), 0.1))
    assert [d.block for d in nxt] == [5, 6, 7, 8]  # type: ignore[attr-defined]
    # A client that ACKs inside the window only moves it: only new blocks go out.
    assert [d.block for d in sent(session.receive(Ack(6), 0.2))] == [9, 10]  # type: ignore[attr-defined]
    # On timeout, everything not yet acknowledged goes again.
    again = sent(session.timer(1.2))
    assert [d.block for d in again] == [7, 8, 9, 10]  # type: ignore[attr-defined]
    assert session.stats.retransmits == 4


def test_window_transfer_delivers_the_whole_file() -> None:
    data = bytes(i % 251 for i in range(100_000))
    session, actions = start(data, rrq(windowsize="16", blksize="1468"))
    assert fetch(session, actions) == data
    assert session.stats.windowsize == 16
    assert session.stats.outcome is TransferOutcome.OK


def test_windowsize_is_capped() -> None:
    settings = SessionSettings(max_windowsize=8)
    _session, actions = start(b"a", rrq(windowsize="500"), settings)
    assert sent(actions) == [OAck((("windowsize", "8"),))]


def test_block_numbers_wrap_to_zero_after_65535() -> None:
    data = b"q" * (8 * 65540)
    session, _actions = start(data, rrq(blksize="8"))
    session.receive(Ack(0), 0.0)
    for n in range(1, 65536):
        session.receive(Ack(n), 0.0)
    nxt = sent(session.receive(Ack(0), 0.0))  # ACK of absolute block 65536
    assert nxt == [Data(1, b"q" * 8)]  # absolute 65537
    for n in range(1, 5):
        session.receive(Ack(n), 0.0)
    assert closed(session.receive(Ack(5), 0.0)) is TransferOutcome.OK  # the empty block 65541
    assert session.stats.blocks == 65541
    assert session.stats.bytes == len(data)


def test_early_terminate_after_block_1_is_a_probe() -> None:
    session, actions = start(b"z" * 5000, rrq(tsize="0", blksize="1024"))
    session.receive(Ack(0), 0.0)
    actions = session.receive(Error(0, "Early terminate"), 0.1)
    assert actions == [Close(TransferOutcome.PROBE)]
    assert session.stats.outcome is TransferOutcome.PROBE


def test_option_refusal_by_client_after_oack_is_a_probe() -> None:
    session, _ = start(b"z" * 5000, rrq(tsize="0"))
    assert closed(session.receive(Error(8, "size only"), 0.1)) is TransferOutcome.PROBE


def test_client_error_mid_transfer_is_an_abort() -> None:
    session, _ = start(b"z" * 5000)
    session.receive(Ack(1), 0.0)
    session.receive(Ack(2), 0.0)
    assert closed(session.receive(Error(3, "disk full"), 0.1)) is TransferOutcome.ABORTED


def test_refuse_sends_the_error_and_records_the_outcome() -> None:
    session = TftpSession(rrq("missing"), "198.18.0.5:1234", SETTINGS, now=0.0)
    actions = session.refuse(
        ErrorCode.FILE_NOT_FOUND, "file not found", TransferOutcome.NOT_FOUND, 0.0
    )
    assert sent(actions) == [Error(1, "file not found")]
    assert session.stats.outcome is TransferOutcome.NOT_FOUND


def test_whole_transfer_limit_expires_the_session() -> None:
    settings = SessionSettings(retransmit_timeout=5.0, transfer_timeout=2.0)
    session, actions = start(b"z" * 5000, settings=settings)
    assert actions[-1] == ArmTimer(2.0)
    actions = session.timer(2.0)
    assert isinstance(sent(actions)[0], Error)
    assert closed(actions) is TransferOutcome.EXPIRED


def test_stats_record_duration_and_options() -> None:
    session, _actions = start(b"z" * 600, rrq(blksize="1024"))
    session.receive(Ack(0), 0.5)
    session.receive(Ack(1), 1.5)
    assert session.stats.duration == 1.5
    assert session.stats.blksize == 1024
    assert session.stats.peer == "198.18.0.5:1234"


def ack(n: int) -> bytes:
    return encode(Ack(n))


def test_lockstep_hot_path_matches_receive_ack() -> None:
    data = bytes(i % 253 for i in range(5000))
    fast, _ = start(data)
    slow, _ = start(data)
    assert fast.ack_datagram(ack(2), 0.1) is None  # not the outstanding block: no change
    assert fast.ack_datagram(ack(1)[:3], 0.1) is None  # not an ACK at all
    assert fast.ack_datagram(ack(1) + b"x", 0.1) is None
    for n in range(1, 11):  # 10 blocks: 9 of 512 and one of 392
        datagram = fast.ack_datagram(ack(n), float(n))
        actions = slow.receive_ack(n, float(n))
        if datagram is None:
            assert fast.receive_ack(n, float(n)) == actions
        else:
            assert actions == [Send(datagram), ArmTimer(fast.deadline)]
    assert fast.stats.outcome is slow.stats.outcome is TransferOutcome.OK


def test_lockstep_hot_path_waits_for_ack_0_and_stops_when_closed() -> None:
    data = bytes(i % 251 for i in range(3000))
    fast, _ = start(data, rrq(blksize="1024"))
    assert fast.ack_datagram(ack(0), 0.1) is None  # the OACK is pending: the general path answers
    assert fast.ack_datagram(ack(1), 0.1) is None
    assert sent(fast.receive_ack(0, 0.2)) == [Data(1, data[:1024])]
    datagram = fast.ack_datagram(ack(1), 0.3)
    assert datagram is not None
    assert decode(datagram) == Data(2, data[1024:2048])
    assert fast.deadline == 1.3
    fast.abort(TransferOutcome.ABORTED, 0.4)
    assert fast.ack_datagram(ack(2), 0.5) is None  # closed: nothing more goes out
    windowed, _ = start(data, rrq(windowsize="2"))
    windowed.receive_ack(0, 0.1)
    assert windowed.ack_datagram(ack(1), 0.2) is None  # a window is never the lock-step path


@pytest.mark.parametrize("batch", [1, 3, 64])
def test_lockstep_turns_prepared_ahead_match_receive_ack(batch: int) -> None:
    data = bytes(i % 241 for i in range(4000))  # 8 blocks, the last of 416 bytes
    fast, _ = start(data)
    slow, _ = start(data)
    n = 1
    while turns := fast.lockstep_turns(batch):
        assert len(turns) == min(batch, 8 - n)
        for expected, datagram in turns:
            assert expected == ack(n)
            assert slow.receive_ack(n, float(n)) == [Send(datagram), ArmTimer(n + 1.0)]
            n += 1
        fast.lockstep_advance(len(turns), float(n - 1))
        assert fast.deadline == slow.deadline
    assert n == 8  # blocks 1..7 answered ahead; the ACK of block 8 (the last) closes
    assert fast.receive_ack(8, 9.0) == slow.receive_ack(8, 9.0) == [Close(TransferOutcome.OK)]
    with pytest.raises(RuntimeError):
        fast.lockstep_advance(1, 10.0)


class MemoSource(BytesSource):
    """Bytes with a memo shared by every transfer (as a cached file has)."""

    def __init__(self, data: bytes, memo: list[bytes | None]) -> None:
        super().__init__(data)
        self.shared = memo

    def memo(self, blksize: int) -> list[bytes | None]:
        return self.shared


@pytest.mark.parametrize("memo", [False, True], ids=["no-memo", "memo"])
def test_lockstep_plan_is_the_same_turns_told_by_block_number(memo: bool) -> None:
    data = bytes(i % 239 for i in range(8 * 70_000 + 3))  # blksize 8: past block 65535
    shared: list[bytes | None] = [None] * (len(data) // 8 + 1)
    if memo:  # an earlier transfer built the first half of the datagrams
        earlier = TftpSession(rrq(blksize="8"), "198.18.0.6:1", SETTINGS, now=0.0)
        earlier.start(MemoSource(data, shared), now=0.0)
        earlier.receive_ack(0, 0.0)
        earlier.lockstep_turns(35_000)
        assert shared[35_000] is not None  # blocks 1 to 35,001
        assert shared[35_001] is None
    session = TftpSession(rrq(blksize="8"), "198.18.0.5:1234", SETTINGS, now=0.0)
    session.start(MemoSource(data, shared) if memo else BytesSource(data), now=0.0)
    session.receive_ack(0, 0.0)  # the OACK's ACK: block 1 goes out
    seen = 0
    while turns := session.lockstep_turns(4096):
        first, datagrams = session.lockstep_plan(4096)
        assert [ack((first + i) & 0xFFFF) for i in range(len(datagrams))] == [e for e, _ in turns]
        assert datagrams == [d for _, d in turns]
        seen += len(turns)
        session.lockstep_advance(len(turns), 1.0)
    assert seen == len(data) // 8  # every block but the last answers an ACK
    assert session.lockstep_plan(5) == (0, [])


def test_lockstep_turns_recorded_in_part_and_refused_beyond_the_end() -> None:
    data = bytes(i % 241 for i in range(4000))
    session, _ = start(data)
    turns = session.lockstep_turns(5)
    session.lockstep_advance(2, 1.0)  # ACKs 1 and 2 came, blocks 2 and 3 went out
    assert session.lockstep_turns(5)[0] == turns[2]
    assert sent(session.timer(2.5)) == [Data(3, data[1024:1536])]  # block 3 is outstanding
    with pytest.raises(RuntimeError):
        session.lockstep_advance(6, 3.0)  # only 5 blocks remain to answer


def test_lockstep_deadline_never_passes_the_transfer_limit() -> None:
    settings = SessionSettings(retransmit_timeout=1.0, transfer_timeout=2.5)
    session = TftpSession(Request(Opcode.RRQ, "f", "octet"), "198.18.0.5:1234", settings, 0.0)
    session.start(BytesSource(b"q" * 2000), 0.0)
    assert session.ack_datagram(ack(1), 1.0) is not None
    assert session.deadline == 2.0
    assert session.ack_datagram(ack(2), 2.0) is not None
    assert session.deadline == 2.5  # not 3.0: the whole transfer ends at 2.5


@pytest.mark.parametrize(
    "acks",
    [
        [0, 4, 4, 8, 12, 13, 14],  # whole windows, a duplicate, then partial ones to the end
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14],  # one block at a time
        [0, 3, 2, 9, 7, 11, 14],  # an old ACK, an ACK past what was sent, the end
    ],
)
def test_window_hot_path_matches_receive_ack(acks: list[int]) -> None:
    data = bytes(i % 239 for i in range(512 * 13 + 100))  # 14 blocks, the last of 100 bytes
    fast, _ = start(data, rrq(windowsize="4"))
    slow, _ = start(data, rrq(windowsize="4"))
    for i, block in enumerate(acks):
        now = float(i)
        train = fast.ack_window(block, now)
        actions = slow.receive_ack(block, now)
        if train is None:
            assert fast.receive_ack(block, now) == actions
        else:
            assert actions == [*(Send(d) for d in train), ArmTimer(fast.deadline)]
    assert fast.stats.outcome is slow.stats.outcome is TransferOutcome.OK
    assert fast.ack_window(14, 99.0) is None  # closed


def test_window_hot_path_leaves_lock_step_alone() -> None:
    lockstep, _ = start(b"l" * 3000)
    assert lockstep.ack_window(1, 0.1) is None


def test_a_client_timeout_above_the_cap_is_left_out_and_the_servers_own_is_used() -> None:
    """RFC 2349 lets the server leave an option out of the OACK (it may not change the value):
    a client asking for 255 s would hold its transfer's socket for 255 s per retry."""
    settings = SessionSettings(retransmit_timeout=1.0, max_client_timeout=10.0)
    session, actions = start(b"a" * 5000, rrq(timeout="255", tsize="0"), settings)
    assert sent(actions) == [OAck((("tsize", "5000"),))]
    actions = session.receive(Ack(0), 0.0)
    assert actions[-1] == ArmTimer(1.0)
    session, actions = start(b"a" * 5000, rrq(timeout="10"), settings)
    assert sent(actions) == [OAck((("timeout", "10"),))]  # at the cap: the client's value
    assert session.receive(Ack(0), 0.0)[-1] == ArmTimer(10.0)


class ReadSpy:
    """A byte source that records the largest single read asked of it."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.largest = 0
        self.closed = 0

    @property
    def size(self) -> int:
        return len(self.data)

    def read(self, offset: int, length: int) -> bytes:
        self.largest = max(self.largest, length)
        return self.data[offset : offset + length]

    def close(self) -> None:
        self.closed += 1

    def memo(self, blksize: int) -> None:
        return None


@pytest.mark.parametrize("options", [{}, {"blksize": "1468", "windowsize": "8"}])
def test_netascii_of_a_large_file_is_converted_a_chunk_at_a_time(options: dict[str, str]) -> None:
    text = b"".join(b"line %d\n\rx\r\n" % i for i in range(300_000))  # 4.3 MB
    spy = ReadSpy(text)
    session = TftpSession(rrq(mode="netascii", tsize="0", **options), "198.18.0.5:1", SETTINGS, 0.0)
    actions = session.start(spy, 0.0)
    assert sent(actions)[0] == OAck((("tsize", str(len(netascii(text)))), *options.items()))
    assert fetch(session, actions) == netascii(text)
    assert spy.largest <= 64 * 1024  # never the whole file at once
    assert spy.closed == 1


def test_netascii_retransmits_blocks_already_converted() -> None:
    text = b"\n" * 200_000 + b"\r" * 200_000
    session = TftpSession(rrq(mode="netascii", blksize="1024", windowsize="4"), "198.18.0.5:1",
                          SETTINGS, 0.0)  # fmt: skip
    session.start(ReadSpy(text), 0.0)
    window = sent(session.receive(Ack(0), 0.0))
    for block in range(4, 400, 4):  # move deep into the file, then lose a window
        window = sent(session.receive(Ack(block), 0.0))
    again = sent(session.timer(10.0))
    assert again == window
    expected = [netascii(text)[(n - 1) * 1024 : n * 1024] for n in range(397, 401)]
    assert [d.data for d in again] == expected  # type: ignore[attr-defined]
