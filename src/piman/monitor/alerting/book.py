"""Alert states and notification groups: the alert book, a pure core (time passed in).

Theory of operation. Every ``scrape_interval`` the evaluator
(:class:`~piman.monitor.alerting.evaluator.AlertService`) asks the time-series store for each
rule's selector at ``now`` and hands the samples to :class:`AlertBook`, which keeps one
:class:`Alert` per (rule, label set):

=============  ==========================  ==========================================
state          condition true              condition false (or series gone)
=============  ==========================  ==========================================
(none)         pending (firing if for=0)   (none)
pending        firing once ``for`` held    dropped (never notified)
firing         firing                      resolved (``endsAt`` = now)
resolved       pending/firing again        kept until its resolution was notified
=============  ==========================  ==========================================

:meth:`AlertBook.flush` then applies Alertmanager's grouping: alerts that are firing, or resolved
but not yet notified, and not silenced, fall into groups by the values of ``group_by``. A new group
waits ``group_wait``; after that it is looked at every ``group_interval`` and notified when
something is new (an alert that fires or resolves), or re-notified after ``repeat_interval`` when it
is still firing. A notification carries the whole group.

Each notification has an idempotency key made of each alert's fingerprint, state and start time
(plus the time for a repeat), so a receiver that sees the same key twice knows it is a redelivery.

Catch-up: the time of the last evaluation is saved; at start, the service replays the gap
(:func:`replay_times`, :func:`samples_at`) over the stored samples, with time running as it
did then, and marks what it sends ``late``.

The book never reads the clock; the service passes ``now`` in and saves each tick's changes
(alert states, groups, history, outbox rows) in one transaction. The book keeps its changes
until the service says they were saved (:meth:`AlertBook.saved`), so a failed save is retried
with the next tick's.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from piman.config.matchers import Selector
from piman.fleet.metrics import Sample, Series
from piman.fleet.records import AlertGroupRecord, AlertHistoryRecord, AlertRecord, TickChanges
from piman.monitor.alerting.rules import Rule, fingerprint
from piman.monitor.alerting.silences import Silence

__all__ = [
    "Alert",
    "AlertBook",
    "AlertState",
    "Group",
    "GroupSettings",
    "Notification",
    "SampleSource",
    "replay_times",
    "samples_at",
]

logger = logging.getLogger(__name__)


class AlertState(enum.StrEnum):
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


class SampleSource(Protocol):
    """What the evaluator needs of the time-series store."""

    async def instant(self, selector: Selector, at: float) -> list[Sample]:
        """Each matching series' newest value at or before ``at`` (within a short lookback)."""

    async def series(self, selector: Selector, start: float, end: float) -> list[Series]:
        """Each matching series' points with ``start <= time <= end``."""


@dataclass(frozen=True, slots=True)
class GroupSettings:
    group_by: tuple[str, ...] = ("alertname",)
    group_wait: float = 30.0
    group_interval: float = 300.0
    repeat_interval: float = 4 * 3600.0


@dataclass(slots=True)
class Alert:
    fingerprint: str
    rule: str
    labels: dict[str, str]
    annotations: dict[str, str]
    state: AlertState
    active_at: float  # when the condition became true (start of pending)
    fired_at: float | None = None  # startsAt
    resolved_at: float | None = None  # endsAt
    value: float = 0.0
    late: bool = False

    @property
    def starts_at(self) -> float:
        return self.fired_at if self.fired_at is not None else self.active_at

    def record(self) -> AlertRecord:
        return AlertRecord(
            fingerprint=self.fingerprint,
            rule=self.rule,
            labels=dict(self.labels),
            annotations=dict(self.annotations),
            state=self.state.value,
            active_at=self.active_at,
            fired_at=self.fired_at,
            resolved_at=self.resolved_at,
            value=self.value,
            late=self.late,
        )

    @classmethod
    def of_record(cls, r: AlertRecord) -> Alert:
        return cls(
            r.fingerprint,
            r.rule,
            dict(r.labels),
            dict(r.annotations),
            AlertState(r.state),
            r.active_at,
            r.fired_at,
            r.resolved_at,
            r.value,
            r.late,
        )


@dataclass(slots=True)
class Group:
    key: str
    labels: dict[str, str]
    created_at: float
    next_flush_at: float
    last_flush_at: float | None = None
    sent: frozenset[tuple[str, str, float]] = frozenset()

    def record(self) -> AlertGroupRecord:
        return AlertGroupRecord(
            key=self.key,
            labels=dict(self.labels),
            created_at=self.created_at,
            next_flush_at=self.next_flush_at,
            last_flush_at=self.last_flush_at,
            sent=self.sent,
        )

    @classmethod
    def of_record(cls, r: AlertGroupRecord) -> Group:
        return cls(r.key, dict(r.labels), r.created_at, r.next_flush_at, r.last_flush_at, r.sent)


@dataclass(frozen=True, slots=True)
class NotifiedAlert:
    fingerprint: str
    status: str  # firing | resolved
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: float
    ends_at: float | None


@dataclass(frozen=True, slots=True)
class Notification:
    """One group's notification: what every receiver is sent."""

    key: str  # idempotency key
    group_key: str
    group_labels: dict[str, str]
    alerts: tuple[NotifiedAlert, ...]
    at: float
    late: bool = False
    repeat: bool = False

    @property
    def status(self) -> str:
        return "firing" if any(a.status == "firing" for a in self.alerts) else "resolved"

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "group_key": self.group_key,
            "group_labels": self.group_labels,
            "at": self.at,
            "late": self.late,
            "repeat": self.repeat,
            "alerts": [
                {
                    "fingerprint": a.fingerprint,
                    "status": a.status,
                    "labels": a.labels,
                    "annotations": a.annotations,
                    "starts_at": a.starts_at,
                    "ends_at": a.ends_at,
                }
                for a in self.alerts
            ],
        }


_TEMPLATE = re.compile(r"\{\{\s*\$?(labels\.)?([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")


def render(template: str, labels: Mapping[str, str], value: float) -> str:
    """``{{ node }}``, ``{{ $labels.node }}``, ``{{ value }}`` / ``{{ $value }}`` filled in."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(2)
        if name == "value" and not m.group(1):
            return f"{value:g}"
        return labels.get(name, "")

    return _TEMPLATE.sub(sub, template)


def _key(parts: Iterable[tuple[str, str, float]], suffix: str = "") -> str:
    items = sorted(parts)
    if len(items) == 1 and not suffix:
        fp, state, start = items[0]
        return f"{fp}:{state}:{start:.3f}"
    h = hashlib.sha256()
    for fp, state, start in items:
        h.update(f"{fp}:{state}:{start:.3f};".encode())
    return f"g{h.hexdigest()[:24]}{suffix}"


class AlertBook:
    """Every alert and group, and the transitions between their states. Pure: time passed in."""

    def __init__(self, settings: GroupSettings) -> None:
        self.settings = settings
        self.alerts: dict[str, Alert] = {}
        self.groups: dict[str, Group] = {}
        self._changes = TickChanges()
        self._dirty_alerts: set[str] = set()
        self._dirty_groups: set[str] = set()

    def restore(self, alerts: Iterable[Alert], groups: Iterable[Group]) -> None:
        self.alerts = {a.fingerprint: a for a in alerts}
        self.groups = {g.key: g for g in groups}

    # Evaluation -------------------------------------------------------------------------------

    def evaluate(
        self, rule: Rule, samples: Iterable[Sample], now: float, *, late: bool = False
    ) -> list[tuple[Alert, str, str]]:
        """Apply one rule's samples at ``now``; returns ``(alert, from, to)`` transitions."""
        return self.evaluate_all([(rule, samples)], now, late=late)

    def evaluate_all(
        self,
        results: Iterable[tuple[Rule, Iterable[Sample]]],
        now: float,
        *,
        late: bool = False,
    ) -> list[tuple[Alert, str, str]]:
        """Apply several rules' samples at ``now``.

        Rules that share an alert name (``HotSoC`` at 80 with ``severity: warning`` and at 90
        with ``severity: critical``) are judged together: an alert of that name ends only when
        none of them holds it any more.
        """
        moves: list[tuple[Alert, str, str]] = []
        seen: dict[str, set[str]] = {}
        for rule, samples in results:
            seen.setdefault(rule.name, set()).update(
                self._activate(rule, samples, now, late, moves)
            )
        for name, held in seen.items():
            self._deactivate(name, held, now, late, moves)
        return moves

    def _activate(
        self,
        rule: Rule,
        samples: Iterable[Sample],
        now: float,
        late: bool,
        moves: list[tuple[Alert, str, str]],
    ) -> set[str]:
        seen: set[str] = set()
        for sample in samples:
            if not rule.test(sample.value):
                continue
            labels = {k: v for k, v in sample.labels.items() if k != "__name__"}
            labels.update(rule.labels)
            labels["alertname"] = rule.name
            fp = fingerprint(labels)
            seen.add(fp)
            annotations = {k: render(v, labels, sample.value) for k, v in rule.annotations.items()}
            alert = self.alerts.get(fp)
            if alert is None or alert.state is AlertState.RESOLVED:
                # A resolved alert not yet notified is replaced by the new episode.
                alert = Alert(fp, rule.name, labels, annotations, AlertState.PENDING, now)
                self.alerts[fp] = alert
                self._dirty_alerts.add(fp)
                moves.append((alert, "inactive", "pending"))
            # The value and annotations are saved with the next transition only (the store's
            # copy is for restarts, where the next evaluation refreshes them).
            alert.value = sample.value
            alert.annotations = annotations
            if alert.state is AlertState.PENDING and now - alert.active_at >= rule.for_:
                self._dirty_alerts.add(fp)
                alert.state = AlertState.FIRING
                alert.fired_at = now
                alert.late = late
                moves.append((alert, "pending", "firing"))
                self._history(alert, now, late)
        return seen

    def _deactivate(
        self, name: str, held: set[str], now: float, late: bool, moves: list[tuple[Alert, str, str]]
    ) -> None:
        for fp, alert in list(self.alerts.items()):
            if alert.rule != name or fp in held:
                continue
            if alert.state is AlertState.PENDING:
                del self.alerts[fp]
                self._dirty_alerts.discard(fp)
                self._changes.deleted_alerts.append(fp)
                moves.append((alert, "pending", "inactive"))
            elif alert.state is AlertState.FIRING:
                alert.state = AlertState.RESOLVED
                alert.resolved_at = now
                alert.late = late
                self._dirty_alerts.add(fp)
                moves.append((alert, "firing", "resolved"))
                self._history(alert, now, late)

    def drop_rules_except(self, names: set[str]) -> None:
        """Forget alerts of rules that are no longer configured (resolving them silently)."""
        for fp, alert in list(self.alerts.items()):
            if alert.rule not in names:
                del self.alerts[fp]
                self._changes.deleted_alerts.append(fp)

    def _history(self, alert: Alert, now: float, late: bool) -> None:
        self._changes.history.append(
            AlertHistoryRecord(
                at=now,
                fingerprint=alert.fingerprint,
                rule=alert.rule,
                labels=dict(alert.labels),
                state=alert.state.value,
                value=alert.value,
                late=late,
            )
        )

    # Grouping ---------------------------------------------------------------------------------

    def group_of(self, labels: Mapping[str, str]) -> tuple[str, dict[str, str]]:
        by = self.settings.group_by
        if "..." in by:
            chosen = dict(labels)
        else:
            chosen = {k: labels[k] for k in by if k in labels}
        inner = ",".join(f'{k}="{v}"' for k, v in sorted(chosen.items()))
        return "{}:{" + inner + "}", chosen

    def flush(
        self, now: float, silences: Sequence[Silence] = (), *, late: bool = False
    ) -> list[Notification]:
        """Group, apply timers and silences; the notifications due at ``now``.

        A group lives while it has firing (or resolved, not yet notified) alerts, silenced or not,
        so what it last sent is remembered across a silence: when the silence ends, an alert that
        was already notified is not sent again before ``repeat_interval`` (as Alertmanager).
        A silenced alert that resolves is forgotten without a notification.
        """
        members: dict[str, list[Alert]] = {}
        for alert in list(self.alerts.values()):
            if alert.state is AlertState.PENDING:
                continue
            key, labels = self.group_of(alert.labels)
            audible = members.setdefault(key, [])
            if key not in self.groups:
                self.groups[key] = Group(key, labels, now, now + self.settings.group_wait)
                self._dirty_groups.add(key)
            if not any(s.mutes(alert.labels, now) for s in silences):
                audible.append(alert)
            elif alert.state is AlertState.RESOLVED:
                del self.alerts[alert.fingerprint]
                self._dirty_alerts.discard(alert.fingerprint)
                self._changes.deleted_alerts.append(alert.fingerprint)
        out: list[Notification] = []
        for key, group in list(self.groups.items()):
            if key not in members:
                del self.groups[key]
                self._dirty_groups.discard(key)
                self._changes.deleted_groups.append(key)
                continue
            alerts = members[key]
            if now < group.next_flush_at or not alerts:
                continue
            note = self._flush_group(group, alerts, now, late)
            group.next_flush_at = now + self.settings.group_interval
            self._dirty_groups.add(key)
            if note is not None:
                out.append(note)
        return out

    def _flush_group(
        self, group: Group, alerts: list[Alert], now: float, late: bool
    ) -> Notification | None:
        entries = {(a.fingerprint, a.state.value, a.starts_at) for a in alerts}
        new = entries - group.sent
        firing = any(a.state is AlertState.FIRING for a in alerts)
        repeat = (
            not new
            and firing
            and group.last_flush_at is not None
            and now - group.last_flush_at >= self.settings.repeat_interval
        )
        if not new and not repeat:
            self._drop_notified_resolved(alerts, group.sent)
            return None
        ordered = sorted(alerts, key=lambda a: (a.state is not AlertState.FIRING, a.starts_at))
        note = Notification(
            key=_key(entries, f":r{now:.0f}" if repeat else ""),
            group_key=group.key,
            group_labels=dict(group.labels),
            alerts=tuple(
                NotifiedAlert(
                    a.fingerprint,
                    "firing" if a.state is AlertState.FIRING else "resolved",
                    dict(a.labels),
                    dict(a.annotations),
                    a.starts_at,
                    a.resolved_at,
                )
                for a in ordered
            ),
            at=now,
            late=late
            or any(a.late for a in alerts if (a.fingerprint, a.state.value, a.starts_at) in new),
            repeat=repeat,
        )
        group.sent = frozenset(entries)
        group.last_flush_at = now
        self._drop_notified_resolved(alerts, group.sent)
        return note

    def _drop_notified_resolved(
        self, alerts: list[Alert], sent: frozenset[tuple[str, str, float]]
    ) -> None:
        for a in alerts:
            if a.state is AlertState.RESOLVED and (a.fingerprint, "resolved", a.starts_at) in sent:
                self.alerts.pop(a.fingerprint, None)
                self._dirty_alerts.discard(a.fingerprint)
                self._changes.deleted_alerts.append(a.fingerprint)

    # Persistence ------------------------------------------------------------------------------

    def changes(self) -> TickChanges:
        """What changed since the last :meth:`saved`, as records for the store's ``alerts.save``.

        Nothing is forgotten until :meth:`saved`: when a save fails (disk full, database
        locked) the next call returns the same changes, brought up to date with what changed
        since, so the store never misses a transition that memory already made.
        """
        return TickChanges(
            alerts=[
                self.alerts[fp].record() for fp in sorted(self._dirty_alerts) if fp in self.alerts
            ],
            deleted_alerts=sorted(set(self._changes.deleted_alerts) - set(self.alerts)),
            groups=[
                self.groups[k].record() for k in sorted(self._dirty_groups) if k in self.groups
            ],
            deleted_groups=sorted(set(self._changes.deleted_groups) - set(self.groups)),
            history=list(self._changes.history),
        )

    def saved(self) -> None:
        """The changes last returned by :meth:`changes` are in the store: forget them."""
        self._changes = TickChanges()
        self._dirty_alerts.clear()
        self._dirty_groups.clear()

    def take_changes(self) -> TickChanges:
        """:meth:`changes`, forgotten at once (for callers that cannot fail to save)."""
        changes = self.changes()
        self.saved()
        return changes

    def snapshot(self) -> list[Alert]:
        """Pending and firing alerts, most severe and oldest first (for the UI and API)."""
        live = [replace(a) for a in self.alerts.values() if a.state is not AlertState.RESOLVED]
        return sorted(live, key=lambda a: (a.state is not AlertState.FIRING, a.active_at))


# Catch-up ---------------------------------------------------------------------------------------


def replay_times(series: Iterable[Series], start: float, end: float, step: float) -> list[float]:
    """Evaluation times for a gap: each stored sample time in ``(start, end)``, one per step."""
    slots: dict[int, float] = {}
    for s in series:
        for t, _v in s.points:
            if start < t < end:
                slot = int((t - start) // step) if step > 0 else 0
                slots[slot] = max(slots.get(slot, t), t)
    return sorted(slots.values())


def samples_at(series: Iterable[Series], at: float, lookback: float) -> list[Sample]:
    """Each series' newest point at or before ``at``, if not older than ``lookback``."""
    out: list[Sample] = []
    for s in series:
        best: tuple[float, float] | None = None
        for t, v in s.points:
            if t <= at and (best is None or t >= best[0]):
                best = (t, v)
        if best is not None and at - best[0] <= lookback:
            out.append(Sample(s.metric, s.labels, best[0], best[1]))
    return out
