"""Pi-like clients in a netns lab: exact Pi 4 DISCOVER, Pi 3 ROM behaviour, proxy mode, garbage,
the Pi 4 REQUEST that only its MAC identifies, and per-class reply delays.

The clients are hand-made and talk through raw AF_PACKET sockets, as a Pi's boot ROM would: no
address, broadcast flag clear, so the server must unicast to the Pi's MAC (RFC 2131 §4.1).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from ipaddress import IPv4Address

from piman.fleet.models import PiModel
from piman.netboot.dhcp.packets import (
    BROADCAST_FLAG,
    DhcpPacket,
    MessageType,
    Options,
    decode,
    encode,
)
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
    # Anyone can say "RPi4": an unknown Pi is listed as discovered, and is no node (no store
    # write, no scrape target) until an operator accepts it.
    deadline = time.monotonic() + 10
    while _manager_metric(netlab, "piman_discovered_devices") != 1.0:
        assert time.monotonic() < deadline, "the Pi was never listed as discovered"
        time.sleep(0.3)
    nodes = netlab.run(
        netlab.server,
        "sqlite3",
        str(netlab.tmp / "data" / "piman.db"),
        f"select count(*) from nodes where mac = '{mac}'",
    ).stdout.strip()
    assert nodes == "0"


def _manager_metric(lab: NetLab, name: str) -> float | None:
    """One sample of the manager's own /metrics (HTTP inside the server's namespace)."""
    import yaml

    listen = yaml.safe_load((lab.tmp / "piman.yaml").read_text())["manager"]["http"]
    code = (
        "import sys, urllib.request\n"
        "print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())\n"
    )
    text = lab.python(lab.server, code, f"http://{listen}/metrics")
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def test_a_pi4_request_without_options_60_and_97_is_known_by_its_mac(netlab: NetLab) -> None:
    ns, mac = netlab.clients[0], netlab.client_mac(0)  # not a Pi OUI: only option 97 tells
    netlab.start_manager({"dhcp": {"pool": "198.18.0.100-198.18.0.110"}})
    discover = pi_discover(PiModel.PI4, mac, PI4_SERIAL, PI4_REV, xid=0x51)
    ((_, offer),) = _offers(netlab.raw_dhcp(ns, encode(discover), seconds=2), MessageType.OFFER)
    request = pi_request(discover, offer)
    bare = replace(request, options=replace(request.options, client_machine_id=None))
    assert bare.options.vendor_class is None
    assert bare.options.client_machine_id is None
    ((frame, ack),) = _offers(netlab.raw_dhcp(ns, encode(bare), seconds=2), MessageType.ACK)
    assert ack.yiaddr == offer.yiaddr
    assert ack.options.vendor_specific == PI_OPTION43
    assert ack.options.vendor_class == "PXEClient"
    assert ack.siaddr == IPv4Address("198.18.0.1")
    assert ack.options.tftp_server == "198.18.0.1"
    assert frame["dst_mac"] == mac  # unicast to the Pi's MAC, broadcast flag clear


# Sends two DISCOVERs as raw broadcast frames, one right after the other; prints the xids of the
# replies in the order they arrive (the broadcast flag is set: both replies reach this namespace).
TWO_DISCOVERS = r"""
import json, socket, sys, time
from tests.integration.netlab import ETH_P_IP, dhcp_frame
from piman.netboot.dhcp.packets import decode
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
sock.bind(("eth0", 0))
mac = sock.getsockname()[4]
for payload in sys.argv[1:3]:
    sock.send(dhcp_frame(bytes.fromhex(payload), mac))
sock.settimeout(0.2)
order, deadline = [], time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline and len(order) < 2:
    try:
        frame = sock.recv(4096)
    except TimeoutError:
        continue
    ip = frame[14:]
    ihl = (ip[0] & 0x0F) * 4
    if ip[9] == 17 and int.from_bytes(ip[ihl + 2 : ihl + 4], "big") == 68:
        order.append(decode(ip[ihl + 8 :]).xid)
print(json.dumps(order))
"""


def test_reply_delay_holds_back_the_replies_of_its_class_only(netlab: NetLab) -> None:
    ns = netlab.clients[0]
    netlab.start_manager(
        {"dhcp": {"pool": "198.18.0.100-198.18.0.110", "reply_delay": {"pi4": "2s"}}}
    )
    pi4 = pi_discover(PiModel.PI4, netlab.client_mac(0), PI4_SERIAL, PI4_REV, xid=4, broadcast=True)
    plain = DhcpPacket(
        op=1,
        xid=7,
        chaddr=bytes.fromhex("020000000909"),
        flags=BROADCAST_FLAG,
        options=Options(message_type=MessageType.DISCOVER),
    )
    out = netlab.python(ns, TWO_DISCOVERS, encode(pi4).hex(), encode(plain).hex(), "10")
    # The Pi 4 asked first, and is answered last; but it is answered.
    assert json.loads(out) == [7, 4]


def test_pi3_that_never_requests_keeps_its_offered_address(netlab: NetLab) -> None:
    needs_tool("busybox")
    pi3_mac = "b8:27:eb:00:00:07"
    netlab.start_manager(
        {
            "dhcp": {"pool": "198.18.0.100-198.18.0.101", "reply_delay": {"b8:27:eb": "0.2s"}},
            # Declared (no address): bound at OFFER time, as its ROM never sends REQUEST.
            "nodes": [{"name": "rack1-07", "mac": pi3_mac, "model": "pi3b+"}],
        }
    )
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
