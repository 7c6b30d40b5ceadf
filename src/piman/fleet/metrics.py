"""Metric values as every part of piman sees them: one sample, one series, one node's snapshot.

The collector writes and reads them, the alert evaluator judges them, the web shows them; one
pair of types for all (see ``piman.monitor.collector.query`` for what the labels hold).
Time is UNIX seconds as float (UTC).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["EVENT_FIELDS", "SNAPSHOT_HISTORY", "Labels", "NodeSnapshot", "Sample", "Series"]

Labels = Mapping[str, str]
# The numeric fields of the agent's ``/events`` JSON (the seed's contract, plus temperature and
# throttling): the collector stores each as a series under its bare name, rules select them so.
EVENT_FIELDS = (
    "cpu_percent",
    "memory_percent",
    "disk_percent",
    "temperature_celsius",
    "num_pids",
    "throttled",
)
SNAPSHOT_HISTORY = 40  # points kept per node in a snapshot (10 minutes at 15 s)


@dataclass(frozen=True, slots=True)
class Sample:
    """The value of one series at one time. ``labels`` never hold ``__name__``."""

    metric: str
    labels: Labels
    ts: float
    value: float


@dataclass(frozen=True, slots=True)
class Series:
    """One series over a time range: ``points`` are ``(ts, value)`` sorted by time."""

    metric: str
    labels: Labels
    points: list[tuple[float, float]] = field(default_factory=list)


@dataclass(slots=True)
class NodeSnapshot:
    """One node's latest ``/events`` values (None when unknown) and short histories."""

    up: bool = False
    time: float = 0.0
    cpu: float | None = None
    memory: float | None = None
    disk: float | None = None
    temperature: float | None = None
    cpu_history: deque[float | None] = field(default_factory=lambda: deque(maxlen=SNAPSHOT_HISTORY))
    temp_history: deque[float | None] = field(
        default_factory=lambda: deque(maxlen=SNAPSHOT_HISTORY)
    )
