"""``netlab``: a throw-away L2 network of Linux network namespaces for integration tests.

Layout (``N`` client namespaces; every name starts with a unique prefix such as ``pl1a2b``)::

      <p>-br  (namespace holding bridge "br0")
        │ veth pairs
      <p>-srv  eth0 198.18.0.1/24       ← the manager / DHCP server under test
      <p>-c0   eth0 (no address)        ← clients: udhcpc, dhclient, hand-made raw clients …
      <p>-c1   eth0 (no address)

Use it from a test module::

    from tests.integration import netlab as lab_module
    netlab = lab_module.netlab            # the fixture: a NetLab with 3 clients

    def test_x(netlab: lab_module.NetLab) -> None:
        netlab.run(netlab.clients[0], "busybox", "udhcpc", "-i", "eth0", "-n", "-q")
        proc = netlab.start_manager({"dhcp": {...}})   # `python -m piman server` in <p>-srv

Or ``with NetLab(clients=2) as lab:`` anywhere. Everything (processes started through the lab,
namespaces, the bridge) is torn down on exit, also after failures. Needs root
(``tests.support.needs_root()`` is called by the fixture).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import free_port, needs_root, needs_tool

__all__ = ["SERVER_IP", "NetLab", "netlab"]

SERVER_IP = "198.18.0.1"
NETWORK = "198.18.0.0/24"
REPO = Path(__file__).resolve().parents[2]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


class NetLab:
    """Namespaces joined by a bridge that lives in its own namespace (see the module docstring)."""

    def __init__(self, clients: int = 3, prefix: str | None = None) -> None:
        self.prefix = prefix or "pl" + secrets.token_hex(2)
        self.bridge_ns = f"{self.prefix}-br"
        self.server = f"{self.prefix}-srv"
        self.clients = [f"{self.prefix}-c{i}" for i in range(clients)]
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        self._procs: list[subprocess.Popen[bytes]] = []
        self._made: list[str] = []

    # --- set-up and tear-down --------------------------------------------------------------

    def __enter__(self) -> NetLab:
        try:
            self._up()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _up(self) -> None:
        for ns in (self.bridge_ns, self.server, *self.clients):
            _ip("netns", "add", ns)
            self._made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge_ns, "link", "set", "br0", "up")
        for i, ns in enumerate((self.server, *self.clients)):
            port = f"p{i}"
            _ip(
                "-n",
                ns,
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                port,
                "netns",
                self.bridge_ns,
            )
            _ip("-n", self.bridge_ns, "link", "set", port, "master", "br0", "up")
            _ip(
                "-n",
                ns,
                "link",
                "set",
                "eth0",
                "address",
                self.client_mac(i - 1) if i else "02:00:00:00:00:01",
                "up",
            )
        _ip("-n", self.server, "addr", "add", f"{SERVER_IP}/24", "dev", "eth0")

    def close(self) -> None:
        """Stop every process started through the lab, delete the namespaces."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self._procs.clear()
        for ns in reversed(self._made):
            # Kill stragglers (e.g. a dhclient that daemonised) before deleting the namespace.
            pids = subprocess.run(
                ["ip", "netns", "pids", ns], capture_output=True, text=True, check=False
            ).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        self._made.clear()

    # --- helpers ---------------------------------------------------------------------------

    @staticmethod
    def client_mac(index: int) -> str:
        """The MAC of ``clients[index]``'s eth0 (locally administered, stable)."""
        return f"02:00:00:00:01:{index:02x}"

    def run(
        self,
        ns: str,
        *cmd: str,
        check: bool = True,
        timeout: float = 60,
        input: bytes | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in namespace ``ns`` and wait for it; output captured as text."""
        return subprocess.run(
            ["ip", "netns", "exec", ns, *cmd],
            check=check,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=None if input is None else input.decode(),
        )

    def popen(self, ns: str, *cmd: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start ``cmd`` in ``ns``; the lab kills it on close."""
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], **kwargs)
        self._procs.append(proc)
        return proc

    def python(self, ns: str, code: str, *args: str, timeout: float = 60) -> str:
        """Run a Python snippet (with the repo importable) in ``ns``; its stdout."""
        env_path = f"{REPO}:{REPO / 'src'}"
        result = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                ns,
                "env",
                f"PYTHONPATH={env_path}",
                sys.executable,
                "-c",
                code,
                *args,
            ],
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise AssertionError(f"python in {ns} failed:\n{result.stderr}")
        return result.stdout

    def write_config(self, overrides: dict[str, Any], name: str = "piman.yaml") -> Path:
        """A manager config for the server namespace (``overrides`` merged per top-level key)."""
        data_dir = self.tmp / "data"
        config: dict[str, Any] = {
            "manager": {
                "address": SERVER_IP,
                "interface": "eth0",
                "network": NETWORK,
                "data_dir": str(data_dir),
                "http": f"127.0.0.1:{free_port()}",
                "log_level": "DEBUG",
            },
            "dhcp": {"mode": "authoritative", "listen": "0.0.0.0:67"},
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        path = self.tmp / name
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        return path

    def start_manager(
        self, overrides: dict[str, Any] | None = None, *, config: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """``python -m piman server -c CONFIG`` in the server namespace; returns once DHCP is up.

        DHCP is up when something listens on UDP port 67 in the namespace. stdout/stderr go to
        ``<tmp>/manager.log`` (read it with :meth:`manager_log`).
        """
        path = config or self.write_config(overrides or {})
        log = (self.tmp / "manager.log").open("ab")
        proc = self.popen(
            self.server,
            sys.executable,
            "-m",
            "piman",
            "server",
            "--config",
            str(path),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"manager exited early:\n{self.manager_log()}")
            out = self.run(self.server, "ss", "-Hlun", "sport", "= :67", check=False).stdout
            if out.strip():
                return proc
            time.sleep(0.2)
        raise AssertionError(f"manager did not start DHCP in 30 s:\n{self.manager_log()}")

    def raw_dhcp(self, ns: str, payload: bytes, seconds: float = 3.0) -> list[dict[str, str]]:
        """Send ``payload`` from ``ns`` as a raw broadcast frame; the DHCP replies seen there.

        See :func:`raw_exchange` (it runs inside the namespace).
        """
        code = (
            "import json, sys\n"
            "from tests.integration.netlab import raw_exchange\n"
            "print(json.dumps(raw_exchange('eth0', sys.argv[1], float(sys.argv[2]))))\n"
        )
        out = self.python(ns, code, payload.hex(), str(seconds), timeout=seconds + 30)
        result: list[dict[str, str]] = json.loads(out)
        return result

    def manager_log(self) -> str:
        path = self.tmp / "manager.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def address_of(self, ns: str, dev: str = "eth0") -> str | None:
        """The first IPv4 address on ``dev`` in ``ns`` (without prefix length), or None."""
        out = self.run(ns, "ip", "-4", "-o", "addr", "show", "dev", dev).stdout.split()
        if "inet" not in out:
            return None
        return out[out.index("inet") + 1].split("/")[0]


@pytest.fixture
def netlab() -> Iterator[NetLab]:
    """A :class:`NetLab` with three client namespaces, torn down after the test."""
    needs_root()
    needs_tool("ip", "ss")
    with NetLab(clients=3) as lab:
        yield lab


# --- a raw DHCP client (runs inside a namespace through NetLab.raw_dhcp) -------------------------

ETH_P_IP = 0x0800


def _checksum(header: bytes) -> int:
    total = sum(int.from_bytes(header[i : i + 2], "big") for i in range(0, len(header), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def dhcp_frame(payload: bytes, src_mac: bytes) -> bytes:
    """Ethernet broadcast frame: IPv4 0.0.0.0:68 → 255.255.255.255:67 carrying ``payload``."""
    udp = (68).to_bytes(2, "big") + (67).to_bytes(2, "big")
    udp += (8 + len(payload)).to_bytes(2, "big") + b"\0\0" + payload
    ip = bytearray(20)
    ip[0], ip[8], ip[9] = 0x45, 64, 17
    ip[2:4] = (20 + len(udp)).to_bytes(2, "big")
    ip[12:16], ip[16:20] = bytes(4), b"\xff\xff\xff\xff"
    ip[10:12] = _checksum(bytes(ip)).to_bytes(2, "big")
    return b"\xff" * 6 + src_mac + ETH_P_IP.to_bytes(2, "big") + bytes(ip) + udp


def raw_exchange(iface: str, payload_hex: str, seconds: float) -> list[dict[str, str]]:
    """Send one DHCP message as a raw broadcast frame; every DHCP reply seen in ``seconds``.

    Each reply: ``dst_mac``, ``src_ip``, ``dst_ip`` and the DHCP ``payload`` (hex). Replies are
    read from an AF_PACKET socket, so unicast-to-MAC replies to an unconfigured client are seen.
    """
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
    sock.bind((iface, 0))
    mac = sock.getsockname()[4]
    sock.send(dhcp_frame(bytes.fromhex(payload_hex), mac))
    sock.settimeout(0.2)
    replies: list[dict[str, str]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            frame = sock.recv(4096)
        except TimeoutError:
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        if ip[9] != 17 or int.from_bytes(ip[ihl + 2 : ihl + 4], "big") != 68:
            continue
        replies.append(
            {
                "dst_mac": frame[0:6].hex(":"),
                "src_ip": socket.inet_ntoa(ip[12:16]),
                "dst_ip": socket.inet_ntoa(ip[16:20]),
                "payload": ip[ihl + 8 :].hex(),
            }
        )
    sock.close()
    return replies
