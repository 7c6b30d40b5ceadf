"""Agent benchmark: `piman agent` vs Debian's prometheus-node-exporter on this machine.

Both run side by side on 127.0.0.1 and are scraped alternately over one keep-alive connection
each, as Prometheus does: scrape latency (median, p95), CPU time per scrape, resident memory
(VmRSS after the run, VmHWM peak) and payload. Run twice: plain, and with
``Accept-Encoding: gzip`` (what Prometheus sends).

Goals (issue 5): RSS <= 30 MB, median scrape <= 2x node_exporter.

    .venv/bin/python bench/agent.py [--scrapes 200]
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"
PIMAN = [str(Path(sys.executable).with_name("piman")), "agent"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on {port}")


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Target:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    conn: http.client.HTTPConnection | None = None
    latencies: list[float] = field(default_factory=list)
    size: int = 0
    samples: int = 0
    cpu: float = 0.0

    def scrape(self, gzip: bool) -> None:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Accept-Encoding": "gzip"} if gzip else {}
        start = time.perf_counter()
        self.conn.request("GET", "/metrics", headers=headers)
        response = self.conn.getresponse()
        body = response.read()
        self.latencies.append(time.perf_counter() - start)
        if response.status != 200:
            raise SystemExit(f"{self.name}: HTTP {response.status}")
        self.size = len(body)
        if not gzip:
            self.samples = sum(1 for ln in body.splitlines() if ln and not ln.startswith(b"#"))


def run(targets: list[Target], scrapes: int, gzip: bool) -> None:
    for t in targets:
        t.latencies.clear()
        for _ in range(10):  # warm up: page cache, first-scrape allocations
            t.scrape(gzip)
        t.latencies.clear()
        t.cpu = cpu_seconds(t.proc.pid)
    for _ in range(scrapes):
        for t in targets:  # alternate, so both see the same background load
            t.scrape(gzip)
    for t in targets:
        t.cpu = cpu_seconds(t.proc.pid) - t.cpu


def table(targets: list[Target], title: str, scrapes: int) -> None:
    def p95(xs: list[float]) -> float:
        return sorted(xs)[int(0.95 * (len(xs) - 1))]

    rows = []
    for t in targets:
        rows.append(
            (
                t.name,
                statistics.median(t.latencies) * 1e3,
                p95(t.latencies) * 1e3,
                t.cpu / scrapes * 1e3,
                status_kb(t.proc.pid, "VmRSS") / 1024,
                status_kb(t.proc.pid, "VmHWM") / 1024,
                t.size / 1024,
                t.samples,
            )
        )
    anchor = rows[-1]
    ratio = tuple(
        (a / b if b else float("nan")) if isinstance(a, float) else ""
        for a, b in zip(rows[0], anchor, strict=True)
    )
    print(f"\n{title} ({scrapes} scrapes each, alternating, keep-alive)")
    head = (
        "",
        "median ms",
        "p95 ms",
        "CPU ms/scrape",
        "RSS MB",
        "peak RSS MB",
        "body KiB",
        "samples",
    )
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row) + " |")
    print(
        "| ratio piman/node_exporter | "
        + " | ".join(f"{v:.2f}" if isinstance(v, float) else "" for v in ratio[1:7])
        + " | |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scrapes", type=int, default=200)
    args = parser.parse_args()
    if not Path(NODE_EXPORTER).exists():
        raise SystemExit(f"{NODE_EXPORTER} is missing: apt-get install prometheus-node-exporter")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        p_port, n_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if k != "PIMAN_AGENT_TOKEN"}
        piman = subprocess.Popen(
            [*PIMAN, "--listen", "127.0.0.1", "--port", str(p_port), "--log-level", "WARNING"],
            env=env,
            stderr=subprocess.DEVNULL,
        )
        procs.append(piman)
        node = subprocess.Popen(
            [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{n_port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(node)
        wait_for(p_port, piman)
        wait_for(n_port, node)
        targets = [
            Target("piman agent", piman, p_port),
            Target("node_exporter 1.5 (anchor)", node, n_port),
        ]
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
        run(targets, args.scrapes, gzip=False)
        table(targets, "plain text", args.scrapes)
        run(targets, args.scrapes, gzip=True)
        table(targets, "Accept-Encoding: gzip (as Prometheus scrapes)", args.scrapes)
        print(f"\nload average {os.getloadavg()[0]:.2f} at end")
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    main()
