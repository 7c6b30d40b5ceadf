"""`piman server` as a real process: HTTP API, UI, metrics, logs, and a clean stop on signals."""

from __future__ import annotations

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

from tests.support import api_token, bearer, free_port, initial_admin_password, session_client

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

    def stop(self, sig: int = signal.SIGTERM) -> tuple[float, str]:
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        self.proc.wait(timeout=15)
        return time.monotonic() - t0, self.stderr.read_text()


def spawn(args: list[str], stderr: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "piman", *args], stdout=subprocess.DEVNULL, stderr=stderr
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


def test_sigterm_stops_within_5_seconds_and_logs_to_a_file(server: Server) -> None:
    took, stderr = server.stop(signal.SIGTERM)
    assert server.proc.returncode == 0, stderr
    assert took < 5, f"stop took {took:.1f} s"
    assert "manager stopped" in stderr
    log = (server.data_dir / "logs" / "piman.log").read_text()
    assert "manager ready" in log
    assert "manager stopped" in log


def test_sigint_stops_cleanly_too(server: Server) -> None:
    took, stderr = server.stop(signal.SIGINT)
    assert server.proc.returncode == 0, stderr
    assert took < 5
    assert "Traceback" not in stderr


def test_restart_keeps_runtime_state(tmp_path: Path) -> None:
    first = Server(tmp_path)
    try:
        first.stop()
    finally:
        if first.proc.poll() is None:
            first.proc.kill()
    port = free_port()
    first.config.write_text(first.config.read_text().replace(f":{first.port}", f":{port}"))
    with (tmp_path / "second.log").open("wb") as err:
        proc = spawn(["server", "-c", str(first.config)], err)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc)
        headers = bearer(api_token(f"http://127.0.0.1:{port}", "admin", first.password))
        nodes = httpx.get(f"http://127.0.0.1:{port}/api/v1/nodes", headers=headers).json()
        assert [n["name"] for n in nodes] == ["rack1-01", "rack1-02"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)


def test_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = tmp_path / "piman.yaml"
        config.write_text(CONFIG.format(data_dir=tmp_path / "d", port=port))
        log = tmp_path / "err.log"
        with log.open("wb") as err:
            proc = spawn(["server", "-c", str(config)], err)
        deadline = time.monotonic() + 20
        while "cannot listen" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    text = log.read_text()
    assert f"cannot listen on 127.0.0.1:{port} for HTTP" in text
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
