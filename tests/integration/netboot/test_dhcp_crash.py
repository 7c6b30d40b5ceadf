"""``kill -9`` of the DHCP server in the middle of a stream of DORAs never leads to one address
being handed to two MACs, before or after the restart (the lease journal's promise)."""

from __future__ import annotations

import random
import time
from collections import defaultdict

from tests.integration import netlab as lab_module

NetLab = lab_module.NetLab
netlab = lab_module.netlab

# A relay-style client (giaddr set, so replies come back unicast to port 67): DISCOVER, then
# REQUEST what was offered, for one MAC after the other, 8 in flight; every OFFER and ACK seen
# is appended to a file at once. It runs for a fixed time whatever the server does.
CLIENT = r"""
import os, socket, sys, time
from ipaddress import IPv4Address
from piman.netboot.dhcp.packets import DhcpPacket, MessageType, Options, decode, encode
out, first, count, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("198.18.0.2", 67))
s.settimeout(0.05)
server, giaddr = ("198.18.0.1", 67), IPv4Address("198.18.0.2")
log = open(out, "a", buffering=1)
def send(i, mtype, **opts):
    mac = (0x020000100000 + i).to_bytes(6, "big")
    p = DhcpPacket(op=1, xid=i, chaddr=mac, giaddr=giaddr,
                   options=Options(message_type=mtype, **opts))
    s.sendto(encode(p), server)
pending = {}  # xid -> (state, sent_at)
nxt, end = first, time.monotonic() + seconds
while time.monotonic() < end:
    now = time.monotonic()
    for xid, (state, at) in list(pending.items()):
        if now - at > 0.5:
            del pending[xid]  # unanswered (server down): give up on this MAC
    while len(pending) < 8 and nxt < first + count:
        send(nxt, MessageType.DISCOVER); pending[nxt] = ("discover", now); nxt += 1
    try:
        data = s.recv(2048)
    except TimeoutError:
        if nxt >= first + count and not pending:
            time.sleep(0.05)
        continue
    p = decode(data)
    mac = p.mac
    if p.message_type is MessageType.OFFER:
        log.write(f"OFFER {mac} {p.yiaddr}\n")
        send(p.xid, MessageType.REQUEST, requested_ip=p.yiaddr,
             server_id=p.options.server_id)
        pending[p.xid] = ("request", time.monotonic())
    elif p.message_type is MessageType.ACK:
        log.write(f"ACK {mac} {p.yiaddr}\n")
        pending.pop(p.xid, None)
    elif p.message_type is MessageType.NAK:
        log.write(f"NAK {mac} -\n")
        pending.pop(p.xid, None)
"""


def test_kill_9_mid_stream_never_hands_one_address_to_two_macs(netlab: NetLab) -> None:
    client_ns = netlab.clients[0]
    netlab.run(client_ns, "ip", "addr", "add", "198.18.0.2/24", "dev", "eth0")
    # The pool guard is lifted: 300 new MACs in a few seconds is what this test is about.
    config = netlab.write_config(
        {
            "manager": {"log_level": "INFO"},
            "dhcp": {"pool": "198.18.0.20-198.18.0.250", "new_leases_per_minute": 0},
        }
    )
    out = netlab.tmp / "seen.txt"
    rounds = 3
    for round_ in range(rounds):
        manager = netlab.start_manager(config=config)
        client = netlab.popen(
            client_ns,
            "env",
            f"PYTHONPATH={lab_module.REPO}",
            lab_module.sys.executable,
            "-c",
            CLIENT,
            str(out),
            str(round_ * 60),
            "60",
            "3",
        )
        time.sleep(random.uniform(0.3, 1.2))
        manager.kill()  # SIGKILL at an arbitrary moment of the stream
        manager.wait(timeout=10)
        client.wait(timeout=30)
    # One more round on a surviving server: earlier MACs come back, new ones arrive.
    before = len(out.read_text().splitlines())
    netlab.start_manager(config=config)
    client = netlab.popen(
        client_ns,
        "env",
        f"PYTHONPATH={lab_module.REPO}",
        lab_module.sys.executable,
        "-c",
        CLIENT,
        str(out),
        "0",
        "200",  # the 180 MACs of the killed rounds, then 20 new ones: the pool holds all 200
        "4",
    )
    client.wait(timeout=30)

    owners: dict[str, set[str]] = defaultdict(set)
    answered = 0
    for line in out.read_text().splitlines():
        kind, mac, ip = line.split()
        if kind in ("OFFER", "ACK"):
            owners[ip].add(mac)
            answered += 1
    assert answered > 100, "the stream hardly got answers: the test proves nothing"
    shared = {ip: macs for ip, macs in owners.items() if len(macs) > 1}
    assert shared == {}
    lines = [line.split() for line in out.read_text().splitlines()]
    acked = {mac: ip for kind, mac, ip in lines[:before] if kind == "ACK"}
    seen = {mac for _, mac, _ in lines[:before]}
    last = {mac: ip for kind, mac, ip in lines[before:] if kind == "ACK"}
    # Every MAC acknowledged before one of the kill -9s gets the same address back.
    back = {mac: last[mac] for mac in acked if mac in last}
    assert back, "no earlier client came back: the test proves nothing"
    assert back == {mac: acked[mac] for mac in back}
    # MACs the killed servers never saw get addresses too.
    assert set(last) - seen
    assert "Traceback" not in netlab.manager_log()
