"""The alert evaluator service: the thin asyncio shell around the pure AlertBook.

Every ``interval`` it reads each rule's samples from the time-series store at ``now``, advances the
book, and saves the tick's changes — alert states, groups, history and the notifications for every
receiver's outbox — in one transaction, then wakes the notifier. A tick whose save fails (disk
full, database locked) forgets nothing: the next tick saves both. At start it restores the book
from the store and, when the last evaluation is older than two intervals, replays the gap over
the stored samples (:meth:`AlertService.catch_up`), marking what it sends late.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Gauge

from piman.config.matchers import Matcher, Selector, matches
from piman.errors import PimanError, StoreError
from piman.fleet.metrics import Sample, Series
from piman.fleet.ports import AlertRepository
from piman.fleet.records import AlertHistoryRecord, AlertRecord
from piman.monitor.alerting.book import (
    Alert,
    AlertBook,
    AlertState,
    Group,
    GroupSettings,
    Notification,
    SampleSource,
    replay_times,
    samples_at,
)
from piman.monitor.alerting.rules import Rule
from piman.monitor.alerting.silences import Silence

__all__ = ["AlertService", "MetricsReader", "QuerySource"]

logger = logging.getLogger(__name__)

LAST_EVALUATED = "last_evaluated_at"
MAX_CATCH_UP = 24 * 3600.0
CATCH_UP_WINDOW = 600.0
KEEP_HISTORY = 30 * 86400.0  # alert history, delivered and dead notifications
PRUNE_EVERY = 3600.0
MAX_UNSAVED = 10_000  # notifications kept in memory while the store refuses saves


class MetricsReader(Protocol):
    """The part of :class:`piman.monitor.collector.query.MetricsQuery` the evaluator uses."""

    async def latest(
        self,
        metric: str,
        matchers: Mapping[str, str] | None = None,
        *,
        at: float | None = None,
        lookback: float = 300.0,
    ) -> Sequence[Sample]: ...

    async def range(
        self,
        metric: str,
        matchers: Mapping[str, str] | None,
        start: float,
        end: float,
        step: float | None = None,
    ) -> Sequence[Series]: ...


class QuerySource:
    """A :class:`SampleSource` over the time-series store's query interface.

    The store matches labels by equality only; ``!=``, ``=~`` and ``!~`` matchers are applied here.
    """

    def __init__(self, query: MetricsReader, lookback: float) -> None:
        self.query = query
        self.lookback = lookback

    @staticmethod
    def _split(selector: Selector) -> tuple[dict[str, str] | None, list[Matcher]]:
        equal = {m.label: m.value for m in selector.matchers if m.op == "="}
        rest = [m for m in selector.matchers if m.op != "="]
        return equal or None, rest

    async def instant(self, selector: Selector, at: float) -> list[Sample]:
        equal, rest = self._split(selector)
        rows = await self.query.latest(selector.metric, equal, at=at, lookback=self.lookback)
        return [r for r in rows if matches(rest, r.labels)]

    async def series(self, selector: Selector, start: float, end: float) -> list[Series]:
        equal, rest = self._split(selector)
        rows = await self.query.range(selector.metric, equal, start, end)
        return [r for r in rows if matches(rest, r.labels)]


class AlertService:
    """Evaluates the rules every ``interval`` and queues notifications. ``serve()`` runs it."""

    name = "alerts"

    def __init__(
        self,
        rules: Sequence[Rule],
        repo: AlertRepository,
        source: SampleSource,
        settings: GroupSettings,
        *,
        interval: float,
        receivers: Sequence[str] = (),
        wake: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
        lookback: float | None = None,
        registry: CollectorRegistry | None = None,
        ready: Callable[[], Awaitable[object]] | None = None,
        fresh: Callable[[], float] | None = None,
    ) -> None:
        self.rules = list(rules)
        self.repo = repo
        self.source = source
        self.settings = settings
        self.interval = interval
        self.receivers = list(receivers)
        self.wake = wake
        self.clock = clock
        self.lookback = lookback if lookback is not None else max(3 * interval, 60.0)
        self.ready = ready
        self.fresh = fresh
        self.started_at = 0.0
        self.restored = asyncio.Event()  # set once the book was restored from the store
        self.book = AlertBook(settings)
        self._unsaved: list[tuple[str, dict[str, Any], float]] = []  # (key, payload, queued at)
        self.recent: list[AlertHistoryRecord] = []
        self._bad_silences: set[str] = set()
        self.last_evaluated: float | None = None
        self._gauge = (
            Gauge("piman_alerts", "Alerts by state.", ["state"], registry=registry)
            if registry is not None
            else None
        )

    # What the UI, API and CLI read ------------------------------------------------------------

    def active(self) -> list[AlertRecord]:
        """Pending and firing alerts, firing and oldest first."""
        return [a.record() for a in self.book.snapshot()]

    # Life cycle -------------------------------------------------------------------------------

    async def start(self) -> list[Notification]:
        """Restore the book from the store, then catch up on the gap since the last tick."""
        self.started_at = self.clock()
        rows, groups, meta = await self.repo.load()
        self.book = AlertBook(self.settings)
        self.book.restore([Alert.of_record(r) for r in rows], [Group.of_record(g) for g in groups])
        self.book.drop_rules_except({r.name for r in self.rules})
        self.recent = await self.repo.history(20)
        last = float(meta[LAST_EVALUATED]) if LAST_EVALUATED in meta else None
        self.last_evaluated = last
        if self.ready is not None:
            await self.ready()  # the metrics store is open
        now = self.clock()
        logger.info(
            "alerts: restored %d alert(s), %d group(s); last evaluation %s",
            len(rows),
            len(groups),
            "never" if last is None else f"{now - last:.0f} s ago",
        )
        notes: list[Notification] = []
        if last is not None:
            # Always replay what was stored since the last saved tick: a kill between an
            # evaluation and its save must not restart a `for` timer. Only a real gap is late.
            notes = await self.catch_up(last, now, late=now - last > 2 * self.interval)
        self.restored.set()
        return notes

    async def serve(self) -> None:
        await self.start()
        pruned = 0.0
        while True:
            now = self.clock()
            try:
                await self.tick(now)
                if now - pruned >= PRUNE_EVERY:
                    await self.repo.prune(now - KEEP_HISTORY)
                    pruned = now
            except PimanError as err:
                logger.warning("alerts: evaluation at %.0f failed: %s", now, err)
            await asyncio.sleep(max(0.0, now + self.interval - self.clock()))

    async def _silences(self) -> list[Silence]:
        out = []
        for record in await self.repo.silences():
            try:
                out.append(Silence.of(record))
            except ValueError as err:  # e.g. stored before matchers were RE2: said once
                if record.id not in self._bad_silences:
                    self._bad_silences.add(record.id)
                    logger.warning("alerts: ignoring silence %s: %s", record.id, err)
        return out

    async def tick(self, now: float) -> list[Notification]:
        """One evaluation of every rule at ``now``; returns the notifications queued."""
        silences = await self._silences()
        if self.fresh is not None and self.fresh() < self.started_at:
            # The store has not been written since we started (a restarted manager before its
            # first scrape): "no sample" would wrongly resolve what fires. Wait for data.
            logger.debug("alerts: no scrape since start; rules not evaluated at %.0f", now)
            notes = self.book.flush(now, silences)
            await self._save(notes, self.last_evaluated or now)
            return notes
        results: list[tuple[Rule, list[Sample]]] = []
        failed: set[str] = set()
        for rule in self.rules:
            try:
                results.append((rule, await self.source.instant(rule.selector, now)))
            except Exception as err:  # noqa: BLE001 - a store hiccup must not resolve alerts
                logger.warning(
                    "alerts: cannot read %s: %s; rule %s skipped", rule.selector, err, rule.name
                )
                failed.add(rule.name)
        self.book.evaluate_all([(r, got) for r, got in results if r.name not in failed], now)
        notes = self.book.flush(now, silences)
        await self._save(notes, now)
        return notes

    async def catch_up(self, since: float, now: float, *, late: bool = True) -> list[Notification]:
        """Replay ``(since, now)`` over the stored samples; notifications are marked ``late``.

        The gap is read and replayed in windows of :data:`CATCH_UP_WINDOW`, so memory stays
        bounded however many nodes there are; at most :data:`MAX_CATCH_UP` is replayed.
        """
        start = max(since, now - MAX_CATCH_UP)
        if late:
            logger.info("alerts: catching up on %.0f s since the last evaluation", now - start)
        silences = await self._silences()
        notes: list[Notification] = []
        last = since
        window_start = start
        while window_start < now:
            window_end = min(window_start + CATCH_UP_WINDOW, now)
            data: list[tuple[Rule, list[Series]]] = []
            failed: set[str] = set()
            for rule in self.rules:
                try:
                    data.append(
                        (
                            rule,
                            await self.source.series(
                                rule.selector, window_start - self.lookback, window_end
                            ),
                        )
                    )
                except Exception as err:  # noqa: BLE001 - replay what can be read
                    logger.warning("alerts: catch-up cannot read %s: %s", rule.selector, err)
                    failed.add(rule.name)
            data = [(r, series) for r, series in data if r.name not in failed]
            # Window ends are exclusive except for the last window's (``now`` is the next tick's).
            end = window_end if window_end >= now else math.nextafter(window_end, math.inf)
            everything = [s for _r, series in data for s in series]
            for t in replay_times(everything, window_start, end, self.interval):
                self.book.evaluate_all(
                    [(r, samples_at(series, t, self.lookback)) for r, series in data], t, late=late
                )
                notes.extend(self.book.flush(t, silences, late=late))
                last = t
            window_start = window_end
        await self._save(notes, last)
        if late or notes:
            logger.info("alerts: catch-up done, %d notification(s)", len(notes))
        return notes

    async def _save(self, notes: Sequence[Notification], now: float) -> None:
        """Save the book's changes and queue ``notes`` for every receiver, in one transaction.

        When the save fails, nothing is forgotten: the book keeps its changes and the
        notifications wait here, and the next tick's save writes them first (at most
        :data:`MAX_UNSAVED` notifications wait; beyond that the oldest are dropped, loudly).
        """
        self._unsaved.extend((note.key, note.to_json(), now) for note in notes)
        if len(self._unsaved) > MAX_UNSAVED:
            dropped = len(self._unsaved) - MAX_UNSAVED
            del self._unsaved[:dropped]
            logger.error(
                "alerts: the store has refused saves for long: %d unsaved notification(s) dropped",
                dropped,
            )
        changes = self.book.changes()
        changes.outbox = [
            (receiver, key, payload, at)
            for key, payload, at in self._unsaved
            for receiver in self.receivers
        ]
        changes.meta[LAST_EVALUATED] = repr(now)
        try:
            await self.repo.save(changes)
        except StoreError as err:
            raise StoreError(
                f"{err} ({len(self._unsaved)} notification(s) kept for the next save)"
            ) from err
        self.book.saved()
        queued = len(self._unsaved)
        self._unsaved.clear()
        self.last_evaluated = now
        self.recent[:0] = reversed(changes.history)
        del self.recent[20:]
        if self._gauge is not None:
            live = self.book.snapshot()
            for state in (AlertState.PENDING, AlertState.FIRING):
                self._gauge.labels(state.value).set(sum(1 for a in live if a.state is state))
        if queued:
            logger.info("alerts: queued %d notification(s)", queued)
            if self.wake is not None:
                self.wake()
