"""Helpers shared by tests: skip (or, in CI, fail) when a test cannot run on this machine."""

from __future__ import annotations

import os
import shutil

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
