"""Collector benchmark: N agents scraped every interval; CPU per cycle, ingest rate, bytes/sample.

    .venv/bin/python bench/collector.py [--nodes 100,500,1000,2000] [--interval 15] [--cycles 3]

The agents are N listening sockets on 127.0.0.1 in ONE helper process (this script with
``--serve-agents``), each answering ``/metrics`` with a body recorded from Debian's
prometheus-node-exporter on this machine (values varied per scrape) and ``/events`` with a
small JSON. The collector (piman's Scraper + Tsdb, the manager's code) runs in this process;
its CPU time (user+system, all threads: getrusage) is measured per cycle after one warm-up
cycle. The goal is 2,000 nodes at 15 s with < 25 % of one core.

Then the anchor: the same samples (the same bodies, labels and timestamps) are ingested by
piman's parse+store path alone and imported into Debian's victoria-metrics
(``/api/v1/import/prometheus``, its CPU from /proc), and both stores' bytes per sample are
compared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from piman.monitor.collector.expfmt import scan
from piman.monitor.collector.scrape import Scraper, ScrapeTarget, _TargetState
from piman.monitor.collector.tsdb import Tsdb

VARIANTS = 8


def node_exporter_body() -> str:
    """A body recorded from prometheus-node-exporter on this machine (fallback: generated)."""
    exe = shutil.which("prometheus-node-exporter")
    if exe:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen(
            [exe, f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(100):
                try:
                    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
                except httpx.HTTPError:
                    time.sleep(0.1)
        finally:
            proc.terminate()
            proc.wait()
    lines = []
    for i in range(500):
        lines.append(f'# TYPE bench_metric_{i % 50} gauge\nbench_metric_{i % 50}{{i="{i}"}} {i}.5')
    return "\n".join(lines) + "\n"


def variants(body: str) -> list[bytes]:
    """VARIANTS versions of the body with values moved (counters grow, gauges wobble)."""
    rnd = random.Random(7)
    out = []
    for v in range(VARIANTS):
        lines = []
        for line in body.splitlines():
            if line.startswith("#") or not line:
                lines.append(line)
                continue
            series, _, value = line.rpartition(" ")
            try:
                x = float(value)
            except ValueError:
                lines.append(line)
                continue
            if x.is_integer() and abs(x) < 1e15:
                lines.append(f"{series} {int(x) + v * rnd.randint(0, 1000)}")
            else:
                lines.append(f"{series} {x * (1 + rnd.uniform(-0.01, 0.01)):.6g}")
        out.append(("\n".join(lines) + "\n").encode())
    return out


# -- the agents' process -------------------------------------------------------------------------


async def serve_agents(n: int, bodies: list[bytes]) -> None:
    counter = [0]
    events = json.dumps(
        {
            "time": 0,
            "cpu_percent": 3.5,
            "memory_percent": 41.2,
            "disk_percent": 57.0,
            "num_pids": 143,
            "temperature_celsius": 48.3,
            "throttled": 0,
        }
    ).encode()

    def response(path: bytes) -> bytes:
        if path.startswith(b"/events"):
            payload = events
        else:
            counter[0] += 1
            payload = bodies[counter[0] % VARIANTS]
        return (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
            b"Content-Length: %d\r\n\r\n" % len(payload)
        ) + payload

    class Agent(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.buf = b""

        def data_received(self, data: bytes) -> None:
            self.buf += data
            while b"\r\n\r\n" in self.buf:
                head, _, self.buf = self.buf.partition(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                self.transport.write(response(path))  # type: ignore[attr-defined]

    loop = asyncio.get_running_loop()
    ports = []
    for _ in range(n):
        server = await loop.create_server(Agent, "127.0.0.1", 0, backlog=64)
        ports.append(server.sockets[0].getsockname()[1])
    print(json.dumps(ports), flush=True)
    await asyncio.Event().wait()


# -- the collector -----------------------------------------------------------------------------


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def run_collector(
    ports: list[int], interval: float, cycles: int, data: Path
) -> dict[str, float]:
    tsdb = Tsdb(data / f"metrics-{len(ports)}.db")
    await tsdb.open()
    targets = [
        ScrapeTarget(f"pi{i}", f"http://127.0.0.1:{p}/metrics", f"http://127.0.0.1:{p}/events")
        for i, p in enumerate(ports)
    ]

    async def source() -> list[ScrapeTarget]:
        return targets

    scraper = Scraper(tsdb, source, interval=interval)
    marks: list[tuple[float, float, int]] = []

    async def on_flush(batches: list) -> None:  # type: ignore[type-arg]
        marks.append((cpu(), time.perf_counter(), sum(len(b) for b in batches)))
        if os.environ.get("BENCH_DEBUG"):
            print("flush", marks[-1], flush=True)

    scraper.on_flush.append(on_flush)
    task = asyncio.create_task(scraper.serve())
    try:
        while len(marks) < cycles + 2:  # the first flush is partial, the second is warm-up
            if task.done():
                task.result()  # raises what stopped the scraper
                raise RuntimeError("the scraper stopped")
            await asyncio.sleep(0.2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    ups = await tsdb.latest("up")
    size = await tsdb.size_bytes()
    written = tsdb.samples_written
    await tsdb.close()
    (c0, w0, _), (c1, w1, _) = marks[1], marks[-1]
    samples = sum(m[2] for m in marks[2:])
    per_cycle_cpu = (c1 - c0) / (len(marks) - 2)
    return {
        "nodes": len(ports),
        "up": sum(s.value for s in ups),
        "samples_per_cycle": samples / (len(marks) - 2),
        "cpu_per_cycle": per_cycle_cpu,
        "core_share": per_cycle_cpu / ((w1 - w0) / (len(marks) - 2)),
        "cpu_us_per_sample": (c1 - c0) / samples * 1e6,
        "bytes_per_sample": size / written,
    }


async def anchor(body: str, nodes: int, cycles: int, data: Path) -> dict[str, float]:
    """Same samples into piman's parse+store path and into VictoriaMetrics."""
    bodies = [b.decode() for b in variants(body)]
    tsdb = Tsdb(data / "anchor.db")
    await tsdb.open()

    async def none() -> list[ScrapeTarget]:
        return []

    scraper = Scraper(tsdb, none, forward=True)
    states = [
        _TargetState(ScrapeTarget(f"pi{i}", f"http://10.0.{i // 250}.{i % 250}:9110/metrics", None))
        for i in range(nodes)
    ]
    t0 = time.time() - cycles * 15
    texts = []
    piman_cpu = 0.0
    n_samples = 0
    all_samples = 0
    from piman.monitor.collector.tsdb import TargetBatch

    for c in range(cycles):  # cycle 0 creates the series: a warm-up for both stores
        c0 = cpu()
        batches = []
        for i, st in enumerate(states):
            batch = TargetBatch(st.target.node, t0 + c * 15 + i * 15 / nodes)
            scraper._ingest(st, bodies[(c + i) % VARIANTS], batch)
            batches.append(batch)
        await tsdb.write(batches)
        texts.append(scraper.exposition(batches))
        all_samples += sum(len(b) for b in batches)
        if c:
            piman_cpu += cpu() - c0
            n_samples += sum(len(b) for b in batches)
    piman_size = await tsdb.size_bytes()
    await tsdb.close()
    out = {
        "samples": n_samples,
        "piman_us_per_sample": piman_cpu / n_samples * 1e6,
        "piman_bytes_per_sample": piman_size / all_samples,
    }
    exe = shutil.which("victoria-metrics")
    if exe is None:
        return out
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    vm_dir = data / "vm"
    proc = subprocess.Popen(  # noqa: ASYNC220 - a benchmark starting its anchor
        [
            exe,
            f"-httpListenAddr=127.0.0.1:{port}",
            f"-storageDataPath={vm_dir}",
            "-retentionPeriod=100y",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=300) as client:
            for _ in range(300):
                try:
                    if (await client.get(f"{base}/health")).status_code == 200:
                        break
                except httpx.HTTPError:
                    await asyncio.sleep(0.1)

            def vm_cpu() -> float:
                fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
                return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

            await asyncio.sleep(1.0)
            url = f"{base}/api/v1/import/prometheus"
            (await client.post(url, content=texts[0].encode())).raise_for_status()
            await client.get(f"{base}/internal/force_flush")
            await asyncio.sleep(3.0)
            v0 = vm_cpu()
            for text in texts[1:]:
                (await client.post(url, content=text.encode())).raise_for_status()
            await client.get(f"{base}/internal/force_flush")
            await asyncio.sleep(3.0)
            v1 = vm_cpu()
            await client.get(f"{base}/internal/force_flush")
            size = sum(f.stat().st_size for f in vm_dir.rglob("*") if f.is_file())
            series = (await client.get(f"{base}/api/v1/series/count")).json()
    finally:
        proc.terminate()
        proc.wait(30)
    out["vm_us_per_sample"] = (v1 - v0) / n_samples * 1e6
    out["vm_bytes_per_sample"] = size / all_samples
    out["vm_series"] = float(series.get("data", [0])[0])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--nodes", default="100,500,1000,2000")
    parser.add_argument("--interval", type=float, default=15.0)
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--anchor-nodes", type=int, default=500)
    parser.add_argument("--serve-agents", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--body", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_agents:
        asyncio.run(serve_agents(args.serve_agents, variants(Path(args.body).read_text())))
    else:
        asyncio.run(run(args))


async def run(args: argparse.Namespace) -> None:
    data = Path(tempfile.mkdtemp(prefix="piman-bench-collector-"))
    body = node_exporter_body()
    body_file = data / "body.txt"
    body_file.write_text(body)
    print(f"payload: {len(scan(body))} samples, {len(body)} bytes (node_exporter on this host)")
    rows = []
    try:
        for n in [int(x) for x in args.nodes.split(",")]:
            agents = subprocess.Popen(  # noqa: ASYNC220 - the agents' process, started once
                [sys.executable, __file__, "--serve-agents", str(n), "--body", str(body_file)],
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                assert agents.stdout is not None
                ports = json.loads(agents.stdout.readline())
                rows.append(await run_collector(ports, args.interval, args.cycles, data))
            finally:
                agents.terminate()
                agents.wait()
            r = rows[-1]
            print(f"  {n} nodes done: {r['core_share'] * 100:.1f} % of a core", flush=True)
        anchor_row = await anchor(body, args.anchor_nodes, args.cycles + 1, data)
    finally:
        shutil.rmtree(data, ignore_errors=True)

    print()
    print(f"Collector, scrape interval {args.interval:g} s, {args.cycles} measured cycles each")
    print(
        f"{'nodes':>6} {'up':>6} {'samples/cycle':>14} {'CPU s/cycle':>12} {'% of a core':>12}"
        f" {'µs CPU/sample':>14} {'samples/s per core':>19} {'bytes/sample':>13} {'goal <25 %':>11}"
    )
    for r in rows:
        print(
            f"{r['nodes']:>6.0f} {r['up']:>6.0f} {r['samples_per_cycle']:>14.0f}"
            f" {r['cpu_per_cycle']:>12.2f} {r['core_share'] * 100:>11.1f}%"
            f" {r['cpu_us_per_sample']:>14.2f} {1e6 / r['cpu_us_per_sample']:>19,.0f}"
            f" {r['bytes_per_sample']:>13.1f} {'yes' if r['core_share'] < 0.25 else 'NO':>11}"
        )
    a = anchor_row
    print()
    print(
        f"Ingest of the same {a['samples']:,.0f} samples ({args.anchor_nodes} nodes × "
        f"{args.cycles + 1} cycles), no HTTP"
    )
    print(
        f"{'store':<34} {'µs CPU/sample':>14} {'samples/s':>12} {'bytes/sample':>13}"
        f" {'ratio CPU':>10} {'ratio bytes':>12}"
    )
    vm_us = a.get("vm_us_per_sample")
    vm_b = a.get("vm_bytes_per_sample")
    print(
        f"{'victoria-metrics import (anchor)':<34} {vm_us or float('nan'):>14.2f}"
        f" {1e6 / vm_us if vm_us else float('nan'):>12,.0f} {vm_b or float('nan'):>13.2f}"
        f" {1.0:>10.2f} {1.0:>12.2f}"
    )
    pu, pb = a["piman_us_per_sample"], a["piman_bytes_per_sample"]
    cpu_ratio = pu / vm_us if vm_us else float("nan")
    bytes_ratio = pb / vm_b if vm_b else float("nan")
    print(
        f"{'piman parse + SQLite store':<34} {pu:>14.2f} {1e6 / pu:>12,.0f} {pb:>13.2f}"
        f" {cpu_ratio:>10.2f} {bytes_ratio:>12.2f}"
    )


if __name__ == "__main__":
    main()
