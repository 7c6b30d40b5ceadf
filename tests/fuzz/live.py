"""What every live-server fuzz run checks: no exception logged, descriptors back where they were."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["Problems", "fds", "logged_problems", "settled_fds", "steady_fds"]


def fds(pid: int | str = "self") -> list[str]:
    """What a process' open descriptors point at (``/proc/<pid>/fd``), sorted."""
    out = []
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        try:
            out.append(os.readlink(entry))
        except OSError:  # closed meanwhile (or the one listing the directory)
            continue
    return sorted(out)


def steady_fds(pid: int | str = "self", *, still: float = 1.0, within: float = 30.0) -> list[str]:
    """``fds(pid)`` once their number held still for ``still`` seconds (or after ``within``)."""
    last = fds(pid)
    since = time.monotonic()
    deadline = since + within
    while time.monotonic() - since < still and time.monotonic() < deadline:
        time.sleep(0.05)
        now = fds(pid)
        if len(now) != len(last):
            last, since = now, time.monotonic()
    return last


class Problems(logging.Handler):
    """Collects log records that are errors or carry an exception, from every logger."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)

    def lines(self) -> list[str]:
        return [f"{r.levelname} {r.name}: {r.getMessage()}" for r in self.records]


@contextmanager
def logged_problems() -> Iterator[Problems]:
    """Watch the root logger (asyncio's "Exception in callback" included) while inside."""
    handler = Problems()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


async def settled_fds(
    pid: int | str = "self", *, still: float = 1.0, within: float = 30.0
) -> list[str]:
    """:func:`steady_fds` without blocking the event loop: for servers that close their
    sockets from the loop of the test itself."""
    last = fds(pid)
    since = time.monotonic()
    deadline = since + within
    while time.monotonic() - since < still and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        now = fds(pid)
        if len(now) != len(last):
            last, since = now, time.monotonic()
    return last
