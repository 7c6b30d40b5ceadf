"""Power-cycle 48 PoE ports: piman vs a loop of net-snmp ``snmpset`` calls (what PiSeduce does).

The switch is snmpsim (Debian's ``snmpsimd``) on 127.0.0.1 serving an RFC 3621 port table with
48 settable ``pethPsePortAdminEnable`` ports, behind a counting UDP proxy, so both sides are
measured the same way: SNMP requests sent (and replies received) through the proxy, and wall
time for the whole cycle (off every port, wait ``--off-seconds``, on every port).

- anchor: ``snmpset`` off for each port in turn, one wait, ``snmpset`` on for each port in turn
  (PiSeduce runs one ``snmpset`` subprocess per port and state; this is the kindest ordering);
  and the same loop followed by one ``snmpget`` per port, to check what piman checks.
- piman: ``PowerController.run("cycle", …)`` on the same 48 ports — concurrent requests, read-back
  of AdminEnable and DetectionStatus after every set — first with no stagger (one batch of 48),
  then with the demo's stagger (batches of 8 every 1 s).

Usage: python bench/power.py [--off-seconds 1] [--ports 48]
"""

from __future__ import annotations

import argparse
import asyncio
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration.power.snmpsim import RFC, rfc3621_records, snmpget, start_snmpsim

from piman.config.models import Config
from piman.power.controller import PowerController

COMMUNITY = "bench"


class CountingProxy:
    """A UDP relay 127.0.0.1:port → upstream that counts datagrams each way."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.requests = 0
        self.replies = 0
        self._peers: dict[tuple[str, int], socket.socket] = {}
        self._back: dict[socket.socket, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def reset(self) -> None:
        self.requests = self.replies = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.sock, *self._back], [], [], 0.1)
            for s in ready:
                data, addr = s.recvfrom(65535)
                if s is self.sock:
                    up = self._peers.get(addr)
                    if up is None:
                        up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                        up.bind(("127.0.0.1", 0))
                        self._peers[addr] = up
                        self._back[up] = addr
                    self.requests += 1
                    up.sendto(data, self.upstream)
                else:
                    self.replies += 1
                    self.sock.sendto(data, self._back[s])

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for s in [self.sock, *self._back]:
            s.close()


@dataclass
class Result:
    name: str
    seconds: float
    requests: int
    replies: int
    verified: bool


def anchor(port: int, ports: int, off_seconds: float, verify: bool = False) -> float:
    def snmpset(p: int, value: int) -> None:
        subprocess.run(
            [
                "snmpset",
                "-v2c",
                "-c",
                COMMUNITY,
                f"127.0.0.1:{port}",
                f"{RFC}.3.1.{p}",
                "i",
                str(value),
            ],
            check=True,
            capture_output=True,
        )

    t0 = time.perf_counter()
    for p in range(1, ports + 1):
        snmpset(p, 2)
    time.sleep(off_seconds)
    for p in range(1, ports + 1):
        snmpset(p, 1)
    if verify:  # what it takes to check the result with net-snmp: one snmpget per port
        for p in range(1, ports + 1):
            subprocess.run(
                [
                    "snmpget",
                    "-v2c",
                    "-c",
                    COMMUNITY,
                    "-Oqv",
                    f"127.0.0.1:{port}",
                    f"{RFC}.3.1.{p}",
                    f"{RFC}.6.1.{p}",
                ],
                check=True,
                capture_output=True,
            )
    return time.perf_counter() - t0


async def piman_cycle(
    port: int, ports: int, off_seconds: float, batch_size: int, batch_interval: float
) -> tuple[float, bool]:
    config = Config.model_validate(
        {
            "manager": {"address": "198.18.0.1"},
            "switches": [
                {
                    "name": "rack1",
                    "address": "198.18.0.254",
                    "ports": ports,
                    "off_seconds": off_seconds,
                    "batch_size": batch_size,
                    "batch_interval": batch_interval,
                    "snmp": {"host": "127.0.0.1", "port": port, "community": COMMUNITY},
                }
            ],
        }
    )
    controller = PowerController(config)
    targets = [controller.target("rack1", p) for p in range(1, ports + 1)]
    try:
        t0 = time.perf_counter()
        outcomes = await controller.run("cycle", targets)
        elapsed = time.perf_counter() - t0
    finally:
        await controller.close()
    failed = [o for o in outcomes if not o.ok]
    if failed:
        raise SystemExit(f"piman failed: {failed[0].error}")
    return elapsed, all(o.reading and o.reading.delivering for o in outcomes)


def piman_cli(port: int, ports: int, off_seconds: float, root: Path) -> float:
    """The same cycle as a user runs it: a whole `piman power cycle` process, store included."""
    config = root / "piman.yaml"
    config.write_text(
        f"manager: {{address: 198.18.0.1, data_dir: {root}}}\n"
        "switches:\n"
        f"  - {{name: rack1, address: 198.18.0.254, ports: {ports}, off_seconds: {off_seconds},\n"
        f"     batch_size: {ports}, snmp: {{host: 127.0.0.1, port: {port}, "
        f"community: {COMMUNITY}}}}}\n"
    )
    targets = [f"rack1:{p}" for p in range(1, ports + 1)]
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "piman", "power", "cycle", *targets, "-c", str(config)],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ports", type=int, default=48)
    parser.add_argument("--off-seconds", type=float, default=1.0)
    args = parser.parse_args()

    sim = start_snmpsim({COMMUNITY: rfc3621_records(args.ports)}, v3=False)
    proxy = CountingProxy(("127.0.0.1", sim.port))
    results: list[Result] = []
    try:
        proxy.reset()
        seconds = anchor(proxy.port, args.ports, args.off_seconds)
        results.append(
            Result("snmpset loop (anchor)", seconds, proxy.requests, proxy.replies, False)
        )
        proxy.reset()
        seconds = anchor(proxy.port, args.ports, args.off_seconds, verify=True)
        results.append(
            Result("snmpset loop + snmpget", seconds, proxy.requests, proxy.replies, True)
        )
        for name, size, interval in (
            ("piman, one batch", args.ports, 0.0),
            ("piman, stagger 8 / 1 s", 8, 1.0),
        ):
            proxy.reset()
            seconds, verified = asyncio.run(
                piman_cycle(proxy.port, args.ports, args.off_seconds, size, interval)
            )
            time.sleep(0.3)  # let the proxy count the last replies
            results.append(Result(name, seconds, proxy.requests, proxy.replies, verified))
        proxy.reset()
        with tempfile.TemporaryDirectory() as tmp:
            seconds = piman_cli(proxy.port, args.ports, args.off_seconds, Path(tmp))
        time.sleep(0.3)
        results.append(
            Result("piman CLI process, 1 batch", seconds, proxy.requests, proxy.replies, True)
        )
        on = [snmpget(sim.port, COMMUNITY, f"{RFC}.3.1.{p}") for p in range(1, args.ports + 1)]
        assert all(v == "1" for v in on), "a port did not end on"
    finally:
        proxy.close()
        sim.stop()

    base = results[0]
    print(f"power-cycle {args.ports} ports, off {args.off_seconds:g} s, snmpsim on loopback")
    header = (
        f"{'run':<26} {'wall s':>8} {'x anchor':>9} {'requests':>9} {'x anchor':>9} "
        f"{'replies':>8} {'read back':>10}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.name:<26} {r.seconds:>8.2f} {r.seconds / base.seconds:>9.2f} "
            f"{r.requests:>9} {r.requests / base.requests:>9.2f} {r.replies:>8} "
            f"{'yes' if r.verified else 'no':>10}"
        )
    print(
        "wall time excludes nothing: it includes the off wait; requests counted at the proxy "
        "(retransmissions included)."
    )


if __name__ == "__main__":
    main()
