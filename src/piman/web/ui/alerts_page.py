"""The alerts page, ``/alerts``: what fires and what is pending, the history of transitions,
and the silences, with a form to create one and a button to expire one.

Readers see everything; operators and admins (who may silence) get the form and the buttons,
and a Silence button on each active alert that fills the form with its alert name and node.
``/ui/alert-list`` is the page's live parts alone: the page's script re-fetches them when the
change stream (``/ui/events``) says the active alerts changed, after its own actions, and
every few seconds (a silence made elsewhere changes no alert).
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from piman.access.roles import Action, allows
from piman.context import AlertingHandle, AppContext, Principal
from piman.web.deps import Ctx
from piman.web.security import Reader
from piman.web.ui.pages import _base, _page_principal, _to_login, _when, templates

__all__ = ["HISTORY_ROWS", "router"]

router = APIRouter(include_in_schema=False)

HISTORY_ROWS = 50
DURATIONS = ("30m", "1h", "2h", "4h", "1d", "7d")


def _alerting(ctx: AppContext) -> AlertingHandle | None:
    return ctx.monitor.alerting if ctx.monitor is not None else None


async def _context(ctx: AppContext, principal: Principal) -> dict[str, Any]:
    alerting = _alerting(ctx)
    can_silence = alerting is not None and allows(principal.role, Action.SILENCE)
    if alerting is None:
        return {**_base(ctx, principal), "enabled": False, "can_silence": False}
    now = time.time()
    silences = await alerting.silences()
    active = []
    for a in alerting.active():
        muted = alerting.silenced_by({"alertname": a.rule, **a.labels}, silences, now)
        active.append(
            {
                "state": a.state,
                "alertname": a.rule,
                "node": a.labels.get("node", ""),
                "labels": ", ".join(f"{k}={v}" for k, v in sorted(a.labels.items())),
                "value": f"{a.value:g}",
                "since": _when(a.fired_at if a.fired_at is not None else a.active_at),
                "summary": a.annotations.get("summary", ""),
                "silenced": ", ".join(s[:8] for s in muted),
                "late": a.late,
            }
        )
    history = [
        {
            "at": _when(h.at),
            "alertname": h.rule,
            "node": h.node,
            "state": h.state,
            "value": f"{h.value:g}",
            "late": h.late,
        }
        for h in await alerting.history(HISTORY_ROWS)
    ]
    return {
        **_base(ctx, principal),
        "enabled": True,
        "can_silence": can_silence,
        "firing": [a for a in active if a.get("state") == "firing"],
        "pending": [a for a in active if a.get("state") == "pending"],
        "history": history,
        "silences": [
            {
                "id": s.id,
                "short": s.id[:8],
                "matchers": s.matchers,
                "status": s.status(now),
                "starts": _when(s.starts_at),
                "ends": _when(s.ends_at),
                "created_by": s.created_by,
                "comment": s.comment,
            }
            for s in silences
        ],
        "durations": DURATIONS,
        "rules": alerting.rule_count,
        "last_evaluated": _when(alerting.last_evaluated) or None,
    }


@router.get("/alerts", response_class=HTMLResponse)
async def alerts_page(request: Request, ctx: Ctx) -> Response:
    """The alerts page (readers; those who may silence also get the form and buttons)."""
    principal = await _page_principal(request)
    if principal is None:
        return _to_login(request)
    if not allows(principal.role, Action.READ):
        context = _base(ctx, principal)
        return templates.TemplateResponse(request, "forbidden.html", context, status_code=403)
    context = await _context(ctx, principal)
    return templates.TemplateResponse(request, "alerts.html", context)


@router.get("/ui/alert-list", response_class=HTMLResponse)
async def alert_parts(request: Request, principal: Reader, ctx: Ctx) -> HTMLResponse:
    """The alerts page's live parts alone."""
    context = await _context(ctx, principal)
    return templates.TemplateResponse(request, "_alerts_page.html", context)
