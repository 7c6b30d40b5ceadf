"""The TFTP server, live on 127.0.0.1, fed mutations of real clients' datagrams.

Seeds: what tftp-hpa, atftp, curl and busybox sent to tftpd-hpa, and what it answered, in
``corpus/tftp`` (requests with and without options, ACKs, an ERROR, OACKs, DATA; captured in a
namespace by ``corpus/capture.py``). Two streams at once, from a few source addresses of
127.0.0.0/8:

- to the listener, mutated datagrams (requests whose strings lose their NUL, whose options ask
  absurd values, whose names climb out of the root; ACKs and DATA where a request belongs …);
- to every transfer those requests open (the TID port its answers come from), what a confused
  or hostile client sends back: now the right ACK, now a mutated datagram (ACKs of blocks at
  the 16-bit boundaries, ERRORs, DATA, OACKs, garbage), now nothing.

After: the server task still runs, nothing was logged at ERROR or with a traceback, every
transfer ended by itself within a bounded wait (its retries, its whole-transfer limit), the
process holds as many descriptors as before, and a client still gets each file byte for byte.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from piman.config.netboot import TftpSettings
from piman.netboot.tftp import packets as tftp
from piman.netboot.tftp.files import RootDirectory
from piman.netboot.tftp.server import TftpServer
from piman.sim.netboot import tftp_fetch
from tests.fuzz.conftest import budget
from tests.fuzz.live import logged_problems, settled_fds
from tests.fuzz.mutate import CORPUS, TFTP, Mutator, seeds

SOURCES = ("127.0.0.1", "127.0.0.1", "127.3.2.1", "127.200.0.9")
SECONDS = 60.0  # at most, whatever the profile's count: the run is bounded in time
SETTLE = 30.0  # every transfer ends within this after the last datagram, or the server hangs

FILES = {
    "start4.elf": bytes(range(256)) * 12 + b"tail",  # 7 blocks of 512, the last short
    "config.txt": b"arm_64bit=1\nenable_uart=1\r\nbare\rcr\n",
    "dc-a6-32-00-00-01/cmdline.txt": b"console=serial0,115200 root=/dev/mmcblk0p2\n",
    "big.bin": bytes(random.Random(7).randbytes(70_000)),
}


def _root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for name, data in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "secret").write_bytes(b"secret")
    (root / "escape").symlink_to(tmp_path / "private" / "secret")
    return root


def _seeds(*kinds: str) -> list[bytes]:
    """The captures of ``corpus/tftp`` of those kinds (``rrq-3.bin`` is an ``rrq``)."""
    files = sorted((CORPUS / "tftp").iterdir())
    return [f.read_bytes() for f in files if f.name.split("-")[0] in kinds]


def _sockets() -> list[socket.socket]:
    socks = []
    for host in SOURCES:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((host, 0))
        sock.setblocking(False)
        socks.append(sock)
    return socks


def _right_answer(data: bytes) -> bytes | None:
    """What a well-behaved client answers to a server datagram (None: nothing)."""
    try:
        packet = tftp.decode(data)
    except tftp.MalformedPacket:
        return None
    if isinstance(packet, tftp.Data):
        return tftp.encode(tftp.Ack(packet.block))
    if isinstance(packet, tftp.OAck):
        return tftp.encode(tftp.Ack(0))
    return None


class Client:
    """The fuzzing side: sends to the listener, answers the transfers that come back."""

    def __init__(self, server: tuple[str, int], seed: int) -> None:
        self.server = server
        self.socks = _sockets()
        # The listener gets requests mostly (their mutations make the rest); a transfer's port
        # gets what a client sends there (ACKs, ERRORs) and what it should never get.
        self.requests = Mutator(_seeds("rrq", "wrq") * 4 + seeds("tftp"), TFTP, seed)
        self.replies = Mutator(_seeds("ack", "error", "data", "oack"), TFTP, seed + 1)
        self.rng = random.Random(seed + 2)
        self.to_listener = 0
        self.to_transfers = 0
        self.received = 0

    @property
    def sent(self) -> int:
        return self.to_listener + self.to_transfers

    def close(self) -> None:
        for sock in self.socks:
            sock.close()

    def send_request(self) -> None:
        sock = self.socks[self.to_listener % len(self.socks)]
        try:
            sock.sendto(next(self.requests), self.server)
        except BlockingIOError:
            return
        self.to_listener += 1

    def answer(self) -> None:
        """Read what the transfers sent; answer each right, wrong or not at all."""
        for sock in self.socks:
            for _ in range(64):
                try:
                    data, tid = sock.recvfrom(65536)
                except BlockingIOError:
                    break
                self.received += 1
                roll = self.rng.random()
                if roll < 0.5:
                    reply = _right_answer(data)
                elif roll < 0.85:
                    reply = next(self.replies)
                else:
                    reply = None
                if reply is None:
                    continue
                try:
                    sock.sendto(reply, tid)
                except (BlockingIOError, ConnectionRefusedError):
                    continue
                self.to_transfers += 1


def _counts(registry: CollectorRegistry, name: str, label: str) -> dict[str, int]:
    """A counter's values by one label, e.g. transfers that ended by outcome."""
    out: dict[str, int] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == name and sample.value:
                out[sample.labels[label]] = int(sample.value)
    return dict(sorted(out.items()))


def count_reads(server: TftpServer) -> list[int]:
    """Counts the datagrams the listener hands the server (a one-item list, kept current)."""
    read = [0]
    on_request = server.on_request

    def counted(data: bytes, peer: tuple[str, int]) -> None:
        read[0] += 1
        on_request(data, peer)

    server.on_request = counted  # type: ignore[method-assign]
    return read


async def _serve(server: TftpServer) -> asyncio.Task[None]:
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(30):
        await server.ready.wait()
    return task


async def _fetch_all(address: tuple[str, int]) -> dict[str, bytes | None]:
    """Each file, as a Pi reads it (lock-step, then with options)."""
    got: dict[str, bytes | None] = {}
    for i, name in enumerate(FILES):
        options = (("blksize", "1024"), ("windowsize", "4"), ("tsize", "0")) if i % 2 else ()
        into = bytearray()
        size = await tftp_fetch(address, name, options, into=into, wait=2.0, retries=5)
        got[name] = None if size is None else bytes(into)
    return got


async def test_mutated_datagrams_neither_crash_nor_hang_the_server_nor_leak(
    tmp_path: Path, fuzz_report: Any
) -> None:
    plan = budget()
    registry = CollectorRegistry()
    settings = TftpSettings.model_validate(
        {
            # Short limits, so that every abandoned transfer ends within the run.
            "retransmit_timeout": "200ms",
            "max_retries": 2,
            "max_client_timeout": "1s",
            "transfer_timeout": "3s",
            "max_transfers": 64,
            # Loopback is exempt by default; here the limiter is part of what is fuzzed.
            "rate_limit": 2000,
            "rate_limit_total": 20000,
            "rate_limit_exempt": [],
        }
    )
    before_start = await settled_fds()
    with logged_problems() as problems:
        server = TftpServer(RootDirectory(_root(tmp_path)), settings, listen=("127.0.0.1", 0),
                            registry=registry)  # fmt: skip
        task = await _serve(server)
        assert server.address is not None
        client = Client(server.address, plan.seed)
        read = count_reads(server)

        async def read_up_to(sent: int) -> None:
            """Let the listener read what was sent (a little is lost now and then: bounded)."""
            end = time.monotonic() + 0.2
            while read[0] < sent and time.monotonic() < end:  # noqa: ASYNC110 - one at a time
                await asyncio.sleep(0)

        try:
            assert await _fetch_all(server.address) == FILES  # and the cache is warm
            baseline = await settled_fds()
            read[0] = 0
            t0 = time.monotonic()
            while client.to_listener < plan.datagrams and time.monotonic() - t0 < SECONDS:
                client.send_request()
                if client.to_listener % 16 == 0:
                    await read_up_to(client.to_listener)
                    client.answer()
                    # Paced (some 5,000 a second at most), so that transfers get going and
                    # meet their clients' answers, and not only the limit on transfers.
                    await asyncio.sleep(0.003)
            elapsed = time.monotonic() - t0
            fuzzed = read[0]
            # Answer what still comes for a while, then let every transfer end by itself.
            settle_end = time.monotonic() + SETTLE
            while server.transfers and time.monotonic() < settle_end:
                client.answer()
                await asyncio.sleep(0.05)
            hung = len(server.transfers)
            assert not task.done(), task
            got = await _fetch_all(server.address)
            after = await settled_fds()
        finally:
            client.close()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    after_stop = await settled_fds()
    outcomes = _counts(registry, "piman_tftp_transfers_total", "outcome")
    dropped = _counts(registry, "piman_tftp_dropped_requests_total", "reason")
    fuzz_report(
        f"fuzz tftp: {client.sent} datagrams in {elapsed:.1f} s ({client.to_listener} to the "
        f"listener, {fuzzed} read, dropped {dropped}; {client.to_transfers} to "
        f"{sum(outcomes.values()) - 2 * len(FILES)} transfers), {len(problems.records)} errors "
        f"logged, {hung} hung, fd {len(baseline)} → {len(after)}, outcomes {outcomes}"
    )
    assert problems.lines() == []
    assert fuzzed >= client.to_listener * 0.9, "most datagrams never reached the server"
    assert hung == 0, "transfers still open long after their clients went quiet"
    assert got == FILES, "a file came back different after the fuzzing"
    assert len(after) == len(baseline), (baseline, after)
    assert len(after_stop) == len(before_start), (before_start, after_stop)
