"""Listings asked of a running ``piman server`` with ``--url``: tables that fit 80 columns with
long node names whole, and ``-o json``/``-o yaml`` records that are the same whether they come
from the manager or straight from its store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.integration.manager.test_server import spawn, wait_http
from tests.support import api_token, free_port, initial_admin_password

CONFIG = """\
manager:
  address: 198.18.0.1
  network: 198.18.0.0/24
  data_dir: {data_dir}
  http: "127.0.0.1:{port}"
switches:
  - {{name: rack1-switch2, address: 198.18.0.254, driver: none}}
nodes:
  - {{name: rack1-switch2-port48, switch: rack1-switch2, port: 48, mac: "dc:a6:32:00:00:30",
      ip: 198.18.0.148, model: pi4, serial: 10000000a3b4c5d6}}
  - {{name: rack1-switch2-port47, switch: rack1-switch2, port: 47, mac: "dc:a6:32:00:00:2f",
      ip: 198.18.0.147, model: pi5, serial: 10000000a3b4c5d7}}
"""
NAMES = ["rack1-switch2-port47", "rack1-switch2-port48"]


class Manager:
    def __init__(self, tmp: Path) -> None:
        port = free_port()
        self.data_dir = tmp / "data"
        self.config = tmp / "piman.yaml"
        self.config.write_text(CONFIG.format(data_dir=self.data_dir, port=port))
        self.url = f"http://127.0.0.1:{port}"
        with (tmp / "stderr.log").open("wb") as err:
            self.proc = spawn(["server", "--config", str(self.config)], err)
        wait_http(self.url + "/healthz", self.proc)
        self.token = api_token(self.url, "admin", initial_admin_password(self.data_dir))

    def piman(self, *args: str, columns: int = 80) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "piman", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "COLUMNS": str(columns), "PIMAN_TOKEN": self.token},
            check=False,
        )
        assert result.returncode == 0, (args, result.stderr)
        return result.stdout


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[Manager]:
    m = Manager(tmp_path)
    try:
        yield m
    finally:
        m.proc.terminate()
        m.proc.wait(30)


def test_listings_from_a_manager_fit_and_match_the_store(manager: Manager) -> None:
    url = ("--url", manager.url)
    table = manager.piman("nodes", *url)
    assert max(len(line) for line in table.splitlines()) <= 80, table
    rows = [line.split(" │ ") for line in table.splitlines() if " │ " in line]
    assert [r[0].strip() for r in rows] == ["name", *NAMES]
    wide = manager.piman("nodes", *url, "-o", "wide")
    assert {"serial", "hostname", "first seen"} <= {c.strip() for c in wide.split("│")}

    asked = {}
    for command in (("nodes",), ("user", "list"), ("token", "list", "--all")):
        asked[command] = json.loads(manager.piman(*command, *url, "-o", "json"))
        stored = json.loads(manager.piman(*command, "-c", str(manager.config), "-o", "json"))
        assert asked[command] == stored, command
    assert yaml.safe_load(manager.piman("nodes", *url, "-o", "yaml")) == asked[("nodes",)]
    assert [n["name"] for n in asked[("nodes",)]] == NAMES
    (admin,) = asked[("user", "list")]
    assert admin["name"] == "admin"
    assert admin["created_at"].endswith("Z")  # absolute, ISO-8601, UTC
    (token,) = asked[("token", "list", "--all")]
    assert token["user"] == "admin"
