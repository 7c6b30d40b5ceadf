"""piman's TFTP server against real clients on 127.0.0.1: tftp-hpa, atftp and curl.

Every fetch is compared by SHA-256 with the file on disk; traversal attempts get the error code
a user sees; a client that stops ACKing is cleaned up; garbage leaves the server answering.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from piman.config.netboot import TftpSettings
from piman.netboot.tftp.files import RootDirectory
from piman.netboot.tftp.server import TftpServer
from piman.netboot.tftp.session import TransferOutcome
from tests.support import needs_tool

SIZES = {"empty": 0, "one-block": 512, "small": 1468 * 3 + 7, "big": 3_000_017}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    base = tmp_path / "root"
    (base / "sub").mkdir(parents=True)
    for name, size in SIZES.items():
        (base / name).write_bytes(os.urandom(size))
    (base / "sub" / "nested.bin").write_bytes(os.urandom(70_000))
    (base / "text.txt").write_bytes(b"line one\nline two\r\nbare cr\rend\n" * 100)
    (tmp_path / "root-private").mkdir()
    (tmp_path / "root-private" / "secret").write_bytes(b"secret")
    (base / "escape").symlink_to(tmp_path / "root-private" / "secret")
    return base


class Running:
    def __init__(self, server: TftpServer, registry: CollectorRegistry) -> None:
        self.server = server
        self.registry = registry

    @property
    def port(self) -> int:
        assert self.server.address is not None
        return self.server.address[1]

    async def settle(self) -> None:
        """Wait until no transfer is open (bounded, no timing assertion)."""
        async with asyncio.timeout(30):
            while self.server.transfers:  # noqa: ASYNC110 - polling the server's table
                await asyncio.sleep(0.02)

    def outcomes(self) -> list[TransferOutcome | None]:
        return [s.outcome for s in self.server.history]


async def start_server(root: Path, **settings: object) -> tuple[Running, asyncio.Task[None]]:
    registry = CollectorRegistry()
    server = TftpServer(
        RootDirectory(root),
        TftpSettings.model_validate({"rate_limit": 10_000, **settings}),
        listen=("127.0.0.1", 0),
        registry=registry,
    )
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(5):
        await server.ready.wait()
    return Running(server, registry), task


@pytest.fixture
async def tftpd(root: Path) -> AsyncIterator[Running]:
    running, task = await start_server(root)
    try:
        yield running
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def run(*cmd: str, stdin: bytes | None = None, cwd: Path | None = None) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=cwd,
    )
    async with asyncio.timeout(60):
        out, _ = await proc.communicate(stdin)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


@pytest.mark.parametrize("name", list(SIZES))
@pytest.mark.parametrize("mode", ["binary", "octet-verbose"])
async def test_tftp_hpa_fetches_identical_bytes(
    tftpd: Running, root: Path, tmp_path: Path, name: str, mode: str
) -> None:
    needs_tool("tftp")
    out = tmp_path / "out"
    if mode == "binary":
        cmd = ["tftp", "127.0.0.1", str(tftpd.port), "-m", "binary", "-c", "get", name, str(out)]
    else:
        cmd = ["tftp", "-v", "-m", "octet", "127.0.0.1", str(tftpd.port), "-c", "get", name,
               str(out)]  # fmt: skip
    code, text = await run(*cmd)
    assert code == 0, text
    assert sha(out) == sha(root / name)
    await tftpd.settle()
    assert tftpd.outcomes() == [TransferOutcome.OK]


async def test_tftp_hpa_netascii_round_trips_text(
    tftpd: Running, root: Path, tmp_path: Path
) -> None:
    needs_tool("tftp")
    out = tmp_path / "text.out"
    script = f"ascii\nget text.txt {out}\nquit\n".encode()
    code, text = await run("tftp", "127.0.0.1", str(tftpd.port), stdin=script)
    assert code == 0, text
    assert out.read_bytes() == (root / "text.txt").read_bytes()


@pytest.mark.parametrize("blksize", [8, 512, 1024, 1468, 8192])
async def test_curl_fetches_identical_bytes_with_blksize(
    tftpd: Running, root: Path, tmp_path: Path, blksize: int
) -> None:
    needs_tool("curl")
    out = tmp_path / "out"
    url = f"tftp://127.0.0.1:{tftpd.port}/sub/nested.bin"
    code, text = await run("curl", "-sS", "-o", str(out), url, "--tftp-blksize", str(blksize))
    assert code == 0, text
    assert sha(out) == sha(root / "sub" / "nested.bin")
    await tftpd.settle()
    (stats,) = tftpd.server.history
    assert stats.outcome is TransferOutcome.OK
    # curl asks for blksize (and tsize); the server caps it to MTU - 32.
    assert stats.blksize == min(blksize, 1468) or blksize == 512


@pytest.mark.parametrize("busy_poll", ["0", "100us", "10ms"])
async def test_every_busy_poll_setting_serves_identical_bytes(
    root: Path, tmp_path: Path, busy_poll: str
) -> None:
    """Spinning off, the default and the longest allowed: lock-step (parked) and windowed."""
    needs_tool("curl", "atftp")
    running, task = await start_server(root, busy_poll=busy_poll)
    try:
        lockstep, windowed = tmp_path / "lockstep", tmp_path / "windowed"
        url = f"tftp://127.0.0.1:{running.port}/big"
        code, text = await run("curl", "-sS", "-o", str(lockstep), url, "--tftp-blksize", "1468")
        assert code == 0, text
        code, text = await run(
            "atftp", "--option", "blksize 1468", "--option", "windowsize 16",
            "-g", "-r", "big", "-l", str(windowed), "127.0.0.1", str(running.port),
        )  # fmt: skip
        assert code == 0, text
        assert sha(lockstep) == sha(windowed) == sha(root / "big")
        await running.settle()
        assert running.outcomes() == [TransferOutcome.OK, TransferOutcome.OK]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_curl_without_options(tftpd: Running, root: Path, tmp_path: Path) -> None:
    needs_tool("curl")
    out = tmp_path / "out"
    url = f"tftp://127.0.0.1:{tftpd.port}/big"
    code, text = await run("curl", "-sS", "-o", str(out), url, "--tftp-no-options")
    assert code == 0, text
    assert sha(out) == sha(root / "big")


@pytest.mark.parametrize(
    "options",
    [
        ["blksize 1468", "windowsize 16", "tsize 0"],
        ["blksize 512", "windowsize 1"],
        ["blksize 1024", "windowsize 8"],
        ["blksize 1468", "windowsize 32", "timeout 2"],
        ["tsize 0"],
    ],
)
async def test_atftp_fetches_identical_bytes_with_options(
    tftpd: Running, root: Path, tmp_path: Path, options: list[str]
) -> None:
    needs_tool("atftp")
    out = tmp_path / "out"
    args = [a for opt in options for a in ("--option", opt)]
    code, text = await run(
        "atftp", *args, "-g", "-r", "big", "-l", str(out), "127.0.0.1", str(tftpd.port)
    )
    assert code == 0, text
    assert sha(out) == sha(root / "big")
    await tftpd.settle()
    (stats,) = tftpd.server.history
    assert stats.outcome is TransferOutcome.OK
    window = next((int(o.split()[1]) for o in options if o.startswith("windowsize")), 1)
    assert stats.windowsize == window


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../root-private/secret", "Error code 2"),
        ("sub/../../root-private/secret", "Error code 2"),
        ("escape", "Error code 2"),
        ("sub\\..\\..\\x", "Error code 2"),
        ("/etc/passwd", "Error code 1"),
        ("no-such-file", "Error code 1"),
    ],
)
async def test_traversal_attempts_fail_with_the_right_error(
    tftpd: Running, tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str, message: str
) -> None:
    needs_tool("tftp")
    out = tmp_path / "out"
    caplog.set_level(logging.WARNING, logger="piman.netboot.tftp")
    script = f"binary\nget {name} {out}\nquit\n".encode()
    _, text = await run("tftp", "127.0.0.1", str(tftpd.port), stdin=script)
    assert message in text
    assert not out.exists() or out.read_bytes() == b""
    if message == "Error code 2":
        assert any("refused path" in r.getMessage() and "127.0.0.1" in r.getMessage()
                   for r in caplog.records)  # fmt: skip


async def test_write_requests_are_refused(tftpd: Running, root: Path, tmp_path: Path) -> None:
    needs_tool("tftp")
    local = tmp_path / "upload"
    local.write_bytes(b"data")
    script = f"binary\nput {local} upload\nquit\n".encode()
    _, text = await run("tftp", "127.0.0.1", str(tftpd.port), stdin=script)
    assert "Error code 2" in text
    assert not (root / "upload").exists()


def _client() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


async def _recv(sock: socket.socket, wait: float = 5.0) -> tuple[bytes, tuple[str, int]]:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(wait):
        return await loop.sock_recvfrom(sock, 70000)


async def _drain(sock: socket.socket, quiet: float) -> list[bytes]:
    """Every datagram until none came for ``quiet`` seconds."""
    got: list[bytes] = []
    while True:
        try:
            data, _ = await _recv(sock, wait=quiet)
        except TimeoutError:
            return got
        got.append(data)


async def test_client_that_stops_acking_is_cleaned_up(root: Path) -> None:
    running, task = await start_server(root, retransmit_timeout=0.2, max_retries=2)
    sock = _client()
    try:
        sock.sendto(b"\x00\x01big\x00octet\x00", ("127.0.0.1", running.port))
        blocks = [struct.unpack("!HH", data[:4]) for data in await _drain(sock, quiet=3.0)]
        # Block 1, then one copy per retry, never more: and the session is gone.
        assert blocks == [(3, 1)] * 3
        assert running.server.transfers == {}
        assert running.outcomes() == [TransferOutcome.TIMEOUT]
        assert running.registry.get_sample_value(
            "piman_tftp_transfers_total", {"outcome": "timeout"}
        ) == 1  # fmt: skip
        assert running.registry.get_sample_value("piman_tftp_retransmits_total") == 2
    finally:
        sock.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_early_terminate_after_block_1_counts_as_a_probe(tftpd: Running) -> None:
    sock = _client()
    try:
        sock.sendto(b"\x00\x01big\x00octet\x00tsize\x000\x00blksize\x001024\x00",
                    ("127.0.0.1", tftpd.port))  # fmt: skip
        oack, tid = await _recv(sock)
        assert oack == b"\x00\x06tsize\x003000017\x00blksize\x001024\x00"
        sock.sendto(b"\x00\x04\x00\x00", tid)
        block1, _ = await _recv(sock)
        assert block1[:4] == b"\x00\x03\x00\x01"
        assert len(block1) == 4 + 1024
        sock.sendto(b"\x00\x05\x00\x00Early terminate\x00", tid)
        await tftpd.settle()
        assert tftpd.outcomes() == [TransferOutcome.PROBE]
        assert tftpd.registry.get_sample_value(
            "piman_tftp_transfers_total", {"outcome": "probe"}
        ) == 1  # fmt: skip
    finally:
        sock.close()


async def test_each_transfer_gets_its_own_port(tftpd: Running) -> None:
    sock = _client()
    try:
        sock.sendto(b"\x00\x01small\x00octet\x00", ("127.0.0.1", tftpd.port))
        _, tid1 = await _recv(sock)
        sock.sendto(b"\x00\x01big\x00octet\x00", ("127.0.0.1", tftpd.port))
        _, tid2 = await _recv(sock)
        assert len({tid1[1], tid2[1], tftpd.port}) == 3
    finally:
        sock.close()


async def test_malformed_storm_leaves_the_server_answering(
    tftpd: Running, root: Path, tmp_path: Path
) -> None:
    needs_tool("curl")
    rng = __import__("random").Random(7)
    sock = _client()
    try:
        garbage = [
            b"",
            b"\x00",
            b"\x00\x09",
            b"\x00\x04\x00\x01",  # ACK to the listener
            b"\x00\x01no-nul",
            b"\x00\x01f\x00octet\x00blksize\x00",
            b"\x00\x05",
        ]
        for i in range(3000):
            payload = garbage[i % len(garbage)] if i % 2 else rng.randbytes(rng.randrange(0, 600))
            if payload[:2] in (b"\x00\x01", b"\x00\x02") and i % 2 == 0:
                payload = b"\xff" + payload[1:]
            sock.sendto(payload, ("127.0.0.1", tftpd.port))
            if i % 200 == 0:
                await asyncio.sleep(0)
    finally:
        sock.close()
    out = tmp_path / "out"
    code, text = await run("curl", "-sS", "-o", str(out), f"tftp://127.0.0.1:{tftpd.port}/big")
    assert code == 0, text
    assert sha(out) == sha(root / "big")
    dropped = tftpd.registry.get_sample_value(
        "piman_tftp_dropped_requests_total", {"reason": "malformed"}
    )  # fmt: skip
    assert dropped is not None
    assert dropped > 0


async def test_rate_limit_drops_excess_requests_from_one_source(root: Path) -> None:
    running, task = await start_server(root, rate_limit=1, rate_limit_exempt=[])
    sock = _client()
    try:
        for _ in range(5):
            sock.sendto(b"\x00\x01no-such\x00octet\x00", ("127.0.0.1", running.port))
        answers = await _drain(sock, quiet=1.0)
        assert len(answers) == 1
        assert answers[0].startswith(b"\x00\x05\x00\x01")  # file not found
        assert running.registry.get_sample_value(
            "piman_tftp_dropped_requests_total", {"reason": "rate_limited"}
        ) == 4  # fmt: skip
    finally:
        sock.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_failing_hook_is_an_error_answer_not_a_leaked_transfer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(name: str, client: tuple[str, int]) -> None:
        raise RuntimeError("boom")

    server = TftpServer(broken, TftpSettings(), listen=("127.0.0.1", 0))
    task = asyncio.create_task(server.serve())
    sock = _client()
    try:
        async with asyncio.timeout(5):
            await server.ready.wait()
        assert server.address is not None
        sock.sendto(b"\x00\x01f\x00octet\x00", server.address)
        answer, _ = await _recv(sock)
        assert answer.startswith(b"\x00\x05\x00\x00")
        await Running(server, CollectorRegistry()).settle()  # the ERROR leaves before the close
        assert server.transfers == {}
        assert [s.outcome for s in server.history] == [TransferOutcome.ERROR]
        assert "boom" in caplog.text
    finally:
        sock.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_loopback_is_exempt_from_the_rate_limit_by_default(root: Path) -> None:
    running, task = await start_server(root, rate_limit=1)
    sock = _client()
    try:
        for i in range(5):  # different files: the same request again would be a repeat
            sock.sendto(b"\x00\x01no-such-%d\x00octet\x00" % i, ("127.0.0.1", running.port))
        assert len(await _drain(sock, quiet=1.0)) == 5
    finally:
        sock.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_whole_transfer_limit_ends_a_slow_transfer_with_an_error(root: Path) -> None:
    running, task = await start_server(
        root, retransmit_timeout=0.1, max_retries=1000, transfer_timeout=0.5
    )  # fmt: skip
    sock = _client()
    try:
        sock.sendto(b"\x00\x01big\x00octet\x00", ("127.0.0.1", running.port))
        datagrams = await _drain(sock, quiet=2.0)
        assert datagrams[0][:4] == b"\x00\x03\x00\x01"
        assert datagrams[-1].startswith(b"\x00\x05\x00\x00")  # ERROR 0: time limit
        assert running.outcomes() == [TransferOutcome.EXPIRED]
    finally:
        sock.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_new_transfer_is_served_while_a_lone_one_waits_for_its_client(
    root: Path,
) -> None:
    running, task = await start_server(root, retransmit_timeout=1.0)
    quiet, other = _client(), _client()
    try:
        quiet.sendto(b"\x00\x01big\x00octet\x00", ("127.0.0.1", running.port))
        _, quiet_tid = await _recv(quiet)
        quiet.sendto(b"\x00\x04\x00\x01", quiet_tid)
        assert (await _recv(quiet))[0][:4] == b"\x00\x03\x00\x02"  # then this client goes quiet
        other.sendto(b"\x00\x01small\x00octet\x00", ("127.0.0.1", running.port))
        received = b""
        for n in range(1, 10):  # small: 4411 bytes, 9 blocks of 512 (the last short)
            data, tid = await _recv(other)
            assert data[:4] == struct.pack("!HH", 3, n)
            received += data[4:]
            other.sendto(struct.pack("!HH", 4, n), tid)
        assert received == (root / "small").read_bytes()
        # The quiet transfer was not forgotten meanwhile: its timer resends block 2.
        assert (await _recv(quiet))[0][:4] == b"\x00\x03\x00\x02"
        assert TransferOutcome.OK in running.outcomes()
    finally:
        quiet.close()
        other.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _fast_client(port: int, options: bytes, limit: float) -> tuple[int, bytes]:
    """ACK every DATA at once, blocking: (blocks received, the ERROR datagram or b"")."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2.0)
        sock.sendto(b"\x00\x01big\x00octet\x00" + options, ("127.0.0.1", port))
        blocks = 0
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            data, tid = sock.recvfrom(70000)
            if data[:2] == b"\x00\x05":
                return blocks, data
            if data[:2] == b"\x00\x06":
                sock.sendto(b"\x00\x04\x00\x00", tid)
                continue
            blocks += 1
            sock.sendto(b"\x00\x04" + data[2:4], tid)
    return blocks, b""


async def test_whole_transfer_limit_ends_a_transfer_whose_client_keeps_up(root: Path) -> None:
    # A client that ACKs at once keeps a lone transfer on the pump's fast path: the limit
    # must end it all the same (blksize 8: 375,000 blocks, far more than fit in 0.3 s).
    running, task = await start_server(root, transfer_timeout=0.3)
    try:
        blocks, error = await asyncio.to_thread(
            _fast_client, running.port, b"blksize\x008\x00", 20.0
        )
        assert error.startswith(b"\x00\x05\x00\x00")  # ERROR 0: time limit
        assert 0 < blocks < 3_000_017 // 8
        await running.settle()
        assert running.outcomes() == [TransferOutcome.EXPIRED]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
