"""Test-wide rules.

Tests call ``tests.support.needs_root()`` / ``needs_tool(name)`` to skip with a clear reason when
this machine cannot run them. Under ``PIMAN_REQUIRE_ROOT_TESTS=1`` (CI, as root) a skip is not
allowed: the session fails if any test was skipped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from piman.store import Store
from tests.support import REQUIRE_ALL

# Hypothesis fails an example slower than 200 ms (its default deadline) and a strategy that draws
# slowly (a health check): on a busy 2-core machine both measure the load, not the code. Every
# other setting stays as hypothesis chose it (under CI, its own "ci" profile); the fuzz suite
# brings its own settings (tests/fuzz/conftest.py).
settings.register_profile(
    "piman", settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
)
settings.load_profile("piman")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    """An open, migrated, empty store in a temporary SQLite file."""
    s = Store(f"sqlite+aiosqlite:///{tmp_path / 'piman.db'}")
    await s.open()
    try:
        yield s
    finally:
        await s.close()


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
