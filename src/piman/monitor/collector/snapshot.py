"""What the web UI shows per node, precomputed after each scrape cycle (templates cannot await).

:class:`NodeSnapshots` keeps, per node, the latest ``/events`` values and a short history of CPU
and temperature (a :class:`~piman.fleet.metrics.NodeSnapshot`).
"""

from __future__ import annotations

from typing import Any

from piman.fleet.metrics import NodeSnapshot
from piman.monitor.collector.tsdb_tables import TargetBatch

__all__ = ["NodeSnapshots"]


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
