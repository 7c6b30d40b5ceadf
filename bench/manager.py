"""Start-up time and idle memory of `piman server` and `piman demo`; login latency.

Starts the manager N times as a real process with a small config (16 nodes, HTTP only), measures the
wall time from exec to the first 200 on /healthz, then the resident memory after a few idle seconds;
the same for `piman demo --nodes 16` (which first makes its accounts). Then, against one running
manager, the latency of password logins (Argon2id, RFC 9106 low-memory: t=3, m=64 MiB, p=4) and of
requests with a session and with an API token. Prints tables. To compare with an older checkout,
run this script with ``PYTHONPATH=<that checkout>/src`` (rows it cannot serve say so).
Usage: python bench/manager.py [--runs 5] [--nodes 16 500] [--logins 50]
"""

from __future__ import annotations

import argparse
import os
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


def wait_healthy(url: str, proc: subprocess.Popen[bytes]) -> None:
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.01)


def demo_run() -> float:
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "piman", "demo", "--nodes", "16", "--port", str(port),
             "--data-dir", str(Path(tmp) / "demo")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_healthy(f"http://127.0.0.1:{port}", proc)
            return time.perf_counter() - t0
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def pct(xs: list[float], q: float) -> float:
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def login_latency(count: int) -> list[tuple[str, list[float]]] | None:
    """Per kind of request, its latencies in seconds; None when the manager has no accounts."""
    password = "bench-admin-password"
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        cfg = Path(tmp) / "piman.yaml"
        cfg.write_text(config_text(Path(tmp) / "data", port, 16))
        env = {**os.environ, "PIMAN_ADMIN_PASSWORD": password}
        proc = subprocess.Popen(
            [sys.executable, "-m", "piman", "server", "-c", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, proc)
            body = {"username": "admin", "password": password}
            if httpx.post(url + "/api/v1/auth/login", json=body).status_code == 404:
                return None
            rows: list[tuple[str, list[float]]] = []
            with httpx.Client(base_url=url, headers={"Origin": url}) as client:  # as a browser
                times = []
                for _ in range(count):
                    t0 = time.perf_counter()
                    assert client.post("/api/v1/auth/login", json=body).status_code == 200
                    times.append(time.perf_counter() - t0)
                rows.append(("password login (Argon2id verify)", times))
                rows.append(("GET /api/v1/nodes, session", timed(client, "/api/v1/nodes", count)))
            token = httpx.post(url + "/api/v1/auth/token", json=body).json()["token"]
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as c:
                rows.append(("GET /api/v1/nodes, API token", timed(c, "/api/v1/nodes", count)))
            return rows
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)


def timed(client: httpx.Client, path: str, count: int) -> list[float]:
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        assert client.get(path).status_code == 200
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--nodes", type=int, nargs="*", default=[16, 500])
    parser.add_argument("--idle", type=float, default=3.0)
    parser.add_argument("--logins", type=int, default=50)
    args = parser.parse_args()
    print(f"{'nodes':>6} {'start-up s (median)':>20} {'idle RSS MB':>12} {'stop s':>8}")
    for n in args.nodes:
        runs = [one_run(n, args.idle) for _ in range(args.runs)]
        print(
            f"{n:>6} {statistics.median(r[0] for r in runs):>20.2f} "
            f"{statistics.median(r[1] for r in runs):>12.1f} "
            f"{statistics.median(r[2] for r in runs):>8.2f}"
        )
    demo = [demo_run() for _ in range(args.runs)]
    print(f"\npiman demo --nodes 16: start to /healthz {statistics.median(demo):.2f} s (median)")
    rows = login_latency(args.logins)
    if rows is None:
        print("\nlogin latency: this manager has no accounts")
        return
    print(f"\n{'request':<36} {'p50 ms':>8} {'p99 ms':>8}")
    for label, times in rows:
        print(f"{label:<36} {pct(times, 0.5) * 1e3:>8.1f} {pct(times, 0.99) * 1e3:>8.1f}")


if __name__ == "__main__":
    main()
