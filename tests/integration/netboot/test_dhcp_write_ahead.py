"""The DHCP server in-process on 127.0.0.1 (no root): what a client sees when the journal is slow
or the pool is gone.

- Write-ahead order: a reply leaves only after its lease record is written *and* synced. The
  journal's sync is made to block (what a slow disk does); until it returns, no reply may reach
  the client, and it must reach it after. A power cut cannot be staged here, so the sync call
  itself is what the test watches: without it (or with replies sent first) the test fails.
- A journal that hangs holds back at most a bounded backlog of decisions: the server stops
  reading (the kernel's socket buffer waits instead), and answers everything once it is back.
- Pool exhaustion and the pool guard: the client gets no answer, and the operator gets a counter
  and a WARNING line, not one line per packet.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from piman.netboot.dhcp import leases as leases_mod
from piman.netboot.dhcp import server as server_mod
from piman.netboot.dhcp.packets import (
    BOOTREQUEST,
    BROADCAST_FLAG,
    DhcpPacket,
    MessageType,
    Options,
    decode,
    encode,
    mac_bytes,
)
from piman.netboot.dhcp.policy import PolicySettings
from piman.netboot.dhcp.server import DhcpServer, DhcpServerError

IP = IPv4Address


def _settings(first: str, last: str, **kw: object) -> PolicySettings:
    return PolicySettings(
        server_ip=IP("198.18.0.1"),
        network=IPv4Network("198.18.0.0/24"),
        pool=(int(IP(first)), int(IP(last))),
        **kw,  # type: ignore[arg-type]
    )


@asynccontextmanager
async def running(
    settings: PolicySettings, journal: Path, registry: CollectorRegistry | None = None
) -> AsyncIterator[DhcpServer]:
    server = DhcpServer(settings, journal_path=journal, listen=("127.0.0.1", 0), metrics=registry)
    task = asyncio.create_task(server.serve())
    try:
        await asyncio.wait_for(server.ready.wait(), 10)
        yield server
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def discover(mac: str, xid: int) -> bytes:
    return encode(
        DhcpPacket(
            op=BOOTREQUEST,
            xid=xid,
            chaddr=mac_bytes(mac),
            flags=BROADCAST_FLAG,
            options=Options(message_type=MessageType.DISCOVER),
        )
    )


def client_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def reply_within(sock: socket.socket, seconds: float) -> DhcpPacket | None:
    sock.settimeout(seconds)
    try:
        return decode(sock.recv(2048))
    except TimeoutError:
        return None


async def test_no_reply_leaves_before_its_lease_is_written_and_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = tmp_path / "dhcp" / "leases.journal"
    syncing, release = threading.Event(), threading.Event()
    synced: list[str] = []
    real: dict[str, Callable[[int], None]] = {"fdatasync": os.fdatasync, "fsync": os.fsync}

    def slow_sync(name: str) -> Callable[[int], None]:
        def sync(fd: int) -> None:
            path = os.readlink(f"/proc/self/fd/{fd}")
            if path == str(journal):  # the journal's own data (not a directory at creation)
                synced.append(path)
                syncing.set()
                release.wait(30)
            real[name](fd)

        return sync

    for name in real:
        monkeypatch.setattr(leases_mod.os, name, slow_sync(name))
    async with running(_settings("198.18.0.100", "198.18.0.110"), journal) as server:
        assert server.bound is not None
        with client_socket() as sock:
            sock.sendto(discover("02:00:00:00:00:01", 1), server.bound)
            assert await asyncio.to_thread(syncing.wait, 10), "the lease was never synced"
            # The record is written, its sync has not returned: nothing may have been sent.
            assert "02:00:00:00:00:01" in journal.read_text()
            assert await asyncio.to_thread(reply_within, sock, 0.5) is None
            release.set()
            offer = await asyncio.to_thread(reply_within, sock, 10)
    assert offer is not None
    assert offer.options.message_type is MessageType.OFFER
    assert f"{offer.yiaddr} 02:00:00:00:00:01 " in journal.read_text()
    assert synced == [str(journal)]


async def test_an_exhausted_pool_is_counted_and_logged_once_a_minute(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    settings = _settings("198.18.0.100", "198.18.0.101", new_leases_per_minute=0)
    caplog.set_level(logging.WARNING, logger="piman.netboot.dhcp.server")
    async with running(settings, tmp_path / "leases.journal", registry) as server:
        assert server.bound is not None
        with client_socket() as sock:
            for i in range(2):
                sock.sendto(discover(f"02:00:00:00:00:0{i}", i), server.bound)
                assert await asyncio.to_thread(reply_within, sock, 10) is not None
            for i in range(20):  # the pool is taken: no answer, however often asked
                sock.sendto(discover(f"02:00:00:00:01:{i:02x}", 100 + i), server.bound)
            sock.sendto(discover("02:00:00:00:00:00", 200), server.bound)  # a holder: answered
            answer = await asyncio.to_thread(reply_within, sock, 10)
    assert answer is not None
    assert answer.xid == 200
    assert registry.get_sample_value("piman_dhcp_pool_exhausted_total") == 20.0
    assert registry.get_sample_value("piman_dhcp_pool_addresses") == 2.0
    lines = [r.getMessage() for r in caplog.records if "exhausted" in r.getMessage()]
    assert lines == ["[dhcp] pool 198.18.0.100-198.18.0.101 exhausted: 1 DISCOVER(s) unanswered "
                     "since the last report"]  # fmt: skip


async def test_a_flood_of_new_clients_is_held_back_counted_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    settings = _settings("198.18.0.100", "198.18.0.199", new_leases_per_minute=10)
    caplog.set_level(logging.WARNING, logger="piman.netboot.dhcp.server")
    async with running(settings, tmp_path / "leases.journal", registry) as server:
        assert server.bound is not None
        with client_socket() as sock:
            for i in range(40):
                sock.sendto(discover(f"02:66:00:00:00:{i:02x}", i), server.bound)
            offers = 0
            while await asyncio.to_thread(reply_within, sock, 2) is not None:
                offers += 1
    assert offers == 10
    assert registry.get_sample_value("piman_dhcp_pool_guard_refused_total") == 30.0
    lines = [r.getMessage() for r in caplog.records if "pool guard" in r.getMessage()]
    assert len(lines) == 1
    assert "10 a minute in all" in lines[0]


async def test_a_stuck_journal_bounds_what_waits_for_it_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = tmp_path / "dhcp" / "leases.journal"
    syncing, release = threading.Event(), threading.Event()
    real_sync = os.fdatasync

    def stuck(fd: int) -> None:
        syncing.set()
        release.wait(30)
        real_sync(fd)

    monkeypatch.setattr(leases_mod.os, "fdatasync", stuck)
    monkeypatch.setattr(server_mod, "_MAX_BACKLOG", 4)
    registry = CollectorRegistry()
    settings = _settings("198.18.0.100", "198.18.0.199", new_leases_per_minute=0)
    async with running(settings, journal, registry) as server:
        assert server.bound is not None
        with client_socket() as sock:
            sock.sendto(discover("02:00:00:00:00:00", 0), server.bound)
            assert await asyncio.to_thread(syncing.wait, 10)
            for i in range(1, 50):  # while the disk hangs
                sock.sendto(discover(f"02:00:00:00:00:{i:02x}", i), server.bound)
            deadline = asyncio.get_running_loop().time() + 10
            backlog = registry.get_sample_value("piman_dhcp_journal_backlog")
            while backlog != 4.0 and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
                backlog = registry.get_sample_value("piman_dhcp_journal_backlog")
            assert backlog == 4.0  # the rest waits in the socket, not in the server's memory
            release.set()
            xids = set()
            while len(xids) < 50:
                offer = await asyncio.to_thread(reply_within, sock, 10)
                assert offer is not None, f"only {len(xids)} of 50 answered"
                xids.add(offer.xid)
    assert xids == set(range(50))


async def test_a_journal_that_cannot_be_opened_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("a file where the data directory should be")
    server = DhcpServer(
        _settings("198.18.0.100", "198.18.0.110"),
        journal_path=tmp_path / "data" / "dhcp" / "leases.journal",
        listen=("127.0.0.1", 0),
    )
    with pytest.raises(
        DhcpServerError, match=r"^lease journal .*leases\.journal: Not a directory$"
    ):
        await server.serve()
