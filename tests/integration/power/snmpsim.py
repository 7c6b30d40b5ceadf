"""snmpsim (Debian's ``snmpsimd``) as a fake PoE switch on 127.0.0.1, and net-snmp helpers.

Each community is one ``<community>.snmprec`` data file; settable OIDs use the ``writecache``
variation, so a SET sticks and a GET reads it back. As root, snmpsimd drops privileges to
``nobody``: the directories live under a world-readable temporary directory.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import free_udp_port

RFC = "1.3.6.1.2.1.105.1.1.1"
NETGEAR = "1.3.6.1.4.1.4526.11.16.1.1.1"
TPLINK = "1.3.6.1.4.1.11863.6.56.1.1.2.1.1"
CISCO_MW = "1.3.6.1.4.1.9.9.402.1.2.1.9"

V3_USER = "piman"
V3_AUTH = "auth-key-123"
V3_PRIV = "priv-key-456"


def _oid_key(line: str) -> tuple[int, ...]:
    return tuple(int(p) for p in line.split("|", 1)[0].split("."))


def rfc3621_records(
    ports: int,
    *,
    group: int = 1,
    offset: int = 0,
    base: str = RFC,
    detection: dict[int, int] | None = None,
) -> list[str]:
    """AdminEnable (settable, on) and DetectionStatus (deliveringPower) for each port."""
    lines = []
    for p in range(1, ports + 1):
        i = p + offset
        lines.append(f"{base}.3.{group}.{i}|2:writecache|value=1")
        lines.append(f"{base}.6.{group}.{i}|2|{(detection or {}).get(p, 3)}")
    return lines


def stuck_records(ports: int) -> list[str]:
    """A switch that accepts every SET of AdminEnable and keeps its state: snmpsim's ``delay``
    variation (no wait) answers a SET with success, but without ``writecache`` nothing is stored,
    so a GET still reads 1 (on); DetectionStatus is deliveringPower."""
    lines = []
    for p in range(1, ports + 1):
        lines.append(f"{RFC}.3.1.{p}|2:delay|value=1,wait=0")
        lines.append(f"{RFC}.6.1.{p}|2|3")
    return lines


def tplink_records(ports: int) -> list[str]:
    lines = []
    for p in range(1, ports + 1):
        lines.append(f"{TPLINK}.2.{p}|2:writecache|value=1")
        lines.append(f"{TPLINK}.7.{p}|2|{40 + p}")  # 0.1 W
    return lines


def cisco_records(ports: int) -> list[str]:
    return rfc3621_records(ports) + [f"{CISCO_MW}.1.{p}|2|{3000 + p}" for p in range(1, ports + 1)]


@dataclass
class Snmpsim:
    """A running snmpsimd."""

    root: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    communities: set[str] = field(default_factory=set)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "snmpsim.log"

    def sets(self) -> list[tuple[str, str]]:
        """Every SET the agent received, as (OID, value) in order."""
        out = []
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        for line in text.splitlines():
            m = re.search(r"Request var-binds: (.*), flags: EXACT, SET", line)
            if m:
                for vb in m.group(1).split(", "):
                    oid, _, value = vb.partition("=")
                    out.append((oid.strip(), value.strip()))
        return out

    def requests(self, community: str) -> list[tuple[str, str]]:
        """(kind, OIDs) of every request the agent served from ``community``'s data, in order."""
        out = []
        current = None
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        for line in text.splitlines():
            m = re.search(r"Using \S*/([^/\s]+)\.snmprec controller", line)
            if m:
                current = m.group(1)
                continue
            m = re.search(r"Request var-binds: (.*), flags: \w+, (\w+)$", line)
            if m and current == community:
                oids = ",".join(vb.partition("=")[0].strip() for vb in m.group(1).split(", "))
                out.append((m.group(2), oids))
        return out

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def start_snmpsim(data: dict[str, list[str]], *, v3: bool | tuple[str, str] = True) -> Snmpsim:
    """Start snmpsimd serving one data file per community (and a v3 user); wait until it answers."""
    root = Path(tempfile.mkdtemp(prefix="piman-snmpsim-"))
    os.chmod(root, 0o755)
    (root / "data").mkdir()
    (root / "cache").mkdir()
    os.chmod(root / "cache", 0o777)
    for community, lines in data.items():
        path = root / "data" / f"{community}.snmprec"
        path.write_text("\n".join(sorted(lines, key=_oid_key)) + "\n")
        os.chmod(path, 0o644)
    sim = Snmpsim(root, free_udp_port(), communities=set(data))
    argv = [
        "snmpsimd",
        f"--data-dir={root / 'data'}",
        f"--cache-dir={root / 'cache'}",
        f"--agent-udpv4-endpoint=127.0.0.1:{sim.port}",
        f"--logging-method=file:{sim.log}",
    ]
    if os.geteuid() == 0:
        argv += ["--process-user=nobody", "--process-group=nogroup"]
        sim.log.touch()
        os.chmod(sim.log, 0o666)
    if v3:
        auth, priv = v3 if isinstance(v3, tuple) else ("SHA256", "AES256")
        argv += [
            f"--v3-user={V3_USER}",
            f"--v3-auth-key={V3_AUTH}",
            f"--v3-auth-proto={auth}",
            f"--v3-priv-key={V3_PRIV}",
            f"--v3-priv-proto={priv}",
        ]
    sim.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    community = next(iter(data))
    oid = sorted(data[community], key=_oid_key)[0].split("|", 1)[0]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if sim.proc.poll() is not None:
            sim.stop()
            raise RuntimeError("snmpsimd exited at start")
        if snmpget(sim.port, community, oid, timeout=0.3) is not None:
            return sim
    sim.stop()
    raise RuntimeError("snmpsimd did not answer within 20 s")


def snmpget(port: int, community: str, oid: str, *, timeout: float = 1.0) -> str | None:
    """net-snmp's ``snmpget -Oqv``: the value as text, None on no answer."""
    result = subprocess.run(
        [
            "snmpget",
            "-v2c",
            "-c",
            community,
            "-Oqv",
            "-t",
            str(timeout),
            "-r",
            "0",
            f"127.0.0.1:{port}",
            oid,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        return None
    return result.stdout.strip()


def snmpset(port: int, community: str, oid: str, value: int) -> None:
    subprocess.run(
        ["snmpset", "-v2c", "-c", community, "-Oqv", f"127.0.0.1:{port}", oid, "i", str(value)],
        capture_output=True,
        check=True,
    )
