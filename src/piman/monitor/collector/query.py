"""The read side of the time-series store: what the alert evaluator, the API and the UI ask.

Everything here is plain data plus one :class:`MetricsQuery` protocol. The SQLite store
(:class:`piman.monitor.collector.tsdb.Tsdb`) implements it; :class:`MemoryQuery` is an in-memory
fake for unit tests of code that reads metrics (the alert evaluator), with the same semantics.

Series and labels
-----------------
A series is a metric name plus a label set, exactly as scraped from ``/metrics``, plus the
labels the collector adds to every sample of a target:

- ``job``: ``"piman"`` for ``/metrics`` samples, ``"piman_events"`` for ``/events`` fields;
- ``instance``: ``host:port`` of the agent;
- ``node``: the node's name in the inventory.

The collector also writes, per target and cycle, the synthetic series ``up`` (1 when the scrape
succeeded, 0 otherwise — timeouts, refused connections, HTTP errors, unparsable bodies),
``scrape_duration_seconds`` and ``scrape_samples_scraped``, with the same three labels. So the
rule ``up == 0`` selects one sample per node, present even for a dead node.

``/events`` fields
------------------
The numeric fields of the agent's ``/events`` JSON (``cpu_percent``, ``memory_percent``,
``disk_percent``, ``temperature_celsius``, ``num_pids``, ``throttled``) are stored as series
under their **bare field names**, with labels ``job="piman_events"``, ``instance`` and ``node``,
timestamped with the collector's scrape time. So ``temperature_celsius >= 80`` is an ordinary
metric selector for the evaluator: no special case. ``throttled`` is stored as a number (the
``vcgencmd get_throttled`` mask when the agent reports one, booleans as 0/1). No node_exporter
metric uses these bare names, so they cannot clash. Fields that are absent or ``null`` are not
written (the series then has no fresh sample, and :meth:`MetricsQuery.latest` skips it).
The whole latest JSON object is also kept per node for :meth:`MetricsQuery.latest_events`.

Matchers
--------
``matchers`` is a mapping of label name to exact value (Prometheus' ``=``); an empty value
matches series where that label is absent, as in Prometheus. Only equality is supported.

Staleness
---------
:meth:`MetricsQuery.latest` returns, for each matching series, its newest sample at or before
``at`` (default: now) and not older than ``lookback`` seconds (default 300 s, Prometheus'
staleness window), so a node that vanished from the inventory stops producing samples after 5
minutes, while its ``up`` keeps being written as 0 as long as it is still scraped.

Limits
------
A range query is bounded (:class:`QueryLimits`): series that match, points per series
(Prometheus' 11,000, with or without a step), points in the answer and rows read from the
store. A query over any of them raises :class:`QueryTooLarge` rather than answering in part.

Time is always UNIX seconds as float (UTC).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from piman.errors import PimanError
from piman.fleet.metrics import EVENT_FIELDS, Labels, Sample, Series

__all__ = [
    "DEFAULT_LOOKBACK",
    "EVENTS_JOB",
    "SCRAPE_JOB",
    "MemoryQuery",
    "MetricsQuery",
    "QueryLimits",
    "QueryTooLarge",
    "events_from_series",
    "labels_match",
]

DEFAULT_LOOKBACK = 300.0
SCRAPE_JOB = "piman"
EVENTS_JOB = "piman_events"


@dataclass(frozen=True, slots=True)
class QueryLimits:
    """How much one range query may match, read and answer."""

    series: int = 10_000
    points_per_series: int = 11_000  # Prometheus' limit
    points: int = 250_000  # in the whole answer
    rows: int = 1_000_000  # read from the store (raw samples and rollups)


class QueryTooLarge(PimanError):
    """A metrics query would match, read or return more than its limits (the caller's to fix)."""


def labels_match(labels: Labels, matchers: Labels | None) -> bool:
    """True when every matcher holds (``name=""`` matches a missing label)."""
    if not matchers:
        return True
    return all(labels.get(k, "") == v for k, v in matchers.items())


async def events_from_series(
    query: MetricsQuery, node: str, start: float, end: float
) -> list[dict[str, Any]]:
    """A node's stored ``/events`` fields, one dict per scrape time in [start, end], oldest first.

    Any store that keeps the fields as ``job="piman_events"`` series answers ``events_range`` so.
    """
    rows: dict[float, dict[str, Any]] = {}
    for name in EVENT_FIELDS:
        for series in await query.range(name, {"job": EVENTS_JOB, "node": node}, start, end):
            for ts, value in series.points:
                rows.setdefault(ts, {"time": ts})[name] = value
    return [rows[t] for t in sorted(rows)]


@runtime_checkable
class MetricsQuery(Protocol):
    """What code reading the store may ask. All methods are safe to call from the event loop."""

    async def latest(
        self,
        metric: str,
        matchers: Labels | None = None,
        *,
        at: float | None = None,
        lookback: float = DEFAULT_LOOKBACK,
    ) -> list[Sample]:
        """Newest sample of each matching series in ``(at - lookback, at]``."""
        ...

    async def range(
        self,
        metric: str,
        matchers: Labels | None,
        start: float,
        end: float,
        step: float | None = None,
    ) -> list[Series]:
        """Samples of each matching series in ``[start, end]``.

        With ``step`` None, raw samples (or rollups, for periods past raw retention). With a
        ``step``, one point per step (Prometheus' query_range semantics: the newest sample at or
        before each step time, within the lookback); a step of 60 s or more may be served from
        the 1-minute/1-hour rollups (their ``avg``) when raw samples were already dropped.
        Raises QueryTooLarge past the store's :class:`QueryLimits`.
        """
        ...

    async def latest_events(self, node: str) -> dict[str, Any] | None:
        """The latest ``/events`` JSON of a node as the agent sent it, or None if none yet."""
        ...

    async def events_range(self, node: str, start: float, end: float) -> list[dict[str, Any]]:
        """Per scrape time in ``[start, end]``, the stored ``/events`` fields of a node.

        Each dict has ``time`` (scrape time) plus the :data:`EVENT_FIELDS` that were present.
        """
        ...


class MemoryQuery:
    """In-memory :class:`MetricsQuery` for tests, fed by :meth:`add` and :meth:`set_events`."""

    def __init__(self) -> None:
        self._series: dict[tuple[str, tuple[tuple[str, str], ...]], list[tuple[float, float]]] = {}
        self._events: dict[str, dict[str, Any]] = {}

    def add(self, metric: str, labels: Labels, ts: float, value: float) -> None:
        """Append one sample (samples of a series must be added in time order)."""
        key = (metric, tuple(sorted(labels.items())))
        self._series.setdefault(key, []).append((ts, value))

    def set_events(self, node: str, events: dict[str, Any], ts: float) -> None:
        """Record an /events snapshot: the JSON, and its numeric fields as series."""
        self._events[node] = dict(events)
        labels = {"job": EVENTS_JOB, "instance": node, "node": node}
        for name in EVENT_FIELDS:
            value = events.get(name)
            if value is not None:
                self.add(name, labels, ts, float(value))

    def _matching(
        self, metric: str, matchers: Labels | None
    ) -> list[tuple[dict[str, str], list[tuple[float, float]]]]:
        out = []
        for (name, items), points in self._series.items():
            labels = dict(items)
            if name == metric and labels_match(labels, matchers):
                out.append((labels, points))
        return out

    async def latest(
        self,
        metric: str,
        matchers: Labels | None = None,
        *,
        at: float | None = None,
        lookback: float = DEFAULT_LOOKBACK,
    ) -> list[Sample]:
        at = time.time() if at is None else at
        out = []
        for labels, points in self._matching(metric, matchers):
            fresh = [p for p in points if at - lookback < p[0] <= at]
            if fresh:
                ts, value = fresh[-1]
                out.append(Sample(metric, labels, ts, value))
        return out

    async def range(
        self,
        metric: str,
        matchers: Labels | None,
        start: float,
        end: float,
        step: float | None = None,
    ) -> list[Series]:
        out = []
        for labels, points in self._matching(metric, matchers):
            if step is None:
                pts = [p for p in points if start <= p[0] <= end]
            else:
                pts = []
                t = start
                while t <= end:
                    before = [p for p in points if t - DEFAULT_LOOKBACK < p[0] <= t]
                    if before:
                        pts.append((t, before[-1][1]))
                    t += step
            if pts:
                out.append(Series(metric, labels, pts))
        return out

    async def latest_events(self, node: str) -> dict[str, Any] | None:
        return self._events.get(node)

    async def events_range(self, node: str, start: float, end: float) -> list[dict[str, Any]]:
        return await events_from_series(self, node, start, end)
