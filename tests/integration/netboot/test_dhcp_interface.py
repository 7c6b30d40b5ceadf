"""Authoritative DHCP must know where to answer: without ``manager.interface`` (or an explicit
``dhcp.listen``) it would bind 0.0.0.0 and hand out addresses on every network the manager is on.

The manager runs in a network namespace of its own, so that even a server that wrongly starts
touches none of this machine's interfaces.
"""

from __future__ import annotations

import sys

import yaml

from tests.integration.netlab import NetLab
from tests.support import free_port, needs_root, needs_tool


def _config(lab: NetLab, dhcp: dict[str, object], interface: str | None = None) -> str:
    manager: dict[str, object] = {
        "address": "198.18.0.1",
        "network": "198.18.0.0/24",
        "data_dir": str(lab.tmp / "data"),
        "http": f"127.0.0.1:{free_port()}",
    }
    if interface:
        manager["interface"] = interface
    path = lab.tmp / "piman.yaml"
    path.write_text(yaml.safe_dump({"manager": manager, "dhcp": dhcp}), encoding="utf-8")
    return str(path)


def test_authoritative_dhcp_without_an_interface_refuses_to_start_in_one_line() -> None:
    needs_root()
    needs_tool("ip", "ss")
    with NetLab(clients=0) as lab:
        config = _config(lab, {"mode": "authoritative", "pool": "198.18.0.100-198.18.0.199"})
        result = lab.run(
            lab.server, sys.executable, "-m", "piman", "server", "--config", config,
            check=False, timeout=60,
        )  # fmt: skip
        assert result.returncode == 2, result.stderr
        # The manager's start-up log lines, then the error: one line, saying what to set.
        error = result.stderr.strip().splitlines()[-1]
        assert error.startswith("config: manager.interface: authoritative DHCP needs"), error
        assert "dhcp.listen" in error
        assert "Traceback" not in result.stdout + result.stderr
        # Nothing was left listening on port 67.
        assert not lab.run(lab.server, "ss", "-Hlun", "sport", "= :67").stdout.strip()


def test_an_explicit_listen_address_is_enough() -> None:
    needs_root()
    needs_tool("ip", "ss")
    with NetLab(clients=0) as lab:
        # The operator said where: 0.0.0.0:67 of the namespace, which has one interface.
        lab.write_config({"manager": {"interface": None}, "dhcp": {"listen": "0.0.0.0:67"}})
        proc = lab.start_manager(config=lab.tmp / "piman.yaml")  # returns once port 67 listens
        assert proc.poll() is None
