"""What :class:`~piman.monitor.agent.collectors.LinuxNode` reads and asks of the machine it
reports on, in one value: this machine by default (the agent).

Agentless monitoring builds one from the output of a command run over SSH
(``piman.monitor.collector.sshsample``): the same collectors then run over another machine's
files, its ``statvfs`` answers, ``uname``, clock tick and page size, and vcgencmd replies.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from piman.monitor.agent.devices import StatFs
from piman.monitor.agent.files import FsStat, LocalFiles, NodeFiles
from piman.monitor.agent.pi import PiReadings

__all__ = ["Machine", "PiReader", "Uname"]


class Uname(Protocol):
    """The fields of ``uname(2)`` (``os.uname_result`` has them)."""

    @property
    def sysname(self) -> str: ...
    @property
    def nodename(self) -> str: ...
    @property
    def release(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def machine(self) -> str: ...


class PiReader(Protocol):
    """One round of vcgencmd readings (:class:`~piman.monitor.agent.pi.Vcgencmd`)."""

    def read(self) -> PiReadings: ...


def _ticks() -> float:
    return float(os.sysconf("SC_CLK_TCK"))


def _page_size() -> int:
    return os.sysconf("SC_PAGE_SIZE")


def _uname() -> Uname:
    return os.uname()


def _statvfs(path: str) -> FsStat:
    return os.statvfs(path)


@dataclass(slots=True)
class Machine:
    """The machine's files and system calls (defaults: this machine).

    ``statfs(path, fstype)`` serves the filesystem collector (None: the call is stuck);
    ``statvfs(path)`` the ``disk_percent`` of ``/events``. ``process`` adds the reporting
    process's own ``process_*`` metrics (the agent's; none when sampled over SSH).
    """

    files: NodeFiles = field(default_factory=LocalFiles)
    statfs: Callable[[str, str], FsStat | None] = field(default_factory=StatFs)
    statvfs: Callable[[str], FsStat] = _statvfs
    uname: Callable[[], Uname] = _uname
    ticks: float = field(default_factory=_ticks)
    page_size: int = field(default_factory=_page_size)
    vcgencmd: PiReader | None = None
    process: bool = True
