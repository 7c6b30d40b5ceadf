"""``/api/v1/alerts`` (what fires, what is pending, recent history), ``/api/v1/silences`` and
``/api/v1/alerts/outbox`` (notifications waiting, delivered, or given up on: dead).

Silences live in the store, so they can be created here, from ``piman alerts silence`` against
the store directly, or both; the evaluator reads them on every tick.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from piman.config.types import parse_duration
from piman.context import AlertingHandle
from piman.errors import RuleError
from piman.fleet.records import AlertRecord, OutboxItem, SilenceRecord
from piman.web.deps import Alerting
from piman.web.security import Reader, Silencer

__all__ = [
    "AlertOut",
    "AlertsOut",
    "HistoryOut",
    "OutboxOut",
    "RequeueIn",
    "RequeueOut",
    "SilenceIn",
    "SilenceOut",
    "router",
]

router = APIRouter(tags=["alerts"])


def _dt(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


class AlertOut(BaseModel):
    fingerprint: str
    alertname: str
    state: str  # pending | firing
    labels: dict[str, str]
    annotations: dict[str, str]
    active_at: datetime
    starts_at: datetime | None
    value: float
    silenced_by: list[str]
    late: bool

    @classmethod
    def of(
        cls, a: AlertRecord, alerting: AlertingHandle, silences: list[SilenceRecord], now: float
    ) -> AlertOut:
        return cls(
            fingerprint=a.fingerprint,
            alertname=a.rule,
            state=a.state,
            labels=a.labels,
            annotations=a.annotations,
            active_at=_dt(a.active_at) or datetime.now(UTC),
            starts_at=_dt(a.fired_at),
            value=a.value,
            silenced_by=alerting.silenced_by(a.labels, silences, now),
            late=a.late,
        )


class HistoryOut(BaseModel):
    at: datetime
    alertname: str
    state: str  # firing | resolved
    labels: dict[str, str]
    value: float
    late: bool


class AlertsOut(BaseModel):
    alerts: list[AlertOut]
    history: list[HistoryOut]
    last_evaluated: datetime | None


class OutboxOut(BaseModel):
    """One notification for one receiver (named without its URL's secrets)."""

    id: int
    receiver: str
    key: str
    state: str  # pending | delivered | dead
    status: str  # firing | resolved
    group_labels: dict[str, str]
    alerts: int
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    delivered_at: datetime | None
    dead_at: datetime | None
    last_error: str | None

    @classmethod
    def of(cls, item: OutboxItem) -> OutboxOut:
        alerts = item.payload.get("alerts") or []
        firing = any(a.get("status") == "firing" for a in alerts)
        return cls(
            id=item.id,
            receiver=item.receiver,
            key=item.key,
            state=item.state,
            status="firing" if firing else "resolved",
            group_labels=dict(item.payload.get("group_labels") or {}),
            alerts=len(alerts),
            attempts=item.attempts,
            created_at=_dt(item.created_at) or datetime.now(UTC),
            next_attempt_at=_dt(item.next_attempt_at) or datetime.now(UTC),
            delivered_at=_dt(item.delivered_at),
            dead_at=_dt(item.dead_at),
            last_error=item.last_error,
        )


class RequeueIn(BaseModel):
    """Which dead notifications to send again: ``ids``, or every dead one when empty."""

    model_config = ConfigDict(extra="forbid")

    ids: list[StrictInt] = Field(default_factory=list, max_length=1000)  # not false: 0


class RequeueOut(BaseModel):
    requeued: int


class SilenceIn(BaseModel):
    """A new silence: ``matchers`` such as ``["alertname=NodeDown", "node=~rack1-.*"]``.

    It is recorded as made by the authenticated principal.
    """

    model_config = ConfigDict(extra="forbid")

    matchers: list[str] | str
    duration: str = Field("2h", description="How long, e.g. 30m, 2h, 1d.")
    comment: str = Field("", max_length=1024)


class SilenceOut(BaseModel):
    id: str
    matchers: str
    starts_at: datetime
    ends_at: datetime
    state: str  # active | pending | expired
    created_by: str
    comment: str

    @classmethod
    def of(cls, s: SilenceRecord, now: float) -> SilenceOut:
        return cls(
            id=s.id,
            matchers=s.matchers,
            starts_at=_dt(s.starts_at) or datetime.now(UTC),
            ends_at=_dt(s.ends_at) or datetime.now(UTC),
            state=s.status(now),
            created_by=s.created_by,
            comment=s.comment,
        )


@router.get(
    "/alerts",
    response_model=AlertsOut,
    summary="Firing and pending alerts, history",
    responses={503: {"description": "Alerting is starting (catching up with its state)"}},
)
async def list_alerts(
    _: Reader, alerting: Alerting, history: Annotated[int, Query(ge=0, le=1000)] = 20
) -> AlertsOut:
    # Just after a start, wait for the evaluator to restore its state and catch up.
    if not await alerting.wait_restored(10):
        raise HTTPException(503, "alerting is starting (catching up)")
    now = time.time()
    silences = await alerting.silences(active_at=now)
    rows = await alerting.history(history) if history else []
    return AlertsOut(
        alerts=[AlertOut.of(a, alerting, silences, now) for a in alerting.active()],
        history=[
            HistoryOut(
                at=_dt(h.at) or datetime.now(UTC),
                alertname=h.rule,
                state=h.state,
                labels=h.labels,
                value=h.value,
                late=h.late,
            )
            for h in rows
        ],
        last_evaluated=_dt(alerting.last_evaluated),
    )


@router.get("/silences", response_model=list[SilenceOut], summary="Every silence, newest first")
async def list_silences(_: Reader, alerting: Alerting) -> list[SilenceOut]:
    now = time.time()
    return [SilenceOut.of(s, now) for s in await alerting.silences()]


@router.post(
    "/silences",
    response_model=SilenceOut,
    status_code=201,
    summary="Silence alerts matching the matchers for a while",
    responses={422: {"description": "Bad matchers or duration"}},
)
async def add_silence(body: SilenceIn, principal: Silencer, alerting: Alerting) -> SilenceOut:
    now = time.time()
    try:
        silence = await alerting.add_silence(
            body.matchers,
            duration=parse_duration(body.duration),
            created_by=principal.actor,
            comment=body.comment,
            now=now,
        )
    except (RuleError, ValueError) as err:
        raise HTTPException(422, str(err)) from None
    return SilenceOut.of(silence, now)


@router.delete(
    "/silences/{silence_id}",
    response_model=SilenceOut,
    summary="Expire a silence now",
    responses={404: {"description": "No silence with that id"}},
)
async def expire_silence(silence_id: str, _: Silencer, alerting: Alerting) -> SilenceOut:
    now = time.time()
    return SilenceOut.of(await alerting.expire_silence(silence_id, now=now), now)


OutboxState = Literal["pending", "dead", "undelivered", "delivered"]


@router.get(
    "/alerts/outbox",
    response_model=list[OutboxOut],
    summary="Notifications per receiver, newest first: pending, delivered or dead",
)
async def list_outbox(
    _: Reader,
    alerting: Alerting,
    state: OutboxState | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[OutboxOut]:
    return [OutboxOut.of(i) for i in await alerting.outbox(state=state, limit=limit)]


@router.post(
    "/alerts/outbox/retry",
    response_model=RequeueOut,
    summary="Send dead notifications again (those of ids, or all)",
)
async def retry_outbox(body: RequeueIn, _: Silencer, alerting: Alerting) -> RequeueOut:
    return RequeueOut(requeued=await alerting.requeue_dead(body.ids))
