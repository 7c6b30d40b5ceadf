"""`piman server` as a real process: HTTP API, UI, metrics, logs, and a clean stop on signals."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest

from piman.fleet.models import PiModel
from piman.sim.netboot import PI_VENDOR_CLASS, netboot_once
from piman.sim.pi import VirtualPi
from tests.support import (
    api_token,
    bearer,
    free_port,
    free_udp_port,
    initial_admin_password,
    session_client,
)

CONFIG = """\
manager:
  address: 198.18.0.1
  network: 198.18.0.0/24
  data_dir: {data_dir}
  http: "127.0.0.1:{port}"
switches:
  - {{name: rack1, address: 198.18.0.254, driver: none}}
nodes:
  - {{name: rack1-01, switch: rack1, port: 1, mac: "dc:a6:32:00:00:01", ip: 198.18.0.11,
      model: pi4}}
  - {{name: rack1-02, switch: rack1, port: 2, mac: "b8:27:eb:00:00:02", ip: 198.18.0.12}}
"""


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError(f"{url} never answered")


class Server:
    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.data_dir = tmp / "data"
        self.config = tmp / "piman.yaml"
        self.config.write_text(CONFIG.format(data_dir=self.data_dir, port=self.port))
        self.url = f"http://127.0.0.1:{self.port}"
        self.stderr = tmp / "stderr.log"
        with self.stderr.open("wb") as err:
            self.proc = spawn(["server", "--config", str(self.config)], err)
        wait_http(self.url + "/healthz", self.proc)
        self.password = initial_admin_password(self.data_dir)
        self.headers = bearer(api_token(self.url, "admin", self.password))

    def stop(self, sig: int = signal.SIGTERM) -> str:
        """Send ``sig``, wait for the exit; what the server wrote on stderr."""
        self.proc.send_signal(sig)
        self.proc.wait(timeout=30)
        return self.stderr.read_text()


def spawn(
    args: list[str], stderr: IO[bytes], env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "piman", *args],
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path)
    try:
        yield s
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()


def test_api_lists_the_configured_nodes_and_switches(server: Server) -> None:
    nodes = httpx.get(server.url + "/api/v1/nodes", headers=server.headers).json()
    assert [(n["name"], n["switch"], n["port"], n["state"]) for n in nodes] == [
        ("rack1-01", "rack1", 1, "ready"),
        ("rack1-02", "rack1", 2, "ready"),
    ]
    one = httpx.get(server.url + "/api/v1/nodes/rack1-01", headers=server.headers).json()
    assert (one["mac"], one["ip"], one["model"]) == ("dc:a6:32:00:00:01", "198.18.0.11", "pi4")
    switches = httpx.get(server.url + "/api/v1/switches", headers=server.headers).json()
    assert switches == [
        {
            "name": "rack1",
            "address": "198.18.0.254",
            "driver": "none",
            "profile": "rfc3621",
            "nodes": 2,
        }
    ]


def test_unknown_node_is_a_json_404(server: Server) -> None:
    response = httpx.get(server.url + "/api/v1/nodes/nope", headers=server.headers)
    assert response.status_code == 404
    assert response.json() == {"error": "not_found", "detail": "no node named 'nope'"}


def test_openapi_and_metrics_are_served(server: Server) -> None:
    spec = httpx.get(server.url + "/api/v1/openapi.json", headers=server.headers).json()
    assert "/api/v1/nodes/{name}" in spec["paths"]
    metrics = httpx.get(server.url + "/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "# TYPE piman_service_restarts gauge" in metrics.text


def test_web_page_lists_nodes_and_its_table_refreshes(server: Server) -> None:
    with session_client(server.url, "admin", server.password) as browser:
        page = browser.get("/").text
        rows = browser.get("/ui/nodes").text
    for name, text in [("rack1-01", "dc:a6:32:00:00:01"), ("rack1-02", "rack1:2")]:
        assert name in page
        assert text in page
    assert 'data-refresh="/ui/nodes"' in page
    assert "http://" not in page.replace(server.url, "")  # nothing loaded from elsewhere
    assert rows.count("<tr data-node=") == 2
    script = httpx.get(server.url + "/static/piman.js")
    assert script.status_code == 200


def test_sigterm_stops_every_service_in_time_and_logs_to_a_file(server: Server) -> None:
    stderr = server.stop(signal.SIGTERM)
    assert server.proc.returncode == 0, stderr
    # The manager names any service still running STOP_TIMEOUT (5 s) after it was cancelled;
    # a wall-clock bound here would measure this machine's load instead.
    assert "still stopping" not in stderr
    assert "manager stopping" in stderr
    assert "manager stopped" in stderr
    log = (server.data_dir / "logs" / "piman.log").read_text()
    assert "manager ready" in log
    assert "manager stopped" in log


def test_sigint_stops_cleanly_too(server: Server) -> None:
    stderr = server.stop(signal.SIGINT)
    assert server.proc.returncode == 0, stderr
    assert "still stopping" not in stderr
    assert "manager stopped" in stderr
    assert "Traceback" not in stderr


RUNTIME_CONFIG = """\
manager:
  address: 198.18.0.1
  network: 198.18.0.0/24
  data_dir: {data_dir}
  http: "127.0.0.1:{port}"
dhcp: {{mode: authoritative, listen: "127.0.0.1:{dhcp}", pool: 198.18.0.100-198.18.0.199}}
switches:
  - {{name: rack1, address: 198.18.0.254, driver: command, command: ["true"]}}
nodes:
  - {{name: rack1-01, switch: rack1, port: 1, mac: "dc:a6:32:00:00:01", ip: 198.18.0.11,
      model: pi4}}
  - {{name: rack1-02, switch: rack1, port: 2, mac: "b8:27:eb:00:00:02", ip: 198.18.0.12}}
"""
# The two declared Pis as their boot ROMs speak DHCP (the Pi 4 tells its serial in option 97).
PIS = (
    VirtualPi("rack1-01", PiModel.PI4, "dc:a6:32:00:00:01", "1234abcd", 0xC03114, "rack1", 1, ""),
    VirtualPi(
        "rack1-02", PiModel.PI3BPLUS, "b8:27:eb:00:00:02", "00000002", 0xA020D3, "rack1", 2, ""
    ),
)


def start_runtime_manager(tmp: Path, log: str) -> tuple[subprocess.Popen[bytes], str, int]:
    """`piman server` with DHCP on loopback and a `command` power driver; (process, URL, DHCP
    port) once it answers."""
    port, dhcp = free_port(), free_udp_port()
    config = tmp / "piman.yaml"
    config.write_text(RUNTIME_CONFIG.format(data_dir=tmp / "data", port=port, dhcp=dhcp))
    with (tmp / log).open("wb") as err:
        proc = spawn(["server", "-c", str(config)], err, env={"PIMAN_ADMIN_PASSWORD": "pw-x7Lq9"})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/healthz", proc)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, url, dhcp


def runtime_view(nodes: list[dict[str, object]]) -> dict[object, tuple[object, ...]]:
    """What a restart must keep of each node: lifecycle and power state, what the wire taught."""
    keys = ("state", "power", "mac", "serial", "vendor_class", "first_seen", "last_seen")
    return {n["name"]: tuple(n[k] for k in keys) for n in nodes}


def test_restart_keeps_runtime_state(tmp_path: Path) -> None:
    proc, url, dhcp = start_runtime_manager(tmp_path, "first.log")
    try:
        token = bearer(api_token(url, "admin", "pw-x7Lq9"))
        r = httpx.post(url + "/api/v1/nodes/rack1-01/power", json={"action": "off"}, headers=token)
        assert r.status_code == 200, r.text
        for pi in PIS:
            assert asyncio.run(netboot_once(pi, ("127.0.0.1", dhcp))) is not None, pi.name
        deadline = time.monotonic() + 30
        while True:  # sightings are written in the background
            nodes = httpx.get(url + "/api/v1/nodes", headers=token).json()
            if all(n["last_seen"] is not None for n in nodes):
                break
            assert time.monotonic() < deadline, nodes
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    before = runtime_view(nodes)
    assert before["rack1-01"][:5] == (
        "ready",
        "off",
        "dc:a6:32:00:00:01",
        "1234abcd",
        PI_VENDOR_CLASS,
    )
    assert before["rack1-02"][4] == PI_VENDOR_CLASS

    proc, url, _ = start_runtime_manager(tmp_path, "second.log")
    try:
        fresh = bearer(api_token(url, "admin", "pw-x7Lq9"))
        after = runtime_view(httpx.get(url + "/api/v1/nodes", headers=fresh).json())
        assert after == before
        # Accounts are runtime state too: the token made before the restart still works.
        assert httpx.get(url + "/api/v1/nodes/rack1-01", headers=token).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0


def test_port_in_use_is_one_clear_line_and_http_starts_once_it_is_free(tmp_path: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    config = tmp_path / "piman.yaml"
    config.write_text(CONFIG.format(data_dir=tmp_path / "d", port=port))
    log = tmp_path / "err.log"
    with log.open("wb") as err:
        proc = spawn(["server", "-c", str(config)], err)
    try:
        deadline = time.monotonic() + 60
        while "cannot listen" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        # The manager stays up (its other services run) and retries the HTTP service.
        assert proc.poll() is None, log.read_text()
        busy.close()
        wait_http(f"http://127.0.0.1:{port}/healthz", proc, timeout=90)
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        [restarts] = [
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith('piman_service_restarts{service="http"}')
        ]
        assert restarts >= 1, metrics
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        busy.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert proc.returncode == 0, text  # a clean stop on SIGTERM, as when the port was free
    assert f"cannot listen on 127.0.0.1:{port} for HTTP: Address already in use" in text
    assert "Traceback" not in text


def test_nodes_command_reads_a_running_manager(server: Server) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "piman", "nodes", "--url", server.url, "--json"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PIMAN_TOKEN": server.headers["Authorization"].split()[1]},
    )
    names = [n["name"] for n in json.loads(out.stdout)]
    assert names == ["rack1-01", "rack1-02"]


def test_nodes_command_without_manager_reads_config_and_store(tmp_path: Path) -> None:
    config = tmp_path / "piman.yaml"
    config.write_text(CONFIG.format(data_dir=tmp_path / "d", port=free_port()))
    out = subprocess.run(
        [sys.executable, "-m", "piman", "nodes", "-c", str(config)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        check=True,
    )
    assert "rack1-01" in out.stdout
    assert "rack1:2" in out.stdout
