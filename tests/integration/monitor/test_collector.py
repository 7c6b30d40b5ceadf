"""A monitoring-only manager, with no root privileges, scraping three real `piman agent`s.

The manager runs as `piman server` under ``setpriv`` with every capability dropped (it could not
bind a port below 1024 or create a namespace), with DHCP off, TFTP off and a switch without a
power driver. Three agents run as `piman agent` on 127.0.0.1; a fourth node points at a port
nobody listens on. Everything is checked through the manager's HTTP API and web page.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import needs_tool, session_client

PIMAN = [sys.executable, "-m", "piman"]
TOKEN = "fleet-s3cret"
ADMIN_PASSWORD = "admin-password-of-the-collector-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_http(url: str, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while True:
        try:
            httpx.get(url, timeout=1.0)
        except httpx.HTTPError:
            if time.monotonic() > end:
                raise
            time.sleep(0.1)
        else:
            return


@pytest.fixture
def agents() -> Iterator[list[int]]:
    ports = [_free_port() for _ in range(3)]
    procs = [
        subprocess.Popen(
            [*PIMAN, "agent", "--port", str(p), "--listen", "127.0.0.1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PIMAN_AGENT_TOKEN": TOKEN},
        )
        for p in ports
    ]
    try:
        for p in ports:
            _wait_http(f"http://127.0.0.1:{p}/metrics")
            # The agents insist on the token: the collector must send it.
            assert httpx.get(f"http://127.0.0.1:{p}/metrics").status_code == 401
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)


def _config(tmp_path: Path, http_port: int, agent_ports: list[int], dead_port: int) -> Path:
    nodes = "\n".join(
        f"  - {{name: pi{i}, agent_url: 'http://127.0.0.1:{p}/metrics'}}"
        for i, p in enumerate(agent_ports)
    )
    path = tmp_path / "piman.yaml"
    path.write_text(
        f"""\
manager:
  address: 127.0.0.1
  data_dir: {tmp_path / "data"}
  http: "127.0.0.1:{http_port}"
dhcp: {{mode: "off"}}
tftp: {{enabled: false}}
switches:
  - {{name: rack1, driver: none}}
nodes:
{nodes}
  - {{name: gone, agent_url: 'http://127.0.0.1:{dead_port}/metrics'}}
monitoring:
  scrape_interval: 1s
  scrape_timeout: 0.5s
  agent_token: {TOKEN}
"""
    )
    return path


def test_monitoring_only_manager_without_privileges_scrapes_real_agents(
    tmp_path: Path, agents: list[int]
) -> None:
    needs_tool("setpriv")
    http_port = _free_port()
    config = _config(tmp_path, http_port, agents, _free_port())
    log = (tmp_path / "manager.log").open("w")
    manager = subprocess.Popen(
        [
            "setpriv",
            "--bounding-set=-all",
            "--inh-caps=-all",
            "--securebits=+noroot,+noroot_locked",
            "--",
            *PIMAN,
            "server",
            "--config",
            str(config),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PIMAN_ADMIN_PASSWORD": ADMIN_PASSWORD},
    )
    base = f"http://127.0.0.1:{http_port}"
    stack = contextlib.ExitStack()
    try:
        _wait_http(f"{base}/healthz")
        api = stack.enter_context(session_client(base, "admin", ADMIN_PASSWORD))
        status = Path(f"/proc/{manager.pid}/status").read_text()
        assert "CapEff:\t0000000000000000" in status  # really no privileges

        # Wait until a few cycles are stored.
        deadline = time.monotonic() + 60
        while True:
            up = api.get(f"{base}/api/v1/query_range", params={"metric": "up"}).json()
            series = up["data"]["result"]
            if len(series) == 4 and all(len(s["values"]) >= 2 for s in series):
                break
            assert time.monotonic() < deadline, (up, (tmp_path / "manager.log").read_text())
            time.sleep(0.5)
        assert up["status"] == "success"
        assert up["data"]["resultType"] == "matrix"
        latest_up = {s["metric"]["node"]: s["values"][-1][1] for s in series}
        assert latest_up == {"pi0": "1", "pi1": "1", "pi2": "1", "gone": "0"}
        for s in series:
            assert s["metric"]["__name__"] == "up"
            assert s["metric"]["job"] == "piman"
        assert {s["metric"]["instance"] for s in series} >= {f"127.0.0.1:{p}" for p in agents}

        # A real node_exporter-named metric, for one node, on a step grid.
        now = time.time()
        mem = api.get(
            f"{base}/api/v1/query_range",
            params={
                "metric": "node_memory_MemTotal_bytes",
                "node": "pi1",
                "start": now - 30,
                "end": now,
                "step": 1,
            },
        ).json()
        [total] = mem["data"]["result"]
        assert total["metric"]["node"] == "pi1"
        assert float(total["values"][-1][1]) > 0
        counts = api.get(
            f"{base}/api/v1/query_range",
            params={"metric": "scrape_samples_scraped", "node": "pi0"},
        ).json()
        assert float(counts["data"]["result"][0]["values"][-1][1]) > 100

        # /events: the latest snapshot per node, its fields queryable as metrics.
        events = api.get(f"{base}/api/v1/nodes/pi2/events").json()
        assert events["node"] == "pi2"
        assert 0 <= events["events"]["memory_percent"] <= 100
        assert events["events"]["num_pids"] > 0
        cpu = api.get(
            f"{base}/api/v1/query_range", params={"metric": "memory_percent", "node": "pi2"}
        ).json()
        assert cpu["data"]["result"][0]["metric"]["job"] == "piman_events"
        assert api.get(f"{base}/api/v1/nodes/gone/events").json()["events"] is None
        assert api.get(f"{base}/api/v1/nodes/nobody/events").status_code == 404
        bad = api.get(f"{base}/api/v1/query_range", params={"metric": "up", "step": "-1"})
        assert bad.status_code == 400
        assert bad.json()["errorType"] == "bad_data"

        # The manager's own metrics say how the collector is doing, as of its last cycle (one
        # scrape may time out now and then on a loaded machine: the next cycle says so again).
        deadline = time.monotonic() + 30
        while True:
            own = api.get(f"{base}/metrics").text
            if 'piman_collector_targets{state="up"} 3.0' in own:
                break
            assert time.monotonic() < deadline, own
            time.sleep(0.5)
        assert 'piman_collector_targets{state="down"} 1.0' in own

        # The web page shows metric cells and a sparkline per node (state as of the last cycle).
        while True:
            page = api.get(f"{base}/").text
            if page.count(">down</span>") == 1:  # the node whose agent is gone
                break
            assert time.monotonic() < deadline, page
            time.sleep(0.5)
        assert page.count('class="sparkline"') == 4
        assert page.count("no data yet") == 0
        assert "metric-mem" in page
    finally:
        stack.close()
        manager.terminate()
        try:
            manager.wait(15)
        finally:
            if manager.poll() is None:
                manager.kill()
                manager.wait()
            log.close()
