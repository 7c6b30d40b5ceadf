"""Where the collectors read a machine's /proc and /sys: the port and its local implementation.

The collectors never open a file themselves: they ask a :class:`NodeFiles` for a file's text, a
directory's entries or where a link points. :class:`LocalFiles` answers from this machine (the
agent); the manager answers from a copy of another machine's files printed by one command over
SSH (``piman.monitor.collector.sshsample``), so both run the same parsing code.
"""

from __future__ import annotations

import os
from typing import Protocol

__all__ = ["FsStat", "LocalFiles", "NodeFiles"]


class NodeFiles(Protocol):
    """Read-only access to a machine's /proc and /sys, by absolute path."""

    def read(self, path: str) -> str:
        """The file's text; OSError when it is missing or unreadable."""

    def listdir(self, path: str) -> list[str]:
        """A directory's entry names, sorted; OSError when it is not a directory."""

    def realpath(self, path: str) -> str:
        """``path`` with its symbolic links resolved (as ``os.path.realpath``)."""

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists (a link counts when its target does)."""


class FsStat(Protocol):
    """The fields of ``statvfs(3)`` the collectors use (``os.statvfs_result`` has them)."""

    @property
    def f_frsize(self) -> int: ...
    @property
    def f_blocks(self) -> int: ...
    @property
    def f_bfree(self) -> int: ...
    @property
    def f_bavail(self) -> int: ...
    @property
    def f_files(self) -> int: ...
    @property
    def f_ffree(self) -> int: ...


class LocalFiles:
    """This machine's files."""

    def read(self, path: str) -> str:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(path))

    def realpath(self, path: str) -> str:
        return os.path.realpath(path)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)
