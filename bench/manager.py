"""Start-up time and idle memory of `piman server` (the foundation's figures).

Starts the manager N times as a real process with a small config (16 nodes, HTTP only), measures the
wall time from exec to the first 200 on /healthz, then the resident memory after a few idle seconds.
Prints a table. Usage: python bench/manager.py [--runs 5] [--nodes 16]
"""

from __future__ import annotations

import argparse
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def config_text(data_dir: Path, port: int, nodes: int) -> str:
    lines = [
        "manager: {address: 198.18.0.1, network: 198.18.0.0/16, "
        f'data_dir: {data_dir}, http: "127.0.0.1:{port}"}}',
        "switches: [{name: rack1, address: 198.18.0.254, driver: none, ports: 1024}]",
        "nodes:",
    ]
    for i in range(nodes):
        lines.append(
            f"  - {{name: n{i:04d}, switch: rack1, port: {i + 1}, "
            f'mac: "dc:a6:32:00:{i >> 8:02x}:{i & 0xFF:02x}", '
            f"ip: 198.18.{1 + i // 250}.{1 + i % 250}}}"
        )
    return "\n".join(lines) + "\n"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one_run(nodes: int, idle: float) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        cfg = Path(tmp) / "piman.yaml"
        cfg.write_text(config_text(Path(tmp) / "data", port, nodes))
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "piman", "server", "-c", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.01)
            started = time.perf_counter() - t0
            time.sleep(idle)
            rss = rss_mb(proc.pid)
            t1 = time.perf_counter()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
            stop = time.perf_counter() - t1
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        return started, rss, stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--nodes", type=int, nargs="*", default=[16, 500])
    parser.add_argument("--idle", type=float, default=3.0)
    args = parser.parse_args()
    print(f"{'nodes':>6} {'start-up s (median)':>20} {'idle RSS MB':>12} {'stop s':>8}")
    for n in args.nodes:
        runs = [one_run(n, args.idle) for _ in range(args.runs)]
        print(
            f"{n:>6} {statistics.median(r[0] for r in runs):>20.2f} "
            f"{statistics.median(r[1] for r in runs):>12.1f} "
            f"{statistics.median(r[2] for r in runs):>8.2f}"
        )


if __name__ == "__main__":
    main()
