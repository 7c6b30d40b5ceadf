"""The event loop's part of a transfer's start: the answer to a request leaves from the loop, so
the client does not wait for the pump thread to wake up; the pump gets what is left."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from piman.netboot.tftp.files import BytesSource
from piman.netboot.tftp.packets import ErrorCode, OAck, Opcode, Request, decode
from piman.netboot.tftp.server import _send_first
from piman.netboot.tftp.session import (
    ArmTimer,
    Close,
    Send,
    SessionSettings,
    TftpSession,
    TransferOutcome,
)
from piman.netboot.tftp.transfer import Transfer


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.settimeout(5)
    server.bind(("127.0.0.1", 0))
    server.connect(client.getsockname())
    yield client, server
    client.close()
    server.close()


def transfer_for(server: socket.socket | None, options: tuple[tuple[str, str], ...]) -> Transfer:
    request = Request(Opcode.RRQ, "start4.elf", "octet", options)
    session = TftpSession(request, "127.0.0.1:9", SessionSettings(), now=0.0)
    return Transfer(1, ("127.0.0.1", 9), session, sock=server)


def test_the_oack_leaves_at_once_and_the_pump_gets_the_timer(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    client, server = pair
    transfer = transfer_for(server, (("blksize", "1468"), ("tsize", "0")))
    actions = transfer.session.start(BytesSource(b"x" * 5000), now=0.0)
    left = _send_first(transfer, actions)
    answer = decode(client.recv(2048))
    assert isinstance(answer, OAck)
    assert dict(answer.options) == {"blksize": "1468", "tsize": "5000"}
    assert [type(a) for a in left] == [ArmTimer]


def test_without_options_the_first_block_leaves_at_once(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    client, server = pair
    transfer = transfer_for(server, ())
    left = _send_first(transfer, transfer.session.start(BytesSource(b"y" * 700), now=0.0))
    assert client.recv(2048) == b"\0\3\0\1" + b"y" * 512
    assert [type(a) for a in left] == [ArmTimer]


def test_a_refusal_leaves_at_once_and_the_pump_closes(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    client, server = pair
    transfer = transfer_for(server, ())
    actions = transfer.session.refuse(ErrorCode.FILE_NOT_FOUND, "file not found",
                                      TransferOutcome.NOT_FOUND, 0.0)  # fmt: skip
    left = _send_first(transfer, actions)
    assert client.recv(2048) == b"\0\5\0\1file not found\0"
    assert left == [Close(TransferOutcome.NOT_FOUND)]


class FullSocket:
    def send(self, data: bytes) -> int:
        raise BlockingIOError


def test_when_the_send_fails_the_pump_gets_every_action() -> None:
    transfer = transfer_for(None, ())
    transfer.sock = FullSocket()  # type: ignore[assignment]
    actions = transfer.session.start(BytesSource(b"z" * 10), now=0.0)
    assert isinstance(actions[0], Send)
    assert _send_first(transfer, actions) == actions


def test_a_transfer_without_a_socket_is_left_to_the_pump() -> None:
    transfer = transfer_for(None, ())
    actions = transfer.session.start(BytesSource(b"z" * 10), now=0.0)
    assert _send_first(transfer, actions) == actions
