"""Test-wide rules.

* ``needs_root()`` / ``needs_tool(name)`` skip a test with a clear reason when this machine
  cannot run it. Under ``PIMAN_REQUIRE_ROOT_TESTS=1`` (CI, as root) a skip is not allowed: the
  session fails if any test was skipped.
"""

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
    """Skip unless every named program is on PATH."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (installed by `make test` as root)")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not REQUIRE_ALL:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped:
        if reporter is not None:
            reporter.write_line(
                f"PIMAN_REQUIRE_ROOT_TESTS=1: {len(skipped)} test(s) skipped; every test must run "
                "here",
                red=True,
            )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
