"""Concurrent transfers: with two or more open, lock-step blocks go through the pump's epoll
loop, in C (piman.netboot.tftp._lanes) unless ``tftp.native: false`` or piman was built without
it. Every test runs both ways, against real clients (curl, atftp, tftp-hpa) and hand-driven
sockets on 127.0.0.1, and every fetched file is compared with the one on disk.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import time
from pathlib import Path

import pytest

from piman.netboot.tftp import pump
from piman.netboot.tftp.session import TransferOutcome
from tests.integration.netboot.test_tftp_clients import Running, _client, _drain, _recv, run, sha
from tests.integration.netboot.test_tftp_clients import start_server as _start_server
from tests.support import REQUIRE_ALL, needs_tool


@pytest.fixture(params=[True, False], ids=["C", "python"])
def native(request: pytest.FixtureRequest) -> bool:
    if request.param and pump._lanes is None:
        pytest.skip(
            "piman was built without its C data path (no C compiler at install)"
            + (": CI must build it" if REQUIRE_ALL else "")
        )
    return bool(request.param)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    base = tmp_path / "root"
    base.mkdir()
    for name, size in {
        "big": 3_000_017,
        "mid": 700_001,
        "small": 4411,
        "one": 512,
        "empty": 0,
    }.items():
        (base / name).write_bytes(os.urandom(size))
    return base


async def start_server(
    root: Path, native: bool, **settings: object
) -> tuple[Running, asyncio.Task[None]]:
    return await _start_server(root, native=native, **settings)


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_concurrent_clients_fetch_identical_bytes(
    root: Path, tmp_path: Path, native: bool, caplog: pytest.LogCaptureFixture
) -> None:
    needs_tool("curl", "atftp", "tftp")
    caplog.set_level(logging.INFO, logger="piman.netboot.tftp")
    # 20 clients on 2 shared cores: a client may stall for a second, and a resend after 1 s
    # would then be right. curl asks for 6 s (its `timeout` option); the others get 6 s too, so
    # that the zero below counts only resends the clients did not cause. (The timers coming due
    # while blocks flow are pinned at 0.4 s by the paced-clients test below.)
    running, task = await start_server(root, native, retransmit_timeout=6.0)
    try:
        assert f"data path in {'C' if native else 'Python'}" in caplog.text
        port = str(running.port)
        jobs: list[tuple[str, Path, list[str]]] = []  # file, output, command
        names = ["big", "mid", "small", "one"]  # curl 7.88 fails on empty files (any server)
        for i in range(16):
            name, out, blksize = (
                names[i % len(names)],
                tmp_path / f"curl{i}",
                (512, 1024, 1468)[i % 3],
            )
            url = f"tftp://127.0.0.1:{port}/{name}"
            jobs.append(
                (name, out, ["curl", "-sS", "-o", str(out), url, "--tftp-blksize", str(blksize)])
            )
        for i in range(2):
            out = tmp_path / f"atftp{i}"
            window = ["--option", "blksize 1468", "--option", "windowsize 8"]
            cmd = ["atftp", *window, "-g", "-r", "big", "-l", str(out), "127.0.0.1", port]
            jobs.append(("big", out, cmd))
            name, out = ("mid", "empty")[i], tmp_path / f"hpa{i}"
            cmd = ["tftp", "127.0.0.1", port, "-m", "binary", "-c", "get", name, str(out)]
            jobs.append((name, out, cmd))
        results = await asyncio.gather(*(run(*cmd) for _, _, cmd in jobs))
        for (name, out, cmd), (code, text) in zip(jobs, results, strict=True):
            assert code == 0, (cmd, text)
            assert sha(out) == sha(root / name), cmd
        await running.settle()
        assert running.outcomes() == [TransferOutcome.OK] * len(jobs)
        assert running.registry.get_sample_value("piman_tftp_retransmits_total") == 0
    finally:
        await stop(task)


async def test_block_numbers_roll_over_in_concurrent_transfers(
    root: Path, tmp_path: Path, native: bool
) -> None:
    needs_tool("curl")
    running, task = await start_server(root, native)
    try:  # blksize 8: 87,501 blocks, past block 65535 and round to 0
        outs = [tmp_path / f"out{i}" for i in range(2)]
        url = f"tftp://127.0.0.1:{running.port}/mid"
        results = await asyncio.gather(
            *(run("curl", "-sS", "-o", str(out), url, "--tftp-blksize", "8") for out in outs)
        )
        assert [code for code, _ in results] == [0, 0], results
        assert all(sha(out) == sha(root / "mid") for out in outs)
        await running.settle()
        assert running.outcomes() == [TransferOutcome.OK, TransferOutcome.OK]
        assert {s.blocks for s in running.server.history} == {700_001 // 8 + 1}
    finally:
        await stop(task)


def _paced_client(port: int, pause: float, blocks: int) -> list[int]:
    """Lock-step, one ACK every ``pause`` seconds for ``blocks`` blocks, then ERROR: the block
    numbers of every DATA received (a resend would show as a repeat)."""
    got: list[int] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5.0)
        sock.sendto(b"\x00\x01big\x00octet\x00", ("127.0.0.1", port))
        for _ in range(blocks):
            data, tid = sock.recvfrom(70000)
            got.append(struct.unpack("!H", data[2:4])[0])
            time.sleep(pause)
            sock.sendto(b"\x00\x04" + data[2:4], tid)
        data, tid = sock.recvfrom(70000)  # the block after the last ACK …
        got.append(struct.unpack("!H", data[2:4])[0])
        sock.sendto(b"\x00\x05\x00\x00enough\x00", tid)  # … is the last
    return got


async def test_clients_slower_than_the_retransmit_timeout_per_batch_get_no_resends(
    root: Path, native: bool
) -> None:
    # Two transfers whose clients ACK every 3 ms: hundreds of blocks take longer than the
    # 0.4 s retransmit timeout, so the timers come due while the blocks are flowing; each must
    # see that its transfer moved on and resend nothing.
    running, task = await start_server(root, native, retransmit_timeout=0.4, max_retries=3)
    try:
        results = await asyncio.gather(
            *(asyncio.to_thread(_paced_client, running.port, 0.003, 300) for _ in range(2))
        )
        for got in results:
            assert got == list(range(1, 302))  # 300 ACKed, the 301st sent: each exactly once
        await running.settle()
        assert running.outcomes() == [
            TransferOutcome.ABORTED,
            TransferOutcome.ABORTED,
        ]  # the clients' ERROR
        assert running.registry.get_sample_value("piman_tftp_retransmits_total") == 0
    finally:
        await stop(task)


@pytest.mark.parametrize("alone", [True, False], ids=["alone", "beside-another"])
async def test_duplicate_acks_are_never_answered_and_an_error_ends_the_transfer(
    root: Path, native: bool, alone: bool
) -> None:
    # Alone, a transfer is served by the pump's blocking-read path; beside another, by the
    # epoll loop (in C, or in Python): the same rules hold on each.
    running, task = await start_server(root, native, retransmit_timeout=5.0)
    quiet, sock = _client(), _client()
    try:
        if not alone:
            quiet.sendto(b"\x00\x01big\x00octet\x00", ("127.0.0.1", running.port))
            await _recv(quiet)  # a second transfer, waiting for its client, all along
        sock.sendto(b"\x00\x01big\x00octet\x00", ("127.0.0.1", running.port))
        block1, tid = await _recv(sock)
        assert block1[:4] == b"\x00\x03\x00\x01"
        sock.sendto(b"\x00\x04\x00\x01", tid)
        assert (await _recv(sock))[0][:4] == b"\x00\x03\x00\x02"
        sock.sendto(b"\x00\x04\x00\x01", tid)  # a duplicate: never answered
        sock.sendto(b"\x00\x04\x00\x02", tid)
        sock.sendto(b"\x00\x04\x00\x02", tid)  # and again
        sock.sendto(b"\x00\x04\x00\x09", tid)  # an ACK of a block not sent yet: ignored
        assert [d[:4] for d in await _drain(sock, quiet=0.5)] == [b"\x00\x03\x00\x03"]
        sock.sendto(b"\x00\x05\x00\x00disk full\x00", tid)
        async with asyncio.timeout(10):
            while TransferOutcome.ABORTED not in running.outcomes():  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        assert running.outcomes() == [TransferOutcome.ABORTED]
        assert len(running.server.transfers) == (0 if alone else 1)  # the quiet one stays
    finally:
        quiet.close()
        sock.close()
        await stop(task)


async def test_a_silent_client_among_busy_ones_is_cleaned_up(
    root: Path, tmp_path: Path, native: bool
) -> None:
    needs_tool("curl")
    running, task = await start_server(root, native, retransmit_timeout=0.2, max_retries=2)
    quiet = _client()
    try:
        quiet.sendto(b"\x00\x01big\x00octet\x00", ("127.0.0.1", running.port))
        url = f"tftp://127.0.0.1:{running.port}/big"
        fetches = asyncio.gather(
            *(run("curl", "-sS", "-o", str(tmp_path / f"o{i}"), url) for i in range(3))
        )
        blocks = [struct.unpack("!HH", d[:4]) for d in await _drain(quiet, quiet=2.0)]
        assert blocks == [(3, 1)] * 3  # block 1, then one copy per retry, never more
        assert [code for code, _ in await fetches] == [0, 0, 0]
        assert all(sha(tmp_path / f"o{i}") == sha(root / "big") for i in range(3))
        await running.settle()
        assert sorted(o.value for o in running.outcomes() if o) == sorted(
            [TransferOutcome.OK.value] * 3 + [TransferOutcome.TIMEOUT.value]
        )
    finally:
        quiet.close()
        await stop(task)


async def test_a_client_that_goes_away_is_dropped_at_once(root: Path, native: bool) -> None:
    # The client's port closes: the kernel's ICMP port unreachable ends the transfer at the
    # next DATA (block 3, or its first resend), not after its retries (3 s here): ABORTED, not
    # TIMEOUT; the other transfer goes on.
    running, task = await start_server(root, native, retransmit_timeout=0.5, max_retries=5)
    quiet, gone = _client(), _client()
    try:
        quiet.sendto(b"\x00\x01big\x00octet\x00", ("127.0.0.1", running.port))
        await _recv(quiet)
        gone.sendto(b"\x00\x01big\x00octet\x00", ("127.0.0.1", running.port))
        _, tid = await _recv(gone)
        gone.sendto(b"\x00\x04\x00\x01", tid)
        await _recv(gone)  # block 2
        gone.sendto(b"\x00\x04\x00\x02", tid)
        gone.close()  # block 3 (or its resend) goes to a closed port
        async with asyncio.timeout(10):
            while not running.outcomes():  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        assert running.outcomes() == [TransferOutcome.ABORTED]
        assert len(running.server.transfers) == 1
    finally:
        quiet.close()
        gone.close()
        await stop(task)


def _fast_client(port: int, limit: float) -> bytes:
    """ACK every DATA at once (blksize 8): the ERROR datagram that ends it, or b""."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2.0)
        sock.sendto(b"\x00\x01big\x00octet\x00blksize\x008\x00", ("127.0.0.1", port))
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            data, tid = sock.recvfrom(70000)
            if data[:2] == b"\x00\x05":
                return data
            sock.sendto(b"\x00\x04" + (data[2:4] if data[:2] == b"\x00\x03" else b"\0\0"), tid)
    return b""


async def test_the_whole_transfer_limit_ends_concurrent_transfers_that_keep_up(
    root: Path, native: bool
) -> None:
    running, task = await start_server(root, native, transfer_timeout=0.3)
    try:
        errors = await asyncio.gather(
            *(asyncio.to_thread(_fast_client, running.port, 20.0) for _ in range(2))
        )
        assert all(e.startswith(b"\x00\x05\x00\x00") for e in errors), errors
        await running.settle()
        assert running.outcomes() == [TransferOutcome.EXPIRED, TransferOutcome.EXPIRED]
    finally:
        await stop(task)
