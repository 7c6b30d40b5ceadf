"""Tables of the alert evaluator and the notifier, and the repository over them.

- ``alert_states``: one row per (rule, label set) that is pending, firing, or resolved but not yet
  notified — what a restarted manager needs so it neither re-pages nor forgets a ``for`` timer.
- ``alert_groups``: Alertmanager-style notification groups (timers and what was last sent).
- ``alert_history``: every transition to firing or resolved, for ``piman alerts`` and the UI.
- ``alert_silences``: matchers with an expiry.
- ``alert_outbox``: notifications waiting for (or delivered to) each receiver, in order; one
  given up on is kept, ``dead`` (``dead_at``), until requeued or pruned with the delivered
  ones. A receiver is named by what is safe to show (``webhook:https://host:port``,
  ``apprise:slack``): its URL, with its tokens and passwords, stays in the configuration.
- ``alert_meta``: small key/values (the time of the last evaluation, for catch-up).

The evaluator saves a whole tick in one transaction (:meth:`AlertRepository.save`), so the alert
states and the outbox rows they produce are written together or not at all.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import (
    Boolean,
    Float,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Mapped, mapped_column

from piman.errors import NotFoundError, StoreError
from piman.fleet.records import (
    AlertGroupRecord,
    AlertHistoryRecord,
    AlertRecord,
    OutboxItem,
    SilenceRecord,
    TickChanges,
)
from piman.store.repositories import SessionFactory
from piman.store.tables import Base, UtcDateTime

__all__ = [
    "AlertGroupRow",
    "AlertHistoryRow",
    "AlertMetaRow",
    "AlertRepository",
    "AlertStateRow",
    "OutboxRow",
    "SilenceRow",
    "from_ts",
    "to_ts",
]

logger = logging.getLogger(__name__)


def from_ts(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def to_ts(dt: datetime | None) -> float | None:
    return None if dt is None else dt.timestamp()


class AlertStateRow(Base):
    __tablename__ = "alert_states"

    fingerprint: Mapped[str] = mapped_column(String(32), primary_key=True)
    rule: Mapped[str] = mapped_column(String(128))
    labels: Mapped[str] = mapped_column(Text)
    annotations: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))
    active_at: Mapped[datetime] = mapped_column(UtcDateTime())
    fired_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    resolved_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    value: Mapped[float] = mapped_column(Float)
    late: Mapped[bool] = mapped_column(Boolean, default=False)


class AlertGroupRow(Base):
    __tablename__ = "alert_groups"

    key: Mapped[str] = mapped_column(String(512), primary_key=True)
    labels: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    next_flush_at: Mapped[datetime] = mapped_column(UtcDateTime())
    last_flush_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    sent: Mapped[str] = mapped_column(Text)


class AlertHistoryRow(Base):
    __tablename__ = "alert_history"
    __table_args__ = (Index("ix_alert_history_at", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    fingerprint: Mapped[str] = mapped_column(String(32))
    rule: Mapped[str] = mapped_column(String(128))
    labels: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))
    value: Mapped[float] = mapped_column(Float)
    late: Mapped[bool] = mapped_column(Boolean, default=False)


class SilenceRow(Base):
    __tablename__ = "alert_silences"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    matchers: Mapped[str] = mapped_column(Text)
    starts_at: Mapped[datetime] = mapped_column(UtcDateTime())
    ends_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    created_by: Mapped[str] = mapped_column(String(128))
    comment: Mapped[str] = mapped_column(Text)


class OutboxRow(Base):
    __tablename__ = "alert_outbox"
    __table_args__ = (
        UniqueConstraint("receiver", "key", name="uq_alert_outbox_receiver_key"),
        Index("ix_alert_outbox_pending", "receiver", "delivered_at", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    receiver: Mapped[str] = mapped_column(String(1024))
    key: Mapped[str] = mapped_column(String(255))
    payload: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    dead_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class AlertMetaRow(Base):
    __tablename__ = "alert_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


def _alert(row: AlertStateRow) -> AlertRecord:
    return AlertRecord(
        fingerprint=row.fingerprint,
        rule=row.rule,
        labels=json.loads(row.labels),
        annotations=json.loads(row.annotations),
        state=row.state,
        active_at=row.active_at.timestamp(),
        fired_at=to_ts(row.fired_at),
        resolved_at=to_ts(row.resolved_at),
        value=row.value,
        late=row.late,
    )


def _alert_row(r: AlertRecord) -> AlertStateRow:
    return AlertStateRow(
        fingerprint=r.fingerprint,
        rule=r.rule,
        labels=json.dumps(r.labels, sort_keys=True),
        annotations=json.dumps(r.annotations, sort_keys=True),
        state=r.state,
        active_at=from_ts(r.active_at),
        fired_at=from_ts(r.fired_at),
        resolved_at=from_ts(r.resolved_at),
        value=r.value,
        late=r.late,
    )


def _group(row: AlertGroupRow) -> AlertGroupRecord:
    return AlertGroupRecord(
        key=row.key,
        labels=json.loads(row.labels),
        created_at=row.created_at.timestamp(),
        next_flush_at=row.next_flush_at.timestamp(),
        last_flush_at=to_ts(row.last_flush_at),
        sent=frozenset((fp, st, float(t)) for fp, st, t in json.loads(row.sent)),
    )


def _group_row(r: AlertGroupRecord) -> AlertGroupRow:
    return AlertGroupRow(
        key=r.key,
        labels=json.dumps(r.labels, sort_keys=True),
        created_at=from_ts(r.created_at),
        next_flush_at=from_ts(r.next_flush_at),
        last_flush_at=from_ts(r.last_flush_at),
        sent=json.dumps(sorted(r.sent)),
    )


def _history(row: AlertHistoryRow) -> AlertHistoryRecord:
    return AlertHistoryRecord(
        at=row.at.timestamp(),
        fingerprint=row.fingerprint,
        rule=row.rule,
        labels=json.loads(row.labels),
        state=row.state,
        value=row.value,
        late=row.late,
    )


def _history_row(r: AlertHistoryRecord) -> AlertHistoryRow:
    return AlertHistoryRow(
        at=from_ts(r.at),
        fingerprint=r.fingerprint,
        rule=r.rule,
        labels=json.dumps(r.labels, sort_keys=True),
        state=r.state,
        value=r.value,
        late=r.late,
    )


def _silence(row: SilenceRow) -> SilenceRecord:
    return SilenceRecord(
        row.id,
        row.matchers,
        row.starts_at.timestamp(),
        row.ends_at.timestamp(),
        row.created_by,
        row.comment,
    )


def _item(row: OutboxRow) -> OutboxItem:
    return OutboxItem(
        row.id,
        row.receiver,
        row.key,
        json.loads(row.payload),
        row.created_at.timestamp(),
        row.attempts,
        row.next_attempt_at.timestamp(),
        to_ts(row.delivered_at),
        row.last_error,
        to_ts(row.dead_at),
    )


OUTBOX_STATES = ("pending", "dead", "undelivered", "delivered")
MAX_ERROR = 2000  # characters of a delivery error kept in the outbox
_PENDING = (OutboxRow.delivered_at.is_(None), OutboxRow.dead_at.is_(None))


class AlertRepository:
    """Alert states, groups, history, silences and the outbox. Every method is one transaction."""

    def __init__(self, session: SessionFactory) -> None:
        self._session = session

    async def load(self) -> tuple[list[AlertRecord], list[AlertGroupRecord], dict[str, str]]:
        """Everything the evaluator restores at start."""
        async with self._session() as s:
            alerts = [_alert(r) for r in (await s.scalars(select(AlertStateRow))).all()]
            groups = [_group(r) for r in (await s.scalars(select(AlertGroupRow))).all()]
            meta = {m.key: m.value for m in (await s.scalars(select(AlertMetaRow))).all()}
        return alerts, groups, meta

    async def save(self, changes: TickChanges) -> None:
        try:
            async with self._session() as s:
                for alert in changes.alerts:
                    await s.merge(_alert_row(alert))
                if changes.deleted_alerts:
                    await s.execute(
                        delete(AlertStateRow).where(
                            AlertStateRow.fingerprint.in_(changes.deleted_alerts)
                        )
                    )
                for group in changes.groups:
                    await s.merge(_group_row(group))
                if changes.deleted_groups:
                    await s.execute(
                        delete(AlertGroupRow).where(AlertGroupRow.key.in_(changes.deleted_groups))
                    )
                for entry in changes.history:
                    s.add(_history_row(entry))
                for receiver, key, payload, at in changes.outbox:
                    when = from_ts(at)
                    known = await s.scalar(
                        select(OutboxRow.id).where(
                            OutboxRow.receiver == receiver, OutboxRow.key == key
                        )
                    )
                    if known is not None:  # already queued once: the receiver would drop it
                        logger.warning("outbox: %s already queued; not queued again", key)
                        continue
                    s.add(
                        OutboxRow(
                            receiver=receiver,
                            key=key,
                            payload=json.dumps(payload, sort_keys=True),
                            created_at=when,
                            next_attempt_at=when,
                            attempts=0,
                        )
                    )
                for key, value in changes.meta.items():
                    await s.merge(AlertMetaRow(key=key, value=value))
        except StoreError as err:
            raise StoreError(f"cannot save alert states: {err}") from err

    async def history(self, limit: int = 50) -> list[AlertHistoryRecord]:
        async with self._session() as s:
            query = select(AlertHistoryRow).order_by(AlertHistoryRow.id.desc()).limit(limit)
            return [_history(r) for r in (await s.scalars(query)).all()]

    async def states(self) -> list[AlertRecord]:
        async with self._session() as s:
            return [_alert(r) for r in (await s.scalars(select(AlertStateRow))).all()]

    # Silences ---------------------------------------------------------------------------------

    async def silences(self, *, now: float | None = None) -> list[SilenceRecord]:
        """Every silence (newest first), or only those active at ``now``."""
        async with self._session() as s:
            query = select(SilenceRow).order_by(SilenceRow.starts_at.desc())
            if now is not None:
                at = from_ts(now)
                query = query.where(SilenceRow.starts_at <= at, SilenceRow.ends_at > at)
            return [_silence(r) for r in (await s.scalars(query)).all()]

    async def add_silence(self, silence: SilenceRecord) -> None:
        async with self._session() as s:
            s.add(
                SilenceRow(
                    id=silence.id,
                    matchers=silence.matchers,
                    starts_at=from_ts(silence.starts_at),
                    ends_at=from_ts(silence.ends_at),
                    created_by=silence.created_by,
                    comment=silence.comment,
                )
            )

    async def expire_silence(self, silence_id: str, now: float) -> SilenceRecord:
        """End a silence now; NotFoundError if no silence has that id (or a unique prefix)."""
        async with self._session() as s:
            rows = (
                await s.scalars(select(SilenceRow).where(SilenceRow.id.startswith(silence_id)))
            ).all()
            if len(rows) != 1:
                what = "no silence" if not rows else f"{len(rows)} silences"
                raise NotFoundError(f"{what} with id {silence_id!r}")
            row = rows[0]
            if row.ends_at.timestamp() > now:
                row.ends_at = from_ts(now) or row.ends_at
            return _silence(row)

    # Outbox -----------------------------------------------------------------------------------

    async def next_pending(self, receiver: str) -> OutboxItem | None:
        """The oldest notification for a receiver that is neither delivered nor dead."""
        async with self._session() as s:
            row = await s.scalar(
                select(OutboxRow)
                .where(OutboxRow.receiver == receiver, *_PENDING)
                .order_by(OutboxRow.id)
                .limit(1)
            )
            return None if row is None else _item(row)

    async def mark_delivered(self, item_id: int, at: float) -> None:
        async with self._session() as s:
            await s.execute(
                update(OutboxRow)
                .where(OutboxRow.id == item_id)
                .values(delivered_at=from_ts(at), attempts=OutboxRow.attempts + 1, last_error=None)
            )

    async def mark_failed(self, item_id: int, error: str, next_at: float) -> None:
        async with self._session() as s:
            await s.execute(
                update(OutboxRow)
                .where(OutboxRow.id == item_id)
                .values(
                    next_attempt_at=from_ts(next_at),
                    attempts=OutboxRow.attempts + 1,
                    last_error=error[:MAX_ERROR],
                )
            )

    async def mark_dead(self, item_id: int, error: str, at: float) -> None:
        """Give up on a notification: it stays in the outbox, ``dead``, and is not retried."""
        async with self._session() as s:
            await s.execute(
                update(OutboxRow)
                .where(OutboxRow.id == item_id)
                .values(
                    dead_at=from_ts(at),
                    attempts=OutboxRow.attempts + 1,
                    last_error=error[:MAX_ERROR],
                )
            )

    async def requeue_dead(self, at: float, ids: Sequence[int] = ()) -> int:
        """Dead notifications (those of ``ids``, or all) pending again from ``at``; how many."""
        async with self._session() as s:
            query = update(OutboxRow).where(
                OutboxRow.dead_at.is_not(None), OutboxRow.delivered_at.is_(None)
            )
            if ids:
                query = query.where(OutboxRow.id.in_(list(ids)))
            result = await s.execute(
                query.values(dead_at=None, attempts=0, next_attempt_at=from_ts(at))
            )
            return int(getattr(result, "rowcount", 0) or 0)

    async def outbox(
        self, *, pending_only: bool = False, state: str | None = None, limit: int = 100
    ) -> list[OutboxItem]:
        """Newest first; ``pending_only`` or ``state`` (pending, dead, undelivered, delivered)."""
        async with self._session() as s:
            query = select(OutboxRow).order_by(OutboxRow.id.desc()).limit(limit)
            if pending_only or state == "pending":
                query = query.where(*_PENDING)
            elif state == "delivered":
                query = query.where(OutboxRow.delivered_at.is_not(None))
            elif state == "dead":
                query = query.where(
                    OutboxRow.delivered_at.is_(None), OutboxRow.dead_at.is_not(None)
                )
            elif state == "undelivered":
                query = query.where(OutboxRow.delivered_at.is_(None))
            elif state is not None:
                raise ValueError(f"{state!r} is not an outbox state ({', '.join(OUTBOX_STATES)})")
            return [_item(r) for r in (await s.scalars(query)).all()]

    async def pending_counts(self) -> dict[str, int]:
        """Notifications waiting for each receiver (dead ones are not waiting)."""
        async with self._session() as s:
            rows = await s.execute(
                select(OutboxRow.receiver, func.count())
                .where(*_PENDING)
                .group_by(OutboxRow.receiver)
            )
            return {r: int(n) for r, n in rows.all()}

    async def prune(self, before: float) -> None:
        """Drop delivered and dead outbox rows and history older than ``before``."""
        async with self._session() as s:
            at = from_ts(before)
            await s.execute(
                delete(OutboxRow).where(
                    or_(OutboxRow.delivered_at.is_not(None), OutboxRow.dead_at.is_not(None)),
                    OutboxRow.created_at < at,
                )
            )
            await s.execute(delete(AlertHistoryRow).where(AlertHistoryRow.at < at))
