"""A real `piman server` over a large declared fleet, for the web UI's browser test and
bench/web.py: N nodes on switches of 48 ports whose driver is the ``command`` driver running
``true`` (every power action succeeds, nothing to hurt), monitoring on, and optionally one node
whose agent is a real `piman agent` on 127.0.0.1 (so its charts have data). The store is
filled by the manager's own reconciliation of the configuration at start: no agents, no
netboot needed.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support import free_port, initial_admin_password

PORTS = 48
MODELS = ("pi4", "pi3b+", "pi5", "pi4", "pizero2w")


def node_name(i: int) -> str:
    return f"rack{i // PORTS + 1:02d}-p{i % PORTS + 1:02d}"


def config_text(root: Path, nodes: int, port: int, agent_port: int | None) -> str:
    lines = [
        "manager:",
        "  address: 127.0.0.1",
        f"  data_dir: {root / 'data'}",
        f'  http: "127.0.0.1:{port}"',
        "monitoring:",
        "  scrape_interval: 1s",
        "switches:",
    ]
    for s in range(-(-nodes // PORTS)):
        lines.append(f'  - {{name: rack{s + 1:02d}, driver: command, command: ["true"]}}')
    lines.append("nodes:")
    for i in range(nodes):
        mac = f"dc:a6:32:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"
        extra = ""
        if i == 0 and agent_port is not None:
            extra = f', agent_url: "http://127.0.0.1:{agent_port}/metrics"'
        lines.append(
            f"  - {{name: {node_name(i)}, switch: rack{i // PORTS + 1:02d}, port: {i % PORTS + 1},"
            f' mac: "{mac}", model: {MODELS[i % len(MODELS)]}{extra}}}'
        )
    return "\n".join(lines) + "\n"


@dataclass
class Fleet:
    url: str
    password: str  # admin's
    proc: subprocess.Popen[bytes]
    root: Path
    config: Path

    def start(self) -> None:
        """(Re)start the manager on the same data."""
        with (self.root / "manager.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "piman", "server", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 120
        while True:
            assert self.proc.poll() is None, (self.root / "manager.log").read_text()[-3000:]
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the manager never answered"
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextmanager
def running_fleet(root: Path, nodes: int, *, agent: bool = False) -> Iterator[Fleet]:
    """A manager over ``nodes`` nodes (and the agent of the first one when ``agent``)."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    agent_proc = None
    agent_port = None
    if agent:
        agent_port = free_port()
        agent_proc = subprocess.Popen(
            [sys.executable, "-m", "piman", "agent", "--listen", "127.0.0.1", "--port",
             str(agent_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
    config = root / "piman.yaml"
    config.write_text(config_text(root, nodes, port, agent_port))
    fleet = Fleet(f"http://127.0.0.1:{port}", "", None, root, config)  # type: ignore[arg-type]
    try:
        fleet.start()
        fleet.password = initial_admin_password(root / "data")
        yield fleet
    finally:
        if fleet.proc is not None:
            fleet.stop()
        if agent_proc is not None:
            agent_proc.terminate()
            agent_proc.wait(10)
