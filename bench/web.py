"""Web benchmark: the fleet page and ``GET /api/v1/nodes`` at 2,000 nodes, beside 16 nodes.

    .venv/bin/python bench/web.py [--nodes 16,2000] [--loads 5] [--clients 20] [--requests 10]

For each fleet size a real `piman server` runs over a declared fleet (the store filled by the
manager's reconciliation of its configuration; no agents, power by the ``command`` driver
running ``true``; see tests/e2e/bigfleet.py). Measured:

- fleet page in headless Chromium (Debian's, driven by Playwright), median of ``--loads``
  loads: first contentful paint ("first render") and "interactive": the later of the load
  event's end (the DOM parsed, the page's scripts ran and attached their handlers) and that
  paint;
- ``GET /`` (the fleet page's HTML) sequentially: server latency p50/p99, bytes;
- ``GET /api/v1/nodes`` under ``--clients`` concurrent clients, ``--requests`` each, with a
  bearer token: p50/p99 latency;
- the manager's CPU time (user+system from /proc) per request of each kind;
- the manager's CPU per ``GET /api/v1/auth/me`` (a bearer token checked, nothing else: the
  floor under every API request);
- the store's own read of every node (what one cache miss costs, see
  piman.web.api.fleetcache), timed in this process on a copy of the fleet's database.

Goals (issue 16): interactive < 1 s and API p99 < 100 ms at 2,000 nodes; the page's cost
should grow with the rows shown (50), not with the fleet. The client, the browser and the
manager share this machine's CPUs, so latency reflects its load; CPU per request does not.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from tests.e2e.bigfleet import Fleet, running_fleet  # noqa: E402
from tests.support import CHROMIUM, CHROMIUM_ARGS, api_token, bearer, log_in  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def page_server(fleet: Fleet, count: int) -> dict[str, float]:
    with httpx.Client(base_url=fleet.url, timeout=60) as client:
        client.post("/api/v1/auth/login", json={"username": "admin", "password": fleet.password})
        client.get("/")  # warm-up: templates compiled
        times = []
        before = cpu_seconds(fleet.proc.pid)
        for _ in range(count):
            t = time.perf_counter()
            response = client.get("/")
            times.append(time.perf_counter() - t)
            assert response.status_code == 200
        cpu = cpu_seconds(fleet.proc.pid) - before
    return {
        "page_p50": pct(times, 50) * 1000,
        "page_p99": pct(times, 99) * 1000,
        "page_kb": len(response.content) / 1024,
        "page_rows": response.text.count("<tr data-node="),
        "page_cpu": cpu / count * 1000,
    }


async def api_load(fleet: Fleet, token: str, clients: int, requests: int) -> dict[str, float]:
    times: list[float] = []

    async def one(client: httpx.AsyncClient) -> None:
        for _ in range(requests):
            t = time.perf_counter()
            response = await client.get("/api/v1/nodes")
            times.append(time.perf_counter() - t)
            assert response.status_code == 200

    pool = [
        httpx.AsyncClient(base_url=fleet.url, headers=bearer(token), timeout=60)
        for _ in range(clients)
    ]
    try:
        await asyncio.gather(*(c.get("/api/v1/nodes") for c in pool))  # connect, warm up
        before = cpu_seconds(fleet.proc.pid)
        wall = time.perf_counter()
        await asyncio.gather(*(one(c) for c in pool))
        wall = time.perf_counter() - wall
        cpu = cpu_seconds(fleet.proc.pid) - before
    finally:
        for c in pool:
            await c.aclose()
    return {
        "api_p50": pct(times, 50) * 1000,
        "api_p99": pct(times, 99) * 1000,
        "api_rps": len(times) / wall,
        "api_cpu": cpu / len(times) * 1000,
    }


def token_check(fleet: Fleet, token: str, count: int = 100) -> dict[str, float]:
    """Manager CPU per request of ``GET /api/v1/auth/me``: what checking a token costs alone."""
    with httpx.Client(base_url=fleet.url, headers=bearer(token), timeout=60) as client:
        client.get("/api/v1/auth/me")
        before = cpu_seconds(fleet.proc.pid)
        for _ in range(count):
            assert client.get("/api/v1/auth/me").status_code == 200
        return {"auth_cpu": (cpu_seconds(fleet.proc.pid) - before) / count * 1000}


def browser(fleet: Fleet, loads: int) -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    paint, ready = [], []
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = chromium.new_page(viewport={"width": 1280, "height": 800})
            log_in(page, fleet.url, "admin", fleet.password)
            for _ in range(loads):
                page.goto(fleet.url + "/", wait_until="load")
                timing: dict[str, Any] = page.evaluate(
                    """() => new Promise((resolve) => {
                      const nav = performance.getEntriesByType("navigation")[0];
                      const done = (fcp) => resolve({fcp, load: nav.loadEventEnd});
                      // The paint entry is queued after the load event: wait for it.
                      new PerformanceObserver((list) => {
                        const e = list.getEntriesByName("first-contentful-paint")[0];
                        if (e) done(e.startTime);
                      }).observe({type: "paint", buffered: true});
                      setTimeout(() => done(null), 5000);
                    })"""
                )
                if timing["fcp"] is not None:
                    paint.append(timing["fcp"])
                ready.append(max(timing["load"], timing["fcp"] or 0.0))
        finally:
            chromium.close()
    return {
        "first_render": statistics.median(paint) if paint else float("nan"),
        "interactive": statistics.median(ready),
    }


async def store_read(fleet: Fleet) -> dict[str, float]:
    """CPU time of one ``store.nodes.list()`` over the manager's database (median of 5)."""
    from piman.store import Store

    store = Store(f"sqlite+aiosqlite:///{fleet.root / 'data' / 'piman.db'}")
    await store.open()
    try:
        await store.nodes.list()
        spent = []
        for _ in range(5):
            t = time.process_time()
            await store.nodes.list()
            spent.append(time.process_time() - t)
    finally:
        await store.close()
    return {"store_list": statistics.median(spent) * 1000}


def measure(n: int, args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="piman-bench-web-") as tmp:
        with running_fleet(Path(tmp) / "fleet", n) as fleet:
            token = api_token(fleet.url, "admin", fleet.password)
            time.sleep(2)  # let the manager settle after its start
            out: dict[str, float] = {"nodes": n}
            out |= browser(fleet, args.loads)
            out |= page_server(fleet, args.page_requests)
            out |= asyncio.run(api_load(fleet, token, args.clients, args.requests))
            out |= asyncio.run(store_read(fleet))
            out |= token_check(fleet, token)
            return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", default="16,2000")
    parser.add_argument("--loads", type=int, default=5, help="browser loads per fleet")
    parser.add_argument("--page-requests", type=int, default=30)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=10, help="per API client")
    args = parser.parse_args()
    results = [measure(int(n), args) for n in args.nodes.split(",")]
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    rows = [
        ("fleet page: first render (Chromium)", "first_render", "ms", "{:.0f}"),
        ("fleet page: interactive (Chromium)", "interactive", "ms", "{:.0f}"),
        ("GET / p50", "page_p50", "ms", "{:.0f}"),
        ("GET / p99", "page_p99", "ms", "{:.0f}"),
        ("GET / rows in the HTML", "page_rows", "", "{:.0f}"),
        ("GET / size", "page_kb", "KiB", "{:.0f}"),
        ("GET / manager CPU per request", "page_cpu", "ms", "{:.1f}"),
        (f"GET /api/v1/nodes p50 ({args.clients} clients)", "api_p50", "ms", "{:.0f}"),
        (f"GET /api/v1/nodes p99 ({args.clients} clients)", "api_p99", "ms", "{:.0f}"),
        ("GET /api/v1/nodes requests/s", "api_rps", "", "{:.0f}"),
        ("GET /api/v1/nodes manager CPU per request", "api_cpu", "ms", "{:.1f}"),
        ("GET /api/v1/auth/me manager CPU (the token check)", "auth_cpu", "ms", "{:.1f}"),
        ("store: read every node once (a cache miss), CPU", "store_list", "ms", "{:.1f}"),
    ]
    head = f"{'':50}" + "".join(f"{int(r['nodes']):>10} nodes" for r in results)
    if len(results) == 2:
        head += f"{'ratio':>10}"
    print(head)
    for label, key, unit, fmt in rows:
        cells = "".join(f"{fmt.format(r[key]) + (' ' + unit if unit else ''):>16}" for r in results)
        ratio = ""
        if len(results) == 2 and results[0][key]:
            ratio = f"{results[1][key] / results[0][key]:>9.1f}x"
        print(f"{label:50}{cells}{ratio}")
    big = results[-1]
    print(
        f"goals at {int(big['nodes'])} nodes: interactive < 1000 ms: "
        f"{'met' if big['interactive'] < 1000 else 'NOT met'}; API p99 < 100 ms: "
        f"{'met' if big['api_p99'] < 100 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
