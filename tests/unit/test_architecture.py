"""The import contract (``.importlinter``) holds on the tree, and breaks on the imports it forbids.

``make lint`` runs the same contract on the tree; here a copy of the package gets one bad import
at a time, to show the contract is not a rubber stamp.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    shutil.copy(ROOT / ".importlinter", tree / ".importlinter")
    return subprocess.run(
        [str(LINT), "--no-cache"],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(tree)},
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    shutil.copytree(
        ROOT / "src" / "piman",
        tmp_path / "piman",
        ignore=shutil.ignore_patterns("*.so", "__pycache__"),
    )
    return tmp_path


def test_the_tree_keeps_every_contract(tree: Path) -> None:
    result = lint(tree)
    assert result.returncode == 0, result.stdout
    assert "5 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        # A capability reaching up into the web.
        (
            "power/controller.py",
            "from piman.web import app",
            "piman.power is not allowed to import piman.web",
        ),
        # The store reaching up into a capability.
        (
            "store/db.py",
            "import piman.monitor.service",
            "piman.store is not allowed to import piman.monitor",
        ),
        # SQLAlchemy outside the store.
        (
            "netboot/boottree.py",
            "import sqlalchemy",
            "piman.netboot is not allowed to import sqlalchemy",
        ),
        # The agent (runs on a Pi) importing the manager's configuration.
        (
            "monitor/agent/app.py",
            "import piman.config",
            "piman.monitor.agent is not allowed to import piman.config",
        ),
        # A cycle inside one package.
        (
            "store/tables.py",
            "import piman.store.db",
            "No import cycles among the modules of any package BROKEN",
        ),
    ],
)
def test_a_forbidden_import_breaks_the_contract(
    tree: Path, module: str, line: str, broken: str
) -> None:
    path = tree / "piman" / module
    path.write_text(path.read_text() + f"\n{line}  # noqa\n")
    result = lint(tree)
    assert result.returncode != 0
    assert broken in result.stdout, result.stdout
