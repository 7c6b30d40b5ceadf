"""The DHCP server in-process on 127.0.0.1 (no root): virtual Pis of the demo, metrics, journal."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from prometheus_client import CollectorRegistry

from piman.netboot.dhcp.policy import PolicySettings, Reservation
from piman.netboot.dhcp.server import DhcpServer
from piman.sim.netboot import netboot_once
from piman.sim.pi import make_pi


def _settings() -> PolicySettings:
    return PolicySettings(
        server_ip=IPv4Address("198.18.0.1"),
        network=IPv4Network("198.18.0.0/24"),
        pool=(int(IPv4Address("198.18.0.100")), int(IPv4Address("198.18.0.199"))),
        reservations={make_pi(0, "rack1", 1, "x").mac: Reservation(IPv4Address("198.18.0.10"))},
        pi_ouis=frozenset({"b8:27:eb", "dc:a6:32", "2c:cf:67"}),
    )


async def test_virtual_pis_get_addresses_and_leases_survive_a_restart(tmp_path: Path) -> None:
    journal = tmp_path / "dhcp" / "leases.journal"
    registry = CollectorRegistry()
    server = DhcpServer(
        _settings(), journal_path=journal, listen=("127.0.0.1", 0), metrics=registry
    )
    task = asyncio.create_task(server.serve())
    try:
        await asyncio.wait_for(server.ready.wait(), 10)
        assert server.bound is not None
        pis = [make_pi(i, "rack1", i + 1, "x") for i in range(3)]  # Pi 3B+, Pi 4, Pi 5
        got = [await netboot_once(pi, server.bound) for pi in pis]
        assert got[0] == IPv4Address("198.18.0.10")  # reserved
        assert got[1] is not None
        assert got[2] is not None
        assert len(set(got)) == 3
        offers = registry.get_sample_value("piman_dhcp_offers_total")
        acks = registry.get_sample_value("piman_dhcp_acks_total")
        assert offers == 3.0
        assert acks == 2.0  # the Pi 3 never REQUESTs
        assert registry.get_sample_value("piman_dhcp_leases_active") == 2.0
        # Garbage is dropped and counted; the server keeps answering.
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=server.bound
        )
        for size in (1, 10, 300):
            transport.sendto(bytes(size))
        transport.close()
        assert await netboot_once(pis[1], server.bound) == got[1]
        assert registry.get_sample_value("piman_dhcp_drops_total", {"reason": "malformed"}) == 3.0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    # A new server on the same journal hands the same addresses back to the same Pis.
    again = DhcpServer(_settings(), journal_path=journal, listen=("127.0.0.1", 0))
    task = asyncio.create_task(again.serve())
    try:
        await asyncio.wait_for(again.ready.wait(), 10)
        assert again.bound is not None
        assert await netboot_once(pis[2], again.bound) == got[2]
        other = make_pi(7, "rack1", 8, "x")
        assert await netboot_once(other, again.bound) not in got
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_busy_port_is_one_clear_error(tmp_path: Path) -> None:
    import socket

    import pytest

    from piman.netboot.dhcp.server import DhcpServerError

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        server = DhcpServer(
            _settings(), journal_path=tmp_path / "leases.journal", listen=busy.getsockname()
        )
        with pytest.raises(DhcpServerError, match=r"DHCP cannot listen on 127\.0\.0\.1:"):
            await server.serve()
