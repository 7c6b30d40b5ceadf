"""``/api/v1/alerts`` (what fires, what is pending, recent history) and ``/api/v1/silences``.

Silences live in the store, so they can be created here, from ``piman alerts silence`` against
the store directly, or both; the evaluator reads them on every tick.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from piman.config.types import parse_duration
from piman.manager import ManagerContext
from piman.monitor.alerts import Alert, Silence, make_silence
from piman.monitor.rules import RuleError
from piman.store.alert_tables import AlertRepository, SilenceRecord

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
    def of(cls, a: Alert, silences: list[Silence], now: float) -> AlertOut:
        return cls(
            fingerprint=a.fingerprint,
            alertname=a.rule,
            state=a.state.value,
            labels=a.labels,
            annotations=a.annotations,
            active_at=_dt(a.active_at) or datetime.now(UTC),
            starts_at=_dt(a.fired_at),
            value=a.value,
            silenced_by=[s.id for s in silences if s.mutes(a.labels, now)],
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
    """A new silence: ``matchers`` such as ``["alertname=NodeDown", "node=~rack1-.*"]``."""

    matchers: list[str] | str
    duration: str = Field("2h", description="How long, e.g. 30m, 2h, 1d.")
    comment: str = ""
    created_by: str = "api"


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
        state = "active" if s.active(now) else ("pending" if s.starts_at > now else "expired")
        return cls(
            id=s.id,
            matchers=s.matchers,
            starts_at=_dt(s.starts_at) or datetime.now(UTC),
            ends_at=_dt(s.ends_at) or datetime.now(UTC),
            state=state,
            created_by=s.created_by,
            comment=s.comment,
        )


def _ctx(request: Request) -> ManagerContext:
    ctx: ManagerContext = request.app.state.ctx
    return ctx


def _repo(request: Request) -> AlertRepository:
    return AlertRepository(_ctx(request).store.session)


def _alerting(request: Request) -> Any:
    alerting = getattr(_ctx(request).monitor, "alerts", None)
    if alerting is None:
        raise HTTPException(503, "alerting is not running on this manager")
    return alerting


@router.get("/alerts", response_model=AlertsOut, summary="Firing and pending alerts, history")
async def list_alerts(
    request: Request, history: Annotated[int, Query(ge=0, le=1000)] = 20
) -> AlertsOut:
    alerting = _alerting(request)
    try:  # just after a start, wait for the evaluator to restore its state and catch up
        await asyncio.wait_for(alerting.service.restored.wait(), 10)
    except TimeoutError:
        raise HTTPException(503, "alerting is starting (catching up)") from None
    repo = _repo(request)
    now = time.time()
    silences = [Silence.of(s) for s in await repo.silences(now=now)]
    rows = await repo.history(history) if history else []
    last = alerting.service.last_evaluated
    return AlertsOut(
        alerts=[AlertOut.of(a, silences, now) for a in alerting.service.active()],
        history=[
            HistoryOut(
                at=h.at,
                alertname=h.rule,
                state=h.state,
                labels=json.loads(h.labels),
                value=h.value,
                late=h.late,
            )
            for h in rows
        ],
        last_evaluated=_dt(last),
    )


@router.get("/alerts/panel", include_in_schema=False, response_class=HTMLResponse)
async def alerts_panel(request: Request) -> HTMLResponse:
    """The web UI's alerts panel body, for the page's refresh script."""
    from piman.web.ui.pages import templates

    context = {"monitor": _ctx(request).monitor, "body_only": True}
    return templates.TemplateResponse(request, "_alerts_panel.html", context)


@router.get("/silences", response_model=list[SilenceOut], summary="Every silence, newest first")
async def list_silences(request: Request) -> list[SilenceOut]:
    now = time.time()
    return [SilenceOut.of(s, now) for s in await _repo(request).silences()]


@router.post(
    "/silences",
    response_model=SilenceOut,
    status_code=201,
    summary="Silence alerts matching the matchers for a while",
    responses={422: {"description": "Bad matchers or duration"}},
)
async def add_silence(body: SilenceIn, request: Request) -> SilenceOut:
    now = time.time()
    try:
        silence = make_silence(
            body.matchers,
            now=now,
            duration=parse_duration(body.duration),
            created_by=body.created_by,
            comment=body.comment,
        )
    except (RuleError, ValueError) as err:
        raise HTTPException(422, str(err)) from None
    await _repo(request).add_silence(silence)
    return SilenceOut.of(silence, now)


@router.delete(
    "/silences/{silence_id}",
    response_model=SilenceOut,
    summary="Expire a silence now",
    responses={404: {"description": "No silence with that id"}},
)
async def expire_silence(silence_id: str, request: Request) -> SilenceOut:
    now = time.time()
    return SilenceOut.of(await _repo(request).expire_silence(silence_id, now), now)
