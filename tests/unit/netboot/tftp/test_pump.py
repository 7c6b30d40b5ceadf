"""The pump's window sending (one GSO send per window, and the fallback when it is refused) and
its waits for a client (a spin, then a sleep)."""

from __future__ import annotations

import errno
import select
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from piman.netboot.tftp.busypoll import BusyPoll
from piman.netboot.tftp.files import BytesSource
from piman.netboot.tftp.packets import Opcode, Request, decode
from piman.netboot.tftp.pump import TransferPump
from piman.netboot.tftp.session import SessionSettings, TftpSession
from piman.netboot.tftp.transfer import Transfer


class FakeSocket:
    """Records sends; refuses GSO trains (longer than one segment) when told to."""

    def __init__(self, refuse_gso: bool) -> None:
        self.refuse_gso = refuse_gso
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> int:
        if self.refuse_gso and len(data) > 1472:
            raise OSError(errno.EIO, "GSO not supported")
        self.sent.append(data)
        return len(data)

    def sendmsg(self, buffers: list[bytes]) -> int:
        return self.send(b"".join(buffers))  # the kernel gathers the buffers into one train

    def setsockopt(self, *args: object) -> None:
        return None


def window_transfer() -> tuple[Transfer, list[bytes]]:
    request = Request(Opcode.RRQ, "f", "octet", (("blksize", "1468"), ("windowsize", "8")))
    session = TftpSession(request, "127.0.0.1:9", SessionSettings(), now=0.0)
    session.start(BytesSource(bytes(range(256)) * 40), now=0.0)  # 10240 bytes: 7 blocks
    actions = session.receive_ack(0, 0.0)
    datagrams = [a.data for a in actions if hasattr(a, "data")]
    return Transfer(1, ("127.0.0.1", 9), session, segment=1472), datagrams


def test_a_window_of_full_blocks_goes_out_in_one_send() -> None:
    transfer, datagrams = window_transfer()
    fake = FakeSocket(refuse_gso=False)
    transfer.sock = fake  # type: ignore[assignment]
    pump = TransferPump(on_close=lambda t: None)
    try:
        assert pump._send_all(transfer, datagrams)
    finally:
        pump.stop()
    assert len(datagrams) == 7
    assert fake.sent == [b"".join(datagrams)]  # the kernel cuts it at 1472 bytes


def test_refused_gso_falls_back_to_one_send_per_block() -> None:
    transfer, datagrams = window_transfer()
    fake = FakeSocket(refuse_gso=True)
    transfer.sock = fake  # type: ignore[assignment]
    pump = TransferPump(on_close=lambda t: None)
    try:
        assert pump._send_all(transfer, datagrams)
    finally:
        pump.stop()
    assert fake.sent == datagrams
    assert transfer.segment == 0
    assert [decode(d).block for d in fake.sent] == list(range(1, 8))  # type: ignore[union-attr]


ACK_1 = b"\0\4\0\1"


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """The pump's end (blocking, like a parked transfer's socket) and the client's."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    # A wait that never ends fails the test in 5 s instead of hanging it.
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 5, 0))
    try:
        yield ours, theirs
    finally:
        ours.close()
        theirs.close()


class SendOnMiss(BusyPoll):
    """Sends the client's datagram only once the spin has given up on it."""

    def __init__(self, budget: float, client: socket.socket) -> None:
        super().__init__(budget)
        self.client = client

    def miss(self) -> None:
        super().miss()
        self.client.send(ACK_1)


def test_a_datagram_that_comes_during_the_spin_is_taken_without_sleeping(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    pump = TransferPump(on_close=lambda t: None, busy_poll=5.0)  # spins until the ACK comes
    later = threading.Timer(0.01, theirs.send, (ACK_1,))
    later.start()
    try:
        assert pump.busy.read(ours.fileno(), ours.recv, 479) == ACK_1
    finally:
        later.join()
        pump.stop()
    assert (pump.busy.hits, pump.busy.missed) == (1, 0)


def test_after_a_spin_in_vain_the_wait_sleeps_until_the_datagram_comes(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    pump = TransferPump(on_close=lambda t: None)
    pump.busy = SendOnMiss(1e-3, theirs)
    try:
        assert pump.busy.read(ours.fileno(), ours.recv, 479) == ACK_1
    finally:
        pump.stop()
    assert (pump.busy.hits, pump.busy.missed) == (0, 1)


def test_a_parked_wait_still_ends_after_5_ms_of_silence(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, _ = pair
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 5000))
    pump = TransferPump(on_close=lambda t: None, busy_poll=1e-3)
    try:
        with pytest.raises(BlockingIOError):  # the pump hands back to its epoll loop on this
            pump.busy.read(ours.fileno(), ours.recv, 479)
    finally:
        pump.stop()
    assert pump.busy.missed == 1


def test_the_epoll_wait_spins_then_sleeps_for_ready_sockets(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    pump = TransferPump(on_close=lambda t: None, busy_poll=5.0)
    pump._epoll.register(ours.fileno(), select.EPOLLIN)
    later = threading.Timer(0.01, theirs.send, (ACK_1,))
    later.start()
    try:
        assert pump.busy.poll(pump._epoll.poll, 1.0, 256) == [(ours.fileno(), select.EPOLLIN)]
        assert (pump.busy.hits, pump.busy.missed) == (1, 0)
        ours.recv(16)
        pump.busy = SendOnMiss(1e-3, theirs)
        assert pump.busy.poll(pump._epoll.poll, 1.0, 256) == [(ours.fileno(), select.EPOLLIN)]
        assert (pump.busy.hits, pump.busy.missed) == (0, 1)
        ours.recv(16)
        pump.busy = BusyPoll(1e-3)
        assert (
            pump.busy.poll(pump._epoll.poll, 0.01, 256) == []
        )  # nothing comes: the sleep ends with the wait
    finally:
        later.join()
        pump.stop()


def test_without_the_c_extension_the_pump_serves_in_python() -> None:
    """piman built without a C compiler: the import of _lanes fails, and the pump says so."""
    code = (
        "import sys; sys.modules['piman.netboot.tftp._lanes'] = None\n"
        "from piman.netboot.tftp import pump\n"
        "p = pump.TransferPump(lambda t: None)\n"
        "print(pump._lanes is None, p.native)\n"
        "p.stop()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False"]
