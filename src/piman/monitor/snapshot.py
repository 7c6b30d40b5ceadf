"""What the web UI shows per node, precomputed after each scrape cycle (templates cannot await).

:class:`NodeSnapshots` keeps, per node, the latest ``/events`` values and a short history of CPU
and temperature, and renders the history as the ``points`` of an inline SVG polyline.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from piman.monitor.tsdb import TargetBatch

__all__ = ["HISTORY", "NodeSnapshot", "NodeSnapshots", "sparkline"]

HISTORY = 40  # points kept per node (10 minutes at 15 s)
WIDTH, HEIGHT = 80, 20


def sparkline(values: list[float | None], top: float = 100.0) -> str:
    """SVG polyline points for values in [0, top], oldest left; gaps (None) are skipped."""
    if not values:
        return ""
    dx = WIDTH / max(len(values) - 1, 1)
    pts = []
    for i, v in enumerate(values):
        if v is None:
            continue
        y = HEIGHT - min(max(v, 0.0), top) / top * HEIGHT
        pts.append(f"{i * dx:.1f},{y:.1f}")
    return " ".join(pts)


@dataclass(slots=True)
class NodeSnapshot:
    """One node's latest values (None when unknown) and short histories."""

    up: bool = False
    time: float = 0.0
    cpu: float | None = None
    memory: float | None = None
    disk: float | None = None
    temperature: float | None = None
    cpu_history: deque[float | None] = field(default_factory=lambda: deque(maxlen=HISTORY))
    temp_history: deque[float | None] = field(default_factory=lambda: deque(maxlen=HISTORY))

    @property
    def cpu_points(self) -> str:
        return sparkline(list(self.cpu_history))

    @property
    def temp_points(self) -> str:
        return sparkline(list(self.temp_history))


def _num(events: dict[str, Any], key: str) -> float | None:
    value = events.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class NodeSnapshots(dict[str, NodeSnapshot]):
    """Node name → :class:`NodeSnapshot`; :meth:`refresh` is a scraper ``on_flush`` callback."""

    async def refresh(self, batches: list[TargetBatch]) -> None:
        for batch in batches:
            snap = self.get(batch.node)
            if snap is None:
                snap = self[batch.node] = NodeSnapshot()
            snap.time = batch.ts
            ev = batch.events
            # The scraper appends up, scrape_duration_seconds, scrape_samples_scraped last.
            snap.up = len(batch) >= 3 and batch.values[-3] == 1.0
            if ev is None:
                snap.cpu = snap.memory = snap.disk = snap.temperature = None
            else:
                snap.cpu = _num(ev, "cpu_percent")
                snap.memory = _num(ev, "memory_percent")
                snap.disk = _num(ev, "disk_percent")
                snap.temperature = _num(ev, "temperature_celsius")
            snap.cpu_history.append(snap.cpu)
            snap.temp_history.append(snap.temperature)
