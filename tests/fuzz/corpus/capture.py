"""Re-record the fuzz seed corpus from real clients.

As root: ``python -m tests.fuzz.corpus.capture [dhcp|tftp|agent …]``.

Everything happens inside network namespaces this script makes and deletes (addresses in
198.18.0.0/15, loopback of a private namespace): never on the host's interfaces.

- ``dhcp/``: what busybox ``udhcpc`` and ISC ``dhclient`` send (DISCOVER, REQUEST, RELEASE) to
  a dnsmasq that answers them, and dnsmasq's replies, captured with an ``AF_PACKET`` socket on
  the server's interface: UDP payloads, one file each.
- ``tftp/``: what tftp-hpa's ``tftp``, ``atftp``, ``curl tftp://`` and ``busybox tftp`` send to
  tftpd-hpa (requests with and without options, ACKs, errors) and the server's OACK and DATA,
  captured on the namespace's loopback.
- ``agent/``: the request heads ``curl``, ``wget``, ``busybox wget`` and Python's ``urllib``
  send to a scrape target, read by a listener that records the bytes it gets.

The files are small (a few KiB in all) and committed; the fuzz tests mutate them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.integration.netlab import NetLab

HERE = Path(__file__).parent

_SNIFF = r"""
import json, socket, struct, sys, time
iface, seconds, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(3))
s.bind((iface, 0))
s.settimeout(0.2)
print("ready", flush=True)
end = time.monotonic() + seconds
with open(out, "w") as f:
    while time.monotonic() < end:
        try:
            frame, addr = s.recvfrom(65535)
        except socket.timeout:
            continue
        if addr[2] == 4 and iface == "lo":  # loopback shows each packet twice
            continue
        if frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        ihl = (ip[0] & 15) * 4
        if ip[9] != 17:
            continue
        sport, dport, length = struct.unpack("!HHH", ip[ihl:ihl + 6])
        payload = ip[ihl + 8: ihl + length]
        f.write(json.dumps({"sport": sport, "dport": dport, "hex": payload.hex()}) + "\n")
        f.flush()
"""


def _sniff(lab: NetLab, ns: str, iface: str, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    proc = lab.popen(ns, sys.executable, "-c", _SNIFF, iface, str(seconds), str(out),
                     stdout=subprocess.PIPE)  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"ready"
    return proc


def _records(path: Path) -> list[tuple[int, int, bytes]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line]
    return [(r["sport"], r["dport"], bytes.fromhex(r["hex"])) for r in rows]


def _write(folder: Path, name: str, data: bytes, seen: set[bytes]) -> None:
    if data in seen:
        return
    seen.add(data)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


_DHCP_TYPES = {1: "discover", 2: "offer", 3: "request", 4: "decline", 5: "ack", 6: "nak",
               7: "release", 8: "inform"}  # fmt: skip


def _dhcp_type(payload: bytes) -> str:
    i = 240
    while i + 1 < len(payload):
        code = payload[i]
        if code == 0:
            i += 1
            continue
        if code == 255:
            break
        size = payload[i + 1]
        if code == 53 and size == 1:
            return _DHCP_TYPES.get(payload[i + 2], "type")
        i += 2 + size
    return "bootp"


def capture_dhcp(out: Path) -> None:
    with NetLab(clients=2, prefix="fzcap") as lab:
        leases = lab.tmp / "dnsmasq.leases"
        lab.popen(
            lab.server, "dnsmasq", "--keep-in-foreground", "--port=0", "--interface=eth0",
            "--bind-interfaces", "--no-ping", "--dhcp-authoritative",
            "--dhcp-range=198.18.0.100,198.18.0.150,1h", f"--dhcp-leasefile={leases}",
            '--pxe-service=0,"Raspberry Pi Boot"', "--dhcp-option=3,198.18.0.1",
        )  # fmt: skip
        time.sleep(1)
        pcap = lab.tmp / "dhcp.jsonl"
        sniffer = _sniff(lab, lab.server, "eth0", 40, pcap)
        script = lab.tmp / "udhcpc.sh"
        # The clients configure the address they get, so that their RELEASE can leave.
        script.write_text('#!/bin/sh\n[ "$1" = bound ] && ip addr add "$ip/24" dev "$interface"\n'
                          "exit 0\n")  # fmt: skip
        script.chmod(0o755)
        udhcpc = ["busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-R", "-t", "3", "-T", "2"]
        lab.run(lab.clients[0], *udhcpc, "-s", str(script),
                "-x", "hostname:rack1-02", "-V", "udhcp-fuzz", check=False)  # fmt: skip
        conf = lab.tmp / "dhclient.conf"
        conf.write_text("timeout 15;\nretry 1;\nrequest subnet-mask, routers, domain-name;\n"
                        'send host-name "lab-pi";\n')  # fmt: skip
        hook = lab.tmp / "dhclient.sh"
        hook.write_text('#!/bin/sh\ncase "$reason" in BOUND) ip addr add "$new_ip_address/24" '
                        'dev "$interface";; esac\nexit 0\n')  # fmt: skip
        hook.chmod(0o755)
        dhclient = ["dhclient", "-cf", str(conf), "-sf", str(hook), "-lf",
                    str(lab.tmp / "c1.leases"), "-pf", str(lab.tmp / "c1.pid")]  # fmt: skip
        lab.run(lab.clients[1], *dhclient, "-1", "eth0", check=False)
        lab.run(lab.clients[1], *dhclient, "-r", "eth0", check=False)  # RELEASE
        sniffer.wait(timeout=60)
        seen: set[bytes] = set()
        counts: dict[str, int] = {}
        for sport, dport, payload in _records(pcap):
            if dport == 67:
                who = "udhcpc" if payload[28:34] == bytes.fromhex("020000000100") else "dhclient"
            elif sport == 67:
                who = "dnsmasq"
            else:
                continue
            kind = _dhcp_type(payload)
            n = counts[f"{who}-{kind}"] = counts.get(f"{who}-{kind}", 0) + 1
            _write(out / "dhcp", f"{who}-{kind}-{n}.bin", payload, seen)


def capture_tftp(out: Path) -> None:
    with NetLab(clients=0, prefix="fzcap") as lab:
        ns = lab.server
        root = lab.tmp / "tftproot"
        root.mkdir()
        (root / "start4.elf").write_bytes(bytes(range(256)) * 12)  # 3 KiB: a few blocks
        (root / "config.txt").write_text("arm_64bit=1\nenable_uart=1\n")
        lab.popen(ns, "in.tftpd", "-L", "-a", "127.0.0.1:6969", "-s", str(root), "-u", "root")
        time.sleep(1)
        pcap = lab.tmp / "tftp.jsonl"
        sniffer = _sniff(lab, ns, "lo", 40, pcap)
        dest = lab.tmp / "got"
        clients = [
            ["tftp", "127.0.0.1", "6969", "-m", "binary", "-c", "get", "start4.elf", str(dest)],
            ["tftp", "127.0.0.1", "6969", "-m", "ascii", "-c", "get", "config.txt", str(dest)],
            ["tftp", "127.0.0.1", "6969", "-c", "get", "missing.bin", str(dest)],
            ["atftp", "--option", "blksize 1024", "--option", "tsize", "-g", "-r", "start4.elf",
             "-l", str(dest), "127.0.0.1", "6969"],
            ["atftp", "--option", "windowsize 4", "-g", "-r", "start4.elf", "-l", str(dest),
             "127.0.0.1", "6969"],
            ["curl", "-sS", "-o", str(dest), "tftp://127.0.0.1:6969/start4.elf"],
            ["curl", "-sS", "--tftp-blksize", "1468", "-o", str(dest),
             "tftp://127.0.0.1:6969/config.txt"],
            ["busybox", "tftp", "-g", "-b", "512", "-r", "start4.elf", "-l", str(dest),
             "127.0.0.1", "6969"],
            ["busybox", "tftp", "-p", "-r", "upload.bin", "-l", str(dest), "127.0.0.1", "6969"],
        ]  # fmt: skip
        for cmd in clients:
            lab.run(ns, *cmd, check=False, timeout=30)
        sniffer.wait(timeout=60)
        seen: set[bytes] = set()
        names = {1: "rrq", 2: "wrq", 3: "data", 4: "ack", 5: "error", 6: "oack"}
        counts: dict[str, int] = {}
        for _sport, _dport, payload in _records(pcap):
            kind = names.get(int.from_bytes(payload[:2], "big"), "other")
            if kind in ("data", "oack") and counts.get(kind, 0) >= 4:
                continue  # a few of the server's are enough
            if kind == "ack" and counts.get(kind, 0) >= 12:
                continue
            n = counts[kind] = counts.get(kind, 0) + 1
            _write(out / "tftp", f"{kind}-{n}.bin", payload, seen)


def capture_agent(out: Path) -> None:
    """The request heads real scrapers send (a listener in a private namespace records them)."""
    with NetLab(clients=0, prefix="fzcap") as lab:
        ns = lab.server
        record = lab.tmp / "agent.jsonl"
        listener = r"""
import json, socket, sys
srv = socket.socket(); srv.bind(("127.0.0.1", 9110)); srv.listen(8)
print("ready", flush=True)
with open(sys.argv[1], "w") as f:
    while True:
        conn, _ = srv.accept()
        conn.settimeout(5)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        f.write(json.dumps({"hex": data.hex()}) + "\n"); f.flush()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
        conn.close()
"""
        proc = lab.popen(ns, sys.executable, "-c", listener, str(record), stdout=subprocess.PIPE)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        url = "http://127.0.0.1:9110"
        token = "pm_agent_token_0123456789abcdef"
        clients = [
            ["curl", "-sS", f"{url}/metrics"],
            ["curl", "-sS", "--compressed", "-H", f"Authorization: Bearer {token}",
             f"{url}/metrics"],
            ["curl", "-sS", "-I", f"{url}/events"],
            ["curl", "-sS", "--http1.0", f"{url}/"],
            ["curl", "-sS", "-H", "Accept: application/openmetrics-text;version=1.0.0,"
             "text/plain;version=0.0.4;q=0.5,*/*;q=0.1", "-H", "X-Prometheus-Scrape-Timeout-"
             "Seconds: 10", f"{url}/metrics?name[]=node_load1"],
            ["wget", "-q", "-O", "-", f"{url}/metrics"],
            ["busybox", "wget", "-q", "-O", "-", "--header", f"Authorization: Bearer {token}",
             f"{url}/events"],
            [sys.executable, "-c", "import urllib.request as u; u.urlopen(u.Request("
             f"'{url}/events', headers={{'Authorization': 'Bearer {token}'}})).read()"],
        ]  # fmt: skip
        for cmd in clients:
            lab.run(ns, *cmd, check=False, timeout=30)
        seen: set[bytes] = set()
        names = ["curl", "curl-auth-gzip", "curl-head", "curl-http10", "curl-prometheus",
                 "wget", "busybox-wget", "python-urllib"]  # fmt: skip
        rows = [json.loads(line) for line in record.read_text().splitlines() if line]
        for name, row in zip(names, rows, strict=False):
            _write(out / "agent", f"{name}.http", bytes.fromhex(row["hex"]), seen)


def main() -> None:
    for tool in ("ip", "dnsmasq", "busybox", "dhclient", "in.tftpd", "tftp", "atftp", "curl"):
        if shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin") is None:
            raise SystemExit(f"needs {tool}")
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp)
        kinds = sys.argv[1:] or ["dhcp", "tftp", "agent"]
        for kind in kinds:
            {"dhcp": capture_dhcp, "tftp": capture_tftp, "agent": capture_agent}[kind](staged)
        for kind in kinds:
            shutil.rmtree(HERE / kind, ignore_errors=True)
            shutil.copytree(staged / kind, HERE / kind)
            files = sorted((HERE / kind).iterdir())
            print(f"{kind}: {len(files)} files, {sum(f.stat().st_size for f in files)} bytes")


if __name__ == "__main__":
    main()
