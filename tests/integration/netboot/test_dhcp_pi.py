"""Pi-like clients in a netns lab: exact Pi 4 DISCOVER, Pi 3 ROM behaviour, proxy mode, garbage.

The clients are hand-made and talk through raw AF_PACKET sockets, as a Pi's boot ROM would: no
address, broadcast flag clear, so the server must unicast to the Pi's MAC (RFC 2131 §4.1).
"""

from __future__ import annotations

import time
from ipaddress import IPv4Address

from piman.fleet.models import PiModel
from piman.netboot.dhcp.packets import DhcpPacket, MessageType, decode, encode
from piman.sim.netboot import pi_discover, pi_request
from tests.integration import netlab as lab_module
from tests.support import needs_tool

NetLab = lab_module.NetLab
netlab = lab_module.netlab

# PROTOCOLS.md §1, byte for byte.
PI_OPTION43 = bytes.fromhex("0601030a04005058450914000011") + b"Raspberry Pi Boot" + b"\xff"
PI4_SERIAL, PI4_REV = "5e1f0c2a", 0xC03114


def _pi4_mac(lab: NetLab, index: int) -> str:
    return lab.client_mac(index)


def _offers(
    replies: list[dict[str, str]], mtype: MessageType
) -> list[tuple[dict[str, str], DhcpPacket]]:
    out = []
    for reply in replies:
        packet = decode(bytes.fromhex(reply["payload"]))
        if packet.message_type is mtype:
            out.append((reply, packet))
    return out


def test_pi4_discover_gets_option43_byte_for_byte_unicast_to_its_mac(netlab: NetLab) -> None:
    ns, mac = netlab.clients[0], netlab.client_mac(0)
    netlab.start_manager({"dhcp": {"pool": "198.18.0.100-198.18.0.110"}})
    # A Pi 4 whose MAC is not a Pi OUI: option 97 alone must identify it.
    discover = pi_discover(PiModel.PI4, mac, PI4_SERIAL, PI4_REV, xid=0x0BADCAFE)
    assert discover.options.vendor_class == "PXEClient:Arch:00000:UNDI:002001"
    assert discover.options.client_arch == (0,)
    replies = netlab.raw_dhcp(ns, encode(discover), seconds=2)
    offers = _offers(replies, MessageType.OFFER)
    assert len(offers) == 1
    frame, offer = offers[0]
    assert offer.xid == 0x0BADCAFE
    assert offer.options.vendor_specific == PI_OPTION43
    assert offer.options.vendor_class == "PXEClient"
    assert offer.options.client_machine_id == discover.options.client_machine_id
    assert offer.siaddr == IPv4Address("198.18.0.1")
    assert offer.options.tftp_server == "198.18.0.1"
    # Unicast to the Pi's MAC and offered address (the broadcast flag was clear).
    assert frame["dst_mac"] == mac
    assert frame["dst_ip"] == str(offer.yiaddr)
    # The Pi 4 REQUEST (no option 60) is acknowledged with the same boot options.
    replies = netlab.raw_dhcp(ns, encode(pi_request(discover, offer)), seconds=2)
    acks = _offers(replies, MessageType.ACK)
    assert len(acks) == 1
    assert acks[0][1].yiaddr == offer.yiaddr
    assert acks[0][1].options.vendor_specific == PI_OPTION43
    # Its sighting reaches the store: an unknown Pi becomes a `new` node with serial and model.
    deadline = time.monotonic() + 10
    node = ""
    while time.monotonic() < deadline:
        node = netlab.run(
            netlab.server,
            "sqlite3",
            str(netlab.tmp / "data" / "piman.db"),
            f"select state, serial, model, vendor_class from nodes where mac = '{mac}'",
            check=False,
        ).stdout.strip()
        if node:
            break
        time.sleep(0.3)
    assert node == f"new|{PI4_SERIAL}|pi4|PXEClient:Arch:00000:UNDI:002001"


def test_pi3_that_never_requests_keeps_its_offered_address(netlab: NetLab) -> None:
    needs_tool("busybox")
    netlab.start_manager(
        {"dhcp": {"pool": "198.18.0.100-198.18.0.101", "reply_delay": {"b8:27:eb": "0.2s"}}}
    )
    pi3_mac = "b8:27:eb:00:00:07"
    discover = pi_discover(PiModel.PI3BPLUS, pi3_mac, "00000007", 0xA020D3, xid=77)
    offers = _offers(netlab.raw_dhcp(netlab.clients[0], encode(discover), 3), MessageType.OFFER)
    assert len(offers) == 1
    pi3_address = str(offers[0][1].yiaddr)
    assert offers[0][1].options.vendor_specific == PI_OPTION43
    # The Pi 3 never sends REQUEST. Two more clients: one gets the other pool address, the
    # other nothing; neither gets the Pi 3's.
    from tests.integration.netboot.test_dhcp_clients import udhcpc

    got = [udhcpc(netlab, netlab.clients[1]), udhcpc(netlab, netlab.clients[2])]
    assert pi3_address not in got
    assert sorted(got, key=str) == sorted([None, next(a for a in got if a)], key=str)


def test_proxy_mode_client_gets_address_from_dnsmasq_and_boot_options_from_piman(
    netlab: NetLab,
) -> None:
    needs_tool("dnsmasq")
    router_ns = netlab.clients[2]
    netlab.run(router_ns, "ip", "addr", "add", "198.18.0.2/24", "dev", "eth0")
    netlab.popen(
        router_ns,
        "dnsmasq",
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--port=0",
        "--interface=eth0",
        "--bind-interfaces",
        "--no-ping",
        "--dhcp-authoritative",
        "--dhcp-range=198.18.0.150,198.18.0.160,1h",
        f"--dhcp-leasefile={netlab.tmp / 'dnsmasq.leases'}",
        f"--pid-file={netlab.tmp / 'dnsmasq.pid'}",
    )
    netlab.start_manager({"dhcp": {"mode": "proxy"}})
    time.sleep(0.5)  # dnsmasq has no readiness signal; its socket is up well within this
    mac = "dc:a6:32:00:00:09"
    discover = pi_discover(PiModel.PI4, mac, PI4_SERIAL, PI4_REV, xid=4242)
    offers = _offers(netlab.raw_dhcp(netlab.clients[0], encode(discover), 3), MessageType.OFFER)
    by_server = {str(p.options.server_id): p for _, p in offers}
    assert set(by_server) == {"198.18.0.1", "198.18.0.2"}
    router, proxy = by_server["198.18.0.2"], by_server["198.18.0.1"]
    assert IPv4Address("198.18.0.150") <= router.yiaddr <= IPv4Address("198.18.0.160")
    assert router.options.vendor_specific is None
    assert proxy.yiaddr == IPv4Address(0)
    assert proxy.options.vendor_specific == PI_OPTION43
    assert proxy.options.vendor_class == "PXEClient"
    assert proxy.options.client_machine_id == discover.options.client_machine_id
    assert proxy.siaddr == IPv4Address("198.18.0.1")
    assert proxy.options.subnet_mask is None
    assert proxy.options.router == ()
    assert proxy.options.lease_time is None


def test_a_storm_of_malformed_packets_leaves_the_server_answering(netlab: NetLab) -> None:
    needs_tool("busybox")
    manager = netlab.start_manager({"dhcp": {"pool": "198.18.0.100-198.18.0.110"}})
    attacker = netlab.clients[1]
    netlab.run(attacker, "ip", "addr", "add", "198.18.0.30/24", "dev", "eth0")
    storm = (
        "import os, random, socket\n"
        "from piman.netboot.dhcp.packets import MAGIC_COOKIE\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b'eth0')\n"
        "rnd = random.Random(7)\n"
        "for i in range(3000):\n"
        "    kind = i % 4\n"
        "    if kind == 0: data = os.urandom(rnd.randrange(0, 600))\n"
        "    elif kind == 1: data = bytes([1, 1, 6, 0]) + os.urandom(232) + MAGIC_COOKIE"
        " + os.urandom(rnd.randrange(0, 64))\n"
        "    elif kind == 2: data = bytes([1, 1, 6, 0]) + bytes(232) + MAGIC_COOKIE"
        " + bytes([53, 1, 1, 61, 200])\n"
        "    else: data = bytes([1, 1, 6, 0]) + bytes(232) + MAGIC_COOKIE"
        " + bytes([53, 1, 99, 255])\n"
        "    s.sendto(data, ('198.18.0.1' if i % 2 else '255.255.255.255', 67))\n"
    )
    netlab.python(attacker, storm)
    from tests.integration.netboot.test_dhcp_clients import udhcpc

    assert udhcpc(netlab, netlab.clients[0]) is not None
    assert manager.poll() is None
    log = netlab.manager_log()
    assert "malformed packet" in log
    assert "peer=198.18.0.30" in log
    assert "Traceback" not in log


def test_option43_matches_dnsmasq_pxe_service_byte_for_byte(netlab: NetLab) -> None:
    """The anchor: dnsmasq's ``pxe-service=0,"Raspberry Pi Boot"`` option 43 equals piman's."""
    needs_tool("dnsmasq")
    from piman.netboot.dhcp.pxe import pi_option43

    netlab.popen(
        netlab.server,
        "dnsmasq",
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--port=0",
        "--interface=eth0",
        "--bind-interfaces",
        "--no-ping",
        "--dhcp-range=198.18.0.150,198.18.0.160,1h",
        "--pxe-service=0,Raspberry Pi Boot",  # argv: no shell quotes
        f"--dhcp-leasefile={netlab.tmp / 'dnsmasq.leases'}",
        f"--pid-file={netlab.tmp / 'dnsmasq.pid'}",
    )
    time.sleep(0.5)  # dnsmasq has no readiness signal
    discover = pi_discover(PiModel.PI4, "dc:a6:32:00:00:0a", PI4_SERIAL, PI4_REV, xid=99)
    offers = _offers(netlab.raw_dhcp(netlab.clients[0], encode(discover), 3), MessageType.OFFER)
    assert len(offers) == 1
    assert offers[0][1].options.vendor_specific == pi_option43() == PI_OPTION43
