"""``/api/v1/alerts`` (what fires, what is pending, recent history) and ``/api/v1/silences``.

Silences live in the store, so they can be created here, from ``piman alerts silence`` against
the store directly, or both; the evaluator reads them on every tick.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field

from piman.config.types import parse_duration
from piman.context import AlertingHandle
from piman.errors import RuleError
from piman.fleet.records import AlertRecord, SilenceRecord
from piman.web.deps import Alerting
from piman.web.security import Reader, Silencer

__all__ = ["AlertOut", "AlertsOut", "HistoryOut", "SilenceIn", "SilenceOut", "router"]

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


class SilenceIn(BaseModel):
    """A new silence: ``matchers`` such as ``["alertname=NodeDown", "node=~rack1-.*"]``.

    It is recorded as made by the authenticated principal.
    """

    model_config = ConfigDict(extra="forbid")

    matchers: list[str] | str
    duration: str = Field("2h", description="How long, e.g. 30m, 2h, 1d.")
    comment: str = ""


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


@router.get("/alerts", response_model=AlertsOut, summary="Firing and pending alerts, history")
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
