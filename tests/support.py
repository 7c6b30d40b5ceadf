"""Helpers shared by tests: skip (or, in CI, fail) when a test cannot run on this machine."""

from __future__ import annotations

import os
import shutil
import socket

import pytest

REQUIRE_ALL = os.environ.get("PIMAN_REQUIRE_ROOT_TESTS") == "1"


def needs_root() -> None:
    """Skip unless root (network namespaces, raw sockets, privileged ports)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces); run `make test` as root")


def needs_tool(*names: str) -> None:
    """Skip unless every named program is on PATH (or in /usr/sbin, /sbin)."""
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    missing = [n for n in names if shutil.which(n, path=path) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (installed by `make test` as root)")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# The original piman's configuration, as its README gives it (with a hosts-free two-switch rack).
SEED_YAML = """\
private_number: 4
server_address: 172.30.4.1
subnet_mask: 255.255.255.0
interface: ens4
switch_count: 2
switches:
  - swtich_0_address: 172.30.4.254
    pi_addresses: [172.30.4.13, 172.30.4.14]
  - swtich_1_address: 172.30.4.128
    pi_addresses: [172.30.4.2]
"""
