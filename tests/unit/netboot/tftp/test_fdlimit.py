"""The open-file limit: raised when TFTP starts, and the room it leaves for transfers."""

from __future__ import annotations

import subprocess
import sys

import pytest

from piman.netboot.tftp.fdlimit import FDS_PER_TRANSFER, transfer_room
from tests.support import needs_tool

SHOW = (
    "import resource, sys\n"
    "from piman.netboot.tftp.fdlimit import raise_nofile\n"
    "print(*raise_nofile(int(sys.argv[1])), *resource.getrlimit(resource.RLIMIT_NOFILE))\n"
)


@pytest.mark.parametrize(
    ("limits", "wanted", "after"),
    [
        ("1024:16384", 4096, [4096, 16384]),  # raised to what is wanted
        ("1024:4096", 65536, [4096, 4096]),  # raised as far as the hard limit goes
        ("1024:1024", 65536, [1024, 1024]),  # nothing to raise
        ("8000:16000", 4096, [8000, 16000]),  # never lowered
    ],
)
def test_the_soft_limit_is_raised_towards_the_hard_one(
    limits: str, wanted: int, after: list[int]
) -> None:
    needs_tool("prlimit")
    done = subprocess.run(
        ["prlimit", f"--nofile={limits}", "--", sys.executable, "-c", SHOW, str(wanted)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [int(n) for n in done.stdout.split()] == after * 2


def test_transfers_get_what_the_reserve_leaves() -> None:
    assert transfer_room(65536, 100, 512) == (65536 - 612) // FDS_PER_TRANSFER
    assert transfer_room(1024, 40, 512) == 236
    assert transfer_room(1024, 600, 512) < 0
