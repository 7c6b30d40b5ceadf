"""The fuzz suite's rules: how much it tries, and what it reports.

Profiles. Every fuzz test reads its budget from one profile, chosen by ``PIMAN_FUZZ_PROFILE``
(``dev`` or ``ci``); without it, ``ci`` in a CI run (``.ci/run`` sets
``PIMAN_REQUIRE_ROOT_TESTS=1``, hosted runners set ``CI``) and ``dev`` otherwise. ``ci`` tries
several times more and runs derandomized (a fixed seed, so a red run can be replayed);
``PIMAN_FUZZ_SEED`` changes the seed of the mutation-based tests. The hypothesis settings are
applied to the fuzz tests only (``budget().settings``): they are registered as
``piman-fuzz-dev`` / ``piman-fuzz-ci``, never loaded as the global profile, and never named
``ci`` — hypothesis loads a profile of that name by itself under ``CI``, which would change
every other hypothesis test of the suite.

Counts. Each fuzz test hands its line (``fuzz dhcp: 20000 datagrams, 0 crashes, fd 12 → 12``)
to the ``fuzz_report`` fixture; they are printed in a ``fuzz counts`` section of the terminal
summary, so they show in any pytest run, with or without ``-s``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest
from hypothesis import HealthCheck, settings

from tests.support import REQUIRE_ALL


@dataclass(frozen=True, slots=True)
class Budget:
    """How much one fuzz run tries (per test)."""

    name: str
    examples: int  # hypothesis examples per codec property
    datagrams: int  # mutated datagrams fed to a live DHCP or TFTP server
    requests: int  # mutated requests fed to the live agent
    api_examples: int  # schemathesis examples per operation and role
    api_seconds: float  # schemathesis time budget per role
    seed: int

    @property
    def settings(self) -> settings:
        return settings.get_profile(f"piman-fuzz-{self.name}")

    def hypothesis(self, share: float = 1.0) -> settings:
        """The profile's hypothesis settings with ``share`` of its examples (for properties
        whose examples cost more: a configuration loaded through pydantic …)."""
        return settings(self.settings, max_examples=max(50, int(self.examples * share)))


_COMMON = {
    "deadline": None,
    "database": None,
    "print_blob": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
settings.register_profile("piman-fuzz-dev", max_examples=500, **_COMMON)  # type: ignore[arg-type]
settings.register_profile(
    "piman-fuzz-ci",
    max_examples=4000,
    derandomize=True,
    **_COMMON,  # type: ignore[arg-type]
)

_BUDGETS = {
    "dev": Budget("dev", 500, 4000, 1500, 8, 12.0, 1),
    "ci": Budget("ci", 4000, 20000, 6000, 30, 16.0, 1),
}


def _profile() -> str:
    chosen = os.environ.get("PIMAN_FUZZ_PROFILE")
    if chosen is None:
        in_ci = os.environ.get("CI", "").lower() not in ("", "0", "false")
        chosen = "ci" if in_ci or REQUIRE_ALL else "dev"
    if chosen not in _BUDGETS:
        raise pytest.UsageError(f"PIMAN_FUZZ_PROFILE={chosen!r}: expected one of dev, ci")
    return chosen


def budget() -> Budget:
    """The budget of this run (``PIMAN_FUZZ_PROFILE``, ``CI``, ``PIMAN_FUZZ_SEED``)."""
    chosen = _BUDGETS[_profile()]
    seed = os.environ.get("PIMAN_FUZZ_SEED")
    return chosen if seed is None else replace(chosen, seed=int(seed))


_LINES = pytest.StashKey[list[str]]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_LINES] = []


@pytest.fixture
def fuzz_report(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Record one line for the ``fuzz counts`` section of the terminal summary."""
    return request.config.stash.setdefault(_LINES, []).append


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = terminalreporter.config.stash.get(_LINES, [])
    if not lines:
        return
    terminalreporter.section(f"fuzz counts (profile {_profile()})")
    for line in lines:
        terminalreporter.write_line(line)
