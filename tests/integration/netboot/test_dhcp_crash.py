"""``kill -9`` of the DHCP server in the middle of a stream of DORAs never leads to one address
being handed to two MACs, before or after the restart (the lease journal's promise)."""

from __future__ import annotations

import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from tests.integration import netlab as lab_module

NetLab = lab_module.NetLab
netlab = lab_module.netlab

# A relay-style client (giaddr set, so replies come back unicast to port 67): DISCOVER, then
# REQUEST what was offered, 8 MACs in flight, a new MAC at most every GAP seconds (so that a
# kill lands in the middle of the stream, not after it); every OFFER and ACK seen is appended
# to a file at once. A MAC unanswered for 0.5 s starts again with a DISCOVER, TRIES times at
# most, then is given up on. It stops when every MAC is answered or given up on.
CLIENT = r"""
import socket, sys, time
from ipaddress import IPv4Address
from piman.netboot.dhcp.packets import DhcpPacket, MessageType, Options, decode, encode
out, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
gap, tries = float(sys.argv[4]), int(sys.argv[5])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("198.18.0.2", 67))
s.settimeout(0.01)
server, giaddr = ("198.18.0.1", 67), IPv4Address("198.18.0.2")
log = open(out, "a", buffering=1)
def send(i, mtype, **opts):
    mac = (0x020000100000 + i).to_bytes(6, "big")
    p = DhcpPacket(op=1, xid=i, chaddr=mac, giaddr=giaddr,
                   options=Options(message_type=mtype, **opts))
    s.sendto(encode(p), server)
pending = {}  # xid -> (sent_at, tries left)
nxt, next_new = first, 0.0
while nxt < first + count or pending:
    now = time.monotonic()
    for xid, (at, left) in list(pending.items()):
        if now - at > 0.5:
            del pending[xid]
            if left > 0:
                send(xid, MessageType.DISCOVER); pending[xid] = (now, left - 1)
    if len(pending) < 8 and nxt < first + count and now >= next_new:
        send(nxt, MessageType.DISCOVER); pending[nxt] = (now, tries)
        nxt, next_new = nxt + 1, now + gap
    try:
        data = s.recv(2048)
    except TimeoutError:
        continue
    p = decode(data)
    mac = p.mac
    if p.xid not in pending:
        continue
    if p.message_type is MessageType.OFFER:
        log.write(f"OFFER {mac} {p.yiaddr}\n")
        send(p.xid, MessageType.REQUEST, requested_ip=p.yiaddr,
             server_id=p.options.server_id)
        pending[p.xid] = (time.monotonic(), pending[p.xid][1])
    elif p.message_type is MessageType.ACK:
        log.write(f"ACK {mac} {p.yiaddr}\n")
        del pending[p.xid]
    elif p.message_type is MessageType.NAK:
        log.write(f"NAK {mac} -\n")
        del pending[p.xid]
"""

ROUND = 60  # MACs per killed round


def _client(netlab: NetLab, out: Path, first: int, count: int, gap: float, tries: int) -> Any:
    return netlab.popen(
        netlab.clients[0],
        "env",
        f"PYTHONPATH={lab_module.REPO}",
        lab_module.sys.executable,
        "-c",
        CLIENT,
        str(out),
        str(first),
        str(count),
        str(gap),
        str(tries),
    )


def _acks(out: Path) -> int:
    return sum(1 for line in out.read_text().splitlines() if line.startswith("ACK "))


def test_kill_9_mid_stream_never_hands_one_address_to_two_macs(netlab: NetLab) -> None:
    netlab.run(netlab.clients[0], "ip", "addr", "add", "198.18.0.2/24", "dev", "eth0")
    # The pool guard is lifted: 200 new MACs in a few seconds is what this test is about.
    config = netlab.write_config(
        {
            "manager": {"log_level": "INFO"},
            "dhcp": {"pool": "198.18.0.20-198.18.0.250", "new_leases_per_minute": 0},
        }
    )
    out = netlab.tmp / "seen.txt"
    out.touch()
    rounds = 3
    for round_ in range(rounds):
        manager = netlab.start_manager(config=config)
        # One new MAC every 20 ms: the round lasts at least 1.2 s, and the server is killed
        # after a random number of its ACKs, with the rest of the round still to come.
        acks, kill_after = _acks(out), random.randint(1, ROUND // 2)
        client = _client(netlab, out, round_ * ROUND, ROUND, 0.02, 0)
        deadline = time.monotonic() + 60
        while _acks(out) - acks < kill_after:
            assert client.poll() is None, "the round ended before the kill"
            assert time.monotonic() < deadline, netlab.manager_log()
            time.sleep(0.01)
        manager.kill()  # SIGKILL in the middle of the stream
        manager.wait(timeout=10)
        client.wait(timeout=60)
    before = out.read_text().splitlines()
    acked = {mac: ip for kind, mac, ip in map(str.split, before) if kind == "ACK"}
    seen = {mac for _, mac, _ in map(str.split, before)}
    assert len(seen) < rounds * ROUND, "every round ran to its end: no kill was mid-stream"

    # One more round on a surviving server: every MAC of the killed rounds comes back, then 20
    # the killed servers never saw (the pool holds all 200).
    netlab.start_manager(config=config)
    client = _client(netlab, out, 0, rounds * ROUND + 20, 0, 5)
    client.wait(timeout=120)

    lines = out.read_text().splitlines()
    owners: dict[str, set[str]] = defaultdict(set)
    for line in lines:
        kind, mac, ip = line.split()
        if kind in ("OFFER", "ACK"):
            owners[ip].add(mac)
    shared = {ip: macs for ip, macs in owners.items() if len(macs) > 1}
    assert shared == {}
    last = {mac: ip for kind, mac, ip in map(str.split, lines[len(before) :]) if kind == "ACK"}
    # Every MAC acknowledged before one of the kill -9s gets the same address back.
    assert len(acked) >= rounds
    assert {mac: last.get(mac) for mac in acked} == acked
    # MACs the killed servers never saw get addresses too, and so does every other one.
    new = {f"02:00:00:10:00:{i:02x}" for i in range(rounds * ROUND, rounds * ROUND + 20)}
    assert new.isdisjoint(seen)
    assert set(last) == {f"02:00:00:10:00:{i:02x}" for i in range(rounds * ROUND + 20)}
    assert "Traceback" not in netlab.manager_log()
