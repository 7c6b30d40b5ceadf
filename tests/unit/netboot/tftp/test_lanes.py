"""The C data path (piman.netboot.tftp._lanes) against a client at the other end of a datagram
socket pair: what it answers from a lane, and what it hands back to Python untouched."""

from __future__ import annotations

import errno
import select
import socket
import threading
from collections.abc import Iterator

import pytest

from piman.netboot.tftp import pump
from tests.support import REQUIRE_ALL

if pump._lanes is None:
    pytest.skip(
        "piman was built without its C data path (no C compiler at install)"
        + (": CI must build it" if REQUIRE_ALL else ""),
        allow_module_level=True,
    )
lanes_module = pump._lanes


def serve(lanes: lanes_module.Lanes, epoll: select.epoll, timeout: float) -> list[object]:
    """One run() without spinning: what it hands back to Python."""
    results, hits, missed = lanes.run(epoll.fileno(), timeout)
    assert (hits, missed) == (0, False)
    return list(results)


def serve_until_handed_back(lanes: lanes_module.Lanes, epoll: select.epoll) -> list[object]:
    """run() until it hands something back to Python."""
    results: list[object] = []
    while not results:
        results = serve(lanes, epoll, 1.0)
    return results


def ack(block: int) -> bytes:
    return b"\x00\x04" + (block & 0xFFFF).to_bytes(2, "big")


def data(block: int, payload: bytes) -> bytes:
    return b"\x00\x03" + (block & 0xFFFF).to_bytes(2, "big") + payload


class Pair:
    """The server's end (in an epoll set, as the pump has it) and the client's end."""

    def __init__(self) -> None:
        self.server, self.client = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.server.setblocking(False)
        self.client.settimeout(2)
        self.epoll = select.epoll()
        self.epoll.register(self.server.fileno(), select.EPOLLIN)
        self.fd = self.server.fileno()

    def received(self) -> list[bytes]:
        out = []
        self.client.setblocking(False)
        try:
            while True:
                out.append(self.client.recv(65536))
        except BlockingIOError:
            pass
        finally:
            self.client.settimeout(2)
        return out

    def close(self) -> None:
        self.epoll.close()
        self.server.close()
        self.client.close()


@pytest.fixture
def pair() -> Iterator[Pair]:
    p = Pair()
    try:
        yield p
    finally:
        p.close()


def test_a_lane_answers_each_expected_ack_with_its_datagram_and_says_when_it_is_done(
    pair: Pair,
) -> None:
    lanes = lanes_module.Lanes()
    blocks = [data(n, bytes([n]) * 100) for n in (8, 9, 10)]
    lanes.set(pair.fd, 7, blocks)  # block 7 is outstanding: its ACK is answered by block 8
    pair.client.send(ack(7))
    assert serve(lanes, pair.epoll, 0.05) == []  # served; nothing for Python
    assert pair.received() == blocks[:1]
    pair.client.send(ack(8))
    pair.client.send(ack(9))
    assert serve(lanes, pair.epoll, 1.0) == [(pair.fd, lanes_module.EXHAUSTED, None)]
    assert pair.received() == blocks[1:]
    assert lanes.take(pair.fd) == 3
    assert lanes.take(pair.fd) == 0  # taken once


def test_only_the_expected_ack_moves_the_lane(pair: Pair) -> None:
    lanes = lanes_module.Lanes()
    lanes.set(pair.fd, 1, [data(2, b"two"), data(3, b"three")])
    for wrong in (ack(0), ack(2), ack(1) + b"\x00", b"\x00\x05\x00\x00oops\x00", b""):
        pair.client.send(wrong)
        assert serve(lanes, pair.epoll, 1.0) == [(pair.fd, lanes_module.DATAGRAM, wrong)]
    assert pair.received() == []  # a duplicate or stray ACK is never answered
    assert lanes.take(pair.fd) == 0
    pair.client.send(ack(1))
    assert serve(lanes, pair.epoll, 0.05) == []
    assert pair.received() == [data(2, b"two")]
    assert lanes.take(pair.fd) == 1


def test_block_numbers_roll_over_at_65536(pair: Pair) -> None:
    lanes = lanes_module.Lanes()
    lanes.set(pair.fd, 65535, [data(0, b"a"), data(1, b"b")])
    pair.client.send(ack(65535))
    pair.client.send(ack(0))
    assert serve_until_handed_back(lanes, pair.epoll) == [(pair.fd, lanes_module.EXHAUSTED, None)]
    assert pair.received() == [data(0, b"a"), data(1, b"b")]


def test_a_long_datagram_comes_back_cut_to_the_read_size(pair: Pair) -> None:
    lanes = lanes_module.Lanes(read_size=16)
    lanes.set(pair.fd, 1, [data(2, b"x")])
    error = b"\x00\x05\x00\x00" + b"m" * 100 + b"\x00"
    pair.client.send(error)
    assert serve(lanes, pair.epoll, 1.0) == [(pair.fd, lanes_module.DATAGRAM, error[:16])]


def test_a_socket_without_a_lane_is_handed_back_unread(pair: Pair) -> None:
    lanes = lanes_module.Lanes()
    pair.client.send(ack(1))
    assert serve(lanes, pair.epoll, 1.0) == [(pair.fd, lanes_module.READY, None)]
    assert pair.server.recv(100) == ack(1)  # still there for Python to read
    lanes.set(pair.fd, 1, [data(2, b"x")])
    assert lanes.drop(pair.fd) == 0
    pair.client.send(ack(1))
    assert serve(lanes, pair.epoll, 1.0) == [(pair.fd, lanes_module.READY, None)]


def test_an_exhausted_lane_leaves_the_next_datagram_for_the_next_lane(pair: Pair) -> None:
    lanes = lanes_module.Lanes()
    lanes.set(pair.fd, 1, [data(2, b"x")])
    pair.client.send(ack(1))
    assert serve_until_handed_back(lanes, pair.epoll) == [(pair.fd, lanes_module.EXHAUSTED, None)]
    pair.client.send(ack(2))
    assert serve(lanes, pair.epoll, 1.0) == [(pair.fd, lanes_module.EXHAUSTED, None)]
    assert lanes.take(pair.fd) == 1
    lanes.set(pair.fd, 2, [data(3, b"y")])
    assert serve_until_handed_back(lanes, pair.epoll) == [(pair.fd, lanes_module.EXHAUSTED, None)]
    assert pair.received() == [data(2, b"x"), data(3, b"y")]


def test_turns_must_be_taken_before_a_new_lane(pair: Pair) -> None:
    lanes = lanes_module.Lanes()
    lanes.set(pair.fd, 1, [data(2, b"x"), data(3, b"y")])
    pair.client.send(ack(1))
    assert serve(lanes, pair.epoll, 0.05) == []
    with pytest.raises(RuntimeError, match="1 turns not taken"):
        lanes.set(pair.fd, 2, [data(3, b"y")])
    assert lanes.drop(pair.fd) == 1  # dropping hands the untaken turns back


def test_bad_arguments_are_refused() -> None:
    lanes = lanes_module.Lanes()
    with pytest.raises(TypeError, match="bytes"):
        lanes.set(3, 1, ["text"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="file descriptor"):
        lanes.take(-1)
    with pytest.raises(ValueError, match="read_size"):
        lanes_module.Lanes(read_size=100_000)
    assert lanes.take(1000) == 0  # no lane there: nothing done


def test_run_returns_empty_when_the_timeout_passes(pair: Pair) -> None:
    lanes = lanes_module.Lanes()
    lanes.set(pair.fd, 1, [data(2, b"x")])
    assert serve(lanes, pair.epoll, 0.02) == []
    with pytest.raises(OSError, match="Bad file descriptor") as caught:
        lanes.run(-1, 0.0)
    assert caught.value.errno == errno.EBADF


def test_a_gone_client_is_reported_with_its_errno() -> None:
    """A connected UDP socket whose peer port is closed gets ICMP port unreachable."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    closed_port = probe.getsockname()[1]
    probe.close()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    epoll = select.epoll()
    try:
        sock.bind(("127.0.0.1", 0))
        sock.connect(("127.0.0.1", closed_port))
        sock.setblocking(False)
        epoll.register(sock.fileno(), select.EPOLLIN)
        lanes = lanes_module.Lanes()
        lanes.set(sock.fileno(), 1, [data(2, b"x")])
        sock.send(data(1, b"first block"))  # the ICMP error comes back to this socket
        assert serve_until_handed_back(lanes, epoll) == [
            (sock.fileno(), lanes_module.FAILED, errno.ECONNREFUSED)
        ]
    finally:
        epoll.close()
        sock.close()


def test_a_wait_spins_before_it_sleeps_and_says_whether_that_paid(pair: Pair) -> None:
    lanes = lanes_module.Lanes()
    lanes.set(pair.fd, 1, [data(2, b"x"), data(3, b"y"), data(4, b"z")])
    late = threading.Timer(0.002, pair.client.send, [ack(1)])
    late.start()  # comes during a spin of up to 0.1 s
    results, hits, missed = lanes.run(pair.epoll.fileno(), 0.1, 1.0)
    late.join()
    assert hits == 1  # then the next wait spun to the end of the timeout, in vain
    assert (results, missed) == ([], True)
    assert pair.received() == [data(2, b"x")]
    later = threading.Timer(0.05, pair.client.send, [ack(2)])
    later.start()  # comes long after a spin of 1 ms: the wait slept, and woke for it
    results, hits, missed = lanes.run(pair.epoll.fileno(), 5.0, 0.001)
    later.join()
    assert (results, hits, missed) == ([], 0, True)  # returns after what the sleep brought
    assert pair.received() == [data(3, b"y")]
