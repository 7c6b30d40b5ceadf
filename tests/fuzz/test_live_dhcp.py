"""The DHCP server, live on 127.0.0.1, fed mutations of real clients' packets.

Seeds: what busybox udhcpc, ISC dhclient and dnsmasq sent in ``corpus/dhcp`` (captured in a
namespace by ``corpus/capture.py``), plus the DISCOVER and REQUEST of the simulator's Pi 3B+, 4
and 5 (the Pi's options: 60, 93, 94, 97), none with the MACs of the Pis whose leases are checked.
The datagrams come from a few source addresses and ports of 127.0.0.0/8 at once.

Before: three virtual Pis get their addresses. After: the server still runs, logged no error and
no exception, holds as many descriptors as before, and gives the same three Pis the same
addresses (no hostile packet lost a lease); a new server on the same journal does too.
"""

from __future__ import annotations

import asyncio
import socket
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from piman.netboot.dhcp.packets import DhcpPacket, MessageType, Options, encode
from piman.netboot.dhcp.policy import PolicySettings
from piman.netboot.dhcp.server import DhcpServer
from piman.sim.netboot import netboot_once, pi_discover, pi_request
from piman.sim.pi import VirtualPi, make_pi
from tests.fuzz.conftest import budget
from tests.fuzz.live import logged_problems, settled_fds
from tests.fuzz.mutate import DHCP, Mutator, seeds

SOURCES = ("127.0.0.1", "127.0.0.1", "127.3.2.1", "127.200.0.9")
SECONDS = 60.0  # at most, whatever the profile's count: the run is bounded in time


def _settings() -> PolicySettings:
    return PolicySettings(
        server_ip=IPv4Address("198.18.0.1"),
        network=IPv4Network("198.18.0.0/24"),
        pool=(int(IPv4Address("198.18.0.100")), int(IPv4Address("198.18.0.199"))),
        router=IPv4Address("198.18.0.1"),
        pi_ouis=frozenset({"b8:27:eb", "dc:a6:32", "2c:cf:67", "d8:3a:dd", "e4:5f:01"}),
    )


def _pi_seeds() -> list[bytes]:
    """What the simulator's Pis send (they are not captures: piman has no real Pi here)."""
    out = []
    for index in (10, 11, 12):  # Pi 3B+, 4, 5 — not the Pis whose leases are checked
        pi = make_pi(index, "rack9", index, "x")
        discover = pi_discover(pi.model, pi.mac, pi.serial, pi.revision, xid=0x1000 + index)
        offer = DhcpPacket(
            op=2,
            xid=discover.xid,
            chaddr=discover.chaddr,
            yiaddr=IPv4Address("198.18.0.150"),
            options=Options(message_type=MessageType.OFFER, server_id=IPv4Address("198.18.0.1")),
        )
        out += [encode(discover), encode(pi_request(discover, offer))]
    return out


def _sockets() -> list[socket.socket]:
    socks = []
    for host in SOURCES:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((host, 0))
        sock.setblocking(False)
        socks.append(sock)
    return socks


def _drain(socks: list[socket.socket]) -> int:
    """Read (and count) the replies that came back: the server answers where a request came from
    when that is not port 68."""
    got = 0
    for sock in socks:
        while True:
            try:
                sock.recv(4096)
            except BlockingIOError:
                break
            got += 1
    return got


async def _addresses(pis: list[VirtualPi], target: tuple[str, int]) -> list[IPv4Address | None]:
    return [await netboot_once(pi, target) for pi in pis]


async def _serve(server: DhcpServer) -> asyncio.Task[None]:
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(30):
        await server.ready.wait()
    return task


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_mutated_client_packets_neither_crash_the_server_nor_lose_a_lease(
    tmp_path: Path, fuzz_report: Any
) -> None:
    plan = budget()
    journal = tmp_path / "leases.journal"
    registry = CollectorRegistry()
    # Pi 4, Pi 5, Pi 4 (a Pi 3B+ never REQUESTs: it holds an offer, not a lease)
    pis = [make_pi(i, "rack1", i + 1, "x") for i in (1, 2, 4)]
    before_start = await settled_fds()
    with logged_problems() as problems:
        server = DhcpServer(_settings(), journal_path=journal, listen=("127.0.0.1", 0),
                            metrics=registry)  # fmt: skip
        task = await _serve(server)
        socks = _sockets()
        try:
            assert server.bound is not None
            held = await _addresses(pis, server.bound)
            assert None not in held, held
            assert len(set(held)) == 3, held
            baseline = await settled_fds()
            read = [0]
            received = server.received

            def counted(data: bytes, peer: tuple[str, int]) -> None:
                read[0] += 1
                received(data, peer)

            server.received = counted  # type: ignore[method-assign]
            mutator = Mutator(seeds("dhcp") + _pi_seeds(), DHCP, plan.seed)
            sent = replies = 0
            t0 = time.monotonic()
            for datagram in mutator:
                if sent >= plan.datagrams or time.monotonic() - t0 > SECONDS:
                    break
                sock = socks[sent % len(socks)]
                try:
                    sock.sendto(datagram, server.bound)
                except BlockingIOError:
                    await asyncio.sleep(0.01)
                    continue
                sent += 1
                if sent % 32 == 0:  # let the server (same event loop) read them
                    end = time.monotonic() + 0.2
                    while read[0] < sent and time.monotonic() < end:  # noqa: ASYNC110
                        await asyncio.sleep(0)
                    replies += _drain(socks)
            await asyncio.sleep(0.5)
            replies += _drain(socks)
            elapsed = time.monotonic() - t0
            fuzzed = read[0]
            assert not task.done(), task
            again = await _addresses(pis, server.bound)
            after = await settled_fds()
        finally:
            for sock in socks:
                sock.close()
            await _stop(task)
        # A new server on the same journal: the leases were written, not just held in memory.
        restarted = DhcpServer(_settings(), journal_path=journal, listen=("127.0.0.1", 0))
        task = await _serve(restarted)
        try:
            assert restarted.bound is not None
            reloaded = await _addresses(pis, restarted.bound)
        finally:
            await _stop(task)
    after_stop = await settled_fds()
    malformed = registry.get_sample_value("piman_dhcp_drops_total", {"reason": "malformed"}) or 0
    fuzz_report(
        f"fuzz dhcp: {sent} datagrams in {elapsed:.1f} s ({fuzzed} read, {int(malformed)} "
        f"malformed, "
        f"{replies} answered), {len(problems.records)} errors logged, "
        f"fd {len(baseline)} → {len(after)}, "
        f"leases kept {sum(a == b for a, b in zip(held, again, strict=True))}/3"
    )
    assert problems.lines() == []
    assert fuzzed >= sent * 0.9, "most datagrams never reached the server"
    assert again == held, "a lease was lost to garbage"
    assert reloaded == held, "a lease was not in the journal"
    assert len(after) == len(baseline), (baseline, after)
    assert len(after_stop) == len(before_start), (before_start, after_stop)
