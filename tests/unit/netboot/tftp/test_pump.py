"""The pump's window sending: one GSO send per window, and the fallback when it is refused."""

from __future__ import annotations

import errno

from piman.netboot.tftp.files import BytesSource
from piman.netboot.tftp.packets import Opcode, Request, decode
from piman.netboot.tftp.pump import Transfer, TransferPump
from piman.netboot.tftp.session import SessionSettings, TftpSession


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
