"""The scraper: every node's agent, concurrently, every ``scrape_interval``, into the store.

Theory of operation
-------------------
Each target (one node's agent) has its own task with a fixed phase inside the interval (a hash
of its address, as Prometheus spreads targets), so 2,000 targets do not all connect at once.
At its phase the task fetches ``/metrics`` and ``/events`` together under one deadline
(``timeout``, below the interval), parses the body and hands a :class:`TargetBatch` to the
cycle buffer. A slow or dead target only ever waits on its own deadline. Once per interval the
flusher writes everything buffered in one transaction (:meth:`Tsdb.write`), then calls the
``on_flush`` callbacks (UI snapshot, forwarding).

Per target the collector writes ``up`` (1/0), ``scrape_duration_seconds`` and
``scrape_samples_scraped``, and adds ``job``/``instance``/``node`` to every series; scraped
labels with those names are kept as ``exported_job`` … (Prometheus' ``honor_labels: false``).
A body that does not parse counts as a failed scrape (``up`` 0, no samples), as in Prometheus.
The set of targets is re-read from the inventory every interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from piman.fleet.metrics import EVENT_FIELDS
from piman.monitor.collector.expfmt import (
    MalformedText,
    format_sample,
    format_value,
    parse_series,
    scan,
)
from piman.monitor.collector.fetch import StreamFetcher
from piman.monitor.collector.query import EVENTS_JOB, SCRAPE_JOB
from piman.monitor.collector.tsdb import TargetBatch, Tsdb

__all__ = ["Fetcher", "ScrapeTarget", "Scraper", "targets_for"]

logger = logging.getLogger(__name__)

LabelTuple = tuple[tuple[str, str], ...]
_RESERVED = frozenset(("job", "instance", "node"))


@dataclass(frozen=True, slots=True)
class ScrapeTarget:
    """One agent to scrape."""

    node: str
    metrics_url: str
    events_url: str | None

    @property
    def instance(self) -> str:
        return urlsplit(self.metrics_url).netloc


class _Node(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def ip(self) -> str | None: ...
    @property
    def agent_url(self) -> str | None: ...


def targets_for(nodes: Iterable[_Node], agent_port: int) -> list[ScrapeTarget]:
    """A target per node that has an ``agent_url`` or an IP (nodes with neither are skipped)."""
    out = []
    for n in nodes:
        if n.agent_url:
            parts = urlsplit(n.agent_url)
            path = parts.path if parts.path not in ("", "/") else "/metrics"
            metrics = urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))
            events = urlunsplit((parts.scheme, parts.netloc, "/events", "", ""))
        elif n.ip:
            metrics = f"http://{n.ip}:{agent_port}/metrics"
            events = f"http://{n.ip}:{agent_port}/events"
        else:
            continue
        out.append(ScrapeTarget(n.name, metrics, events))
    return out


class Fetcher(Protocol):
    """HTTP GET: ``(status, body)``; raises on network errors (callers add the deadline)."""

    async def get(self, url: str) -> tuple[int, str]: ...

    async def aclose(self) -> None: ...


@dataclass(slots=True)
class _TargetState:
    """Per-target caches: series text → series id (and → forwarding prefix)."""

    target: ScrapeTarget
    ids: dict[str, int] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(int(value, 0))
    return None


class Scraper:
    """The collector service (``serve()`` runs until cancelled)."""

    name = "scraper"

    def __init__(
        self,
        tsdb: Tsdb,
        targets: Callable[[], Awaitable[list[ScrapeTarget]]],
        *,
        interval: float = 15.0,
        timeout: float | None = None,
        fetcher: Fetcher | None = None,
        forward: bool = False,
        on_flush: Sequence[Callable[[list[TargetBatch]], Awaitable[None]]] = (),
    ) -> None:
        self.tsdb = tsdb
        self.targets = targets
        self.interval = interval
        self.timeout = min(timeout or interval * 0.8, interval * 0.95)
        self.fetcher = fetcher
        self.forward = forward
        self.on_flush = list(on_flush)
        self._states: dict[ScrapeTarget, _TargetState] = {}
        self._pending: list[TargetBatch] = []
        self._prefixes: dict[int, str] = {}  # series id → exposition text, when forwarding
        self.cycles = 0

    # -- one target ----------------------------------------------------------------------

    def phase(self, target: ScrapeTarget) -> float:
        """Fixed offset of a target inside the interval, from a hash of its address."""
        return (zlib.crc32(target.metrics_url.encode()) % 10_000) / 10_000 * self.interval

    def _sid(self, state: _TargetState, job: str, metric: str, labels: LabelTuple) -> int:
        t = state.target
        sid = self.tsdb.series_id(job, t.node, t.instance, metric, labels)
        if self.forward and sid not in self._prefixes:
            full = dict(labels)
            full.update(job=job, instance=t.instance, node=t.node)
            self._prefixes[sid] = format_sample(metric, sorted(full.items()), 0.0)[:-2]
        return sid

    def _ingest(self, state: _TargetState, body: str, batch: TargetBatch) -> None:
        """Add the samples of a body to ``batch``; raises MalformedText.

        Fast path: a line that is a series text already seen from this target, one blank and
        a plain number needs one dict lookup and one float(); anything else (new series,
        timestamps, odd spacing, NaN/Inf) goes through :func:`expfmt.scan` with full checks.
        """
        ids = state.ids
        add_id, add_value = batch.ids.append, batch.values.append
        for line in body.split("\n"):
            if not line or line[0] == "#":
                continue
            head, _, last = line.rpartition(" ")
            sid = ids.get(head)
            if sid is not None:
                try:
                    value = float(last)
                except ValueError:
                    pass
                else:
                    if value - value == 0.0 and "_" not in last:  # finite, Go spelling
                        add_id(sid)
                        add_value(value)
                        continue
            for series, value, _ts in scan(line):
                sid = ids.get(series)
                if sid is None:
                    sid = ids[series] = self._new_series(state, series)
                add_id(sid)
                add_value(value)

    def _new_series(self, state: _TargetState, series: str) -> int:
        name, labels = parse_series(series)
        if any(k in _RESERVED for k, _ in labels):
            labels = tuple(sorted((f"exported_{k}" if k in _RESERVED else k, v) for k, v in labels))
        return self._sid(state, SCRAPE_JOB, name, labels)

    def _events(self, state: _TargetState, body: dict[str, Any]) -> list[tuple[int, float]]:
        out = []
        for name in EVENT_FIELDS:
            value = _number(body.get(name))
            if value is not None:
                out.append((self._sid(state, EVENTS_JOB, name, ()), value))
        return out

    async def _fetch_events(self, url: str) -> dict[str, Any] | None:
        assert self.fetcher is not None
        try:
            status, text = await self.fetcher.get(url)
            body = json.loads(text) if status == 200 else None
        except (OSError, EOFError, ValueError) as err:
            logger.debug("scrape %s failed: %r", url, err)
            return None
        return body if isinstance(body, dict) else None

    async def scrape(self, state: _TargetState, now: float) -> TargetBatch:
        """Scrape one target once (never raises, except on cancellation).

        ``/events`` is fetched after ``/metrics`` on the same kept-alive connection and under
        the same deadline, only when ``/metrics`` answered; its failure does not change ``up``.
        """
        assert self.fetcher is not None
        t = state.target
        batch = TargetBatch(t.node, now)
        started = time.perf_counter()
        duration = None
        up = 0.0
        try:
            async with asyncio.timeout(self.timeout):
                status, body = await self.fetcher.get(t.metrics_url)
                duration = time.perf_counter() - started
                if status != 200:
                    logger.debug("[node=%s] scrape %s: HTTP %d", t.node, t.metrics_url, status)
                else:
                    self._ingest(state, body, batch)
                    up = 1.0
                    if t.events_url:
                        batch.events = await self._fetch_events(t.events_url)
        except MalformedText as err:
            logger.warning("[node=%s] scrape %s: bad body: %s", t.node, t.metrics_url, err)
            batch.clear()
        except (OSError, EOFError, ValueError, TimeoutError) as err:
            logger.debug("[node=%s] scrape %s failed: %r", t.node, t.metrics_url, err)
        if duration is None:
            duration = time.perf_counter() - started
        scraped = float(len(batch))
        if batch.events is not None:
            for sid, value in self._events(state, batch.events):
                batch.add(sid, value)
        for metric, value in (
            ("up", up),
            ("scrape_duration_seconds", duration),
            ("scrape_samples_scraped", scraped),
        ):
            batch.add(self._sid(state, SCRAPE_JOB, metric, ()), value)
        return batch

    async def _target_loop(self, state: _TargetState, epoch: float) -> None:
        """Scrape a target at ``epoch + phase + k·interval`` (event-loop clock) forever.

        Schedules use the loop's monotonic clock, so a wall-clock step never stalls or
        bunches scrapes; samples are stamped with the wall clock.
        """
        loop = asyncio.get_running_loop()
        phase = self.phase(state.target)
        k = math.ceil((loop.time() - epoch - phase) / self.interval)
        while True:
            at = epoch + phase + k * self.interval
            await asyncio.sleep(max(0.0, at - loop.time()))
            batch = await self.scrape(state, time.time())
            # Look up _pending only now: flush() may have swapped it while we scraped.
            self._pending.append(batch)
            k = max(k + 1, math.ceil((loop.time() - epoch - phase) / self.interval))

    def exposition(self, batches: Iterable[TargetBatch]) -> str:
        """The batches as Prometheus text with millisecond timestamps (for forwarding)."""
        prefixes = self._prefixes
        lines = []
        for batch in batches:
            ts = f" {int(batch.ts * 1000)}\n"
            for sid, value in zip(batch.ids, batch.values, strict=True):
                prefix = prefixes.get(sid)
                if prefix is not None:
                    lines.append(f"{prefix} {format_value(value)}{ts}")
        return "".join(lines)

    # -- the service -----------------------------------------------------------------------

    async def _sync_targets(self, epoch: float) -> None:
        try:
            wanted = set(await self.targets())
        except Exception:
            logger.exception("scraper: could not list targets; keeping the current ones")
            return
        for target in list(self._states):
            if target not in wanted:
                state = self._states.pop(target)
                if state.task is not None:
                    state.task.cancel()
        for target in wanted - set(self._states):
            state = self._states[target] = _TargetState(target)
            state.task = asyncio.create_task(self._target_loop(state, epoch), name=target.node)

    async def flush(self) -> list[TargetBatch]:
        """Write what was scraped since the last flush (one transaction) and run callbacks."""
        batches, self._pending = self._pending, []
        await self.tsdb.write(batches)
        self.cycles += 1
        for callback in self.on_flush:
            try:
                await callback(batches)
            except Exception:
                logger.exception("scraper: flush callback failed")
        return batches

    async def serve(self) -> None:
        own_fetcher = self.fetcher is None
        if self.fetcher is None:
            self.fetcher = StreamFetcher()
        loop = asyncio.get_running_loop()
        # Cycles start on wall-clock multiples of the interval (as seen now), then follow the
        # loop's monotonic clock.
        epoch = loop.time() - time.time() % self.interval
        try:
            while True:
                await self._sync_targets(epoch)
                now = loop.time()
                next_flush = epoch + ((now - epoch) // self.interval + 1) * self.interval
                await asyncio.sleep(max(0.0, next_flush - now))
                await self.flush()
        finally:
            for state in self._states.values():
                if state.task is not None:
                    state.task.cancel()
            tasks = [s.task for s in self._states.values() if s.task is not None]
            await asyncio.gather(*tasks, return_exceptions=True)
            self._states.clear()
            if self.fetcher is not None:
                await self.fetcher.aclose()  # idle connections; the fetcher stays usable
                if own_fetcher:
                    self.fetcher = None
