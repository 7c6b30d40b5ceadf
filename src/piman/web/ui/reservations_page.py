"""The reservations page, ``/reservations``: a calendar of nodes × time, the reserve form, and
the reservations one may extend or release.

The calendar is drawn on the server: one row per node of the page shown (:data:`PER_PAGE`
nodes, filtered by switch and model), one bar per live booking over the window (the next
:data:`WINDOWS` days), placed in percent of the window so no script is needed to read it.
Every signed-in principal sees the whole fleet's availability (so that they can reserve);
the reserve form shows to those who may reserve; a ``user`` gets Extend and Release on their
own reservations, operators and admins on any; a viewer sees no button.

``/ui/reservations`` is the page's live parts alone (calendar rows, pager, the list) for the
same query string: the page's script re-fetches them on a fleet change from ``/ui/events`` and
every few seconds (a booking that starts later moves no node, so the change stream does not
see it). The buttons call the REST API (``/api/v1/reservations``), whose Origin check is the
form's CSRF protection.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from piman.access.roles import Action, allows
from piman.context import AppContext, Principal
from piman.fleet.reservations import NodeAvailability, ReservationRecord
from piman.web.deps import Ctx
from piman.web.security import Anyone
from piman.web.ui.pages import _base, _page_principal, _to_login, templates

__all__ = ["PER_PAGE", "WINDOWS", "CalendarQuery", "bars", "router"]

router = APIRouter(include_in_schema=False)

PER_PAGE = 25
WINDOWS = (1, 3, 7)  # days the calendar shows
MANAGERS = ("operator", "admin")  # extend and release any reservation


@dataclass(frozen=True, slots=True)
class CalendarQuery:
    """What the calendar shows: a page of nodes, a window, filters (from the query string)."""

    page: int = 1
    days: int = 3
    switch: str = ""
    model: str = ""

    @classmethod
    def parse(cls, params: Any) -> CalendarQuery:
        def number(key: str, default: int) -> int:
            value = str(params.get(key, "")).strip()
            return int(value) if value.isdigit() and len(value) < 7 else default

        days = number("days", 3)
        return cls(
            page=max(1, number("page", 1)),
            days=days if days in WINDOWS else 3,
            switch=str(params.get("switch", ""))[:64],
            model=str(params.get("model", ""))[:32],
        )

    def params(self, **changes: Any) -> dict[str, str]:
        values = {"page": self.page, "days": self.days, "switch": self.switch,
                  "model": self.model, **changes}  # fmt: skip
        defaults = {"page": 1, "days": 3, "switch": "", "model": ""}
        return {k: str(v) for k, v in values.items() if v != defaults[k]}

    def url(self, path: str, **changes: Any) -> str:
        params = self.params(**changes)
        return path + ("?" + urlencode(params) if params else "")


def _local(at: datetime) -> str:
    return at.astimezone().strftime("%a %d %b %H:%M")


def bars(
    node: NodeAvailability, start: datetime, end: datetime, *, me: str
) -> list[dict[str, object]]:
    """The bookings of ``node`` over ``[start, end)`` as calendar bars (left and width in
    percent of the window, pure): a booking partly outside is clipped to the window."""
    span = (end - start).total_seconds()
    out: list[dict[str, object]] = []
    for b in node.bookings:
        if b.end_at <= start or b.start_at >= end:
            continue
        left = max((b.start_at - start).total_seconds(), 0.0) / span * 100
        right = min((b.end_at - start).total_seconds(), span) / span * 100
        out.append(
            {
                "id": b.reservation,
                "owner": b.owner,
                "state": b.state,
                "mine": b.owner == me,
                "left": f"{left:.2f}",
                "width": f"{max(right - left, 0.4):.2f}",
                "title": f"#{b.reservation} {b.owner} ({b.state}): "
                f"{_local(b.start_at)} – {_local(b.end_at)}",
            }
        )
    return out


def _ticks(start: datetime, days: int) -> list[dict[str, str]]:
    """Labels along the time axis: every 6 h over one day, every day otherwise."""
    step = timedelta(hours=6) if days == 1 else timedelta(days=1)
    span = timedelta(days=days)
    out = []
    at = start
    if days > 1:  # the first local midnight after the start
        local = start.astimezone()
        at = (local + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    while at < start + span:
        left = (at - start) / span * 100
        label = at.astimezone().strftime("%H:%M" if days == 1 else "%a %d")
        out.append({"left": f"{left:.2f}", "label": label})
        at += step
    return out


def _view(r: ReservationRecord, principal: Principal) -> dict[str, object]:
    mine = r.owner == principal.user
    may = r.state in ("scheduled", "active") and (mine or principal.role in MANAGERS)
    return {
        "id": r.id,
        "owner": r.owner,
        "mine": mine,
        "nodes": list(r.nodes),
        "state": r.state,
        "start": _local(r.start_at),
        "end": _local(r.end_at),
        "end_iso": r.end_at.isoformat(),
        "environment": r.environment or "",
        "extensions": r.extensions,
        "can_extend": may,
        "can_release": may,
    }


async def _context(request: Request, ctx: AppContext, principal: Principal) -> dict[str, Any]:
    handle = ctx.reservations
    query = CalendarQuery.parse(request.query_params)
    now = datetime.now(UTC)
    start = now.replace(minute=0, second=0, microsecond=0)
    end = start + timedelta(days=query.days)
    fleet = await handle.availability() if handle is not None else []
    switches = sorted({n.switch for n in fleet if n.switch})
    models = sorted({n.model for n in fleet if n.model})
    shown = [
        n
        for n in fleet
        if (not query.switch or n.switch == query.switch)
        and (not query.model or n.model == query.model)
    ]
    pages = max(1, -(-len(shown) // PER_PAGE))
    page = min(query.page, pages)
    query = CalendarQuery(page, query.days, query.switch, query.model)
    rows = [
        {
            "name": n.name,
            "model": n.model or "",
            "switch": n.switch or "",
            "reservable": n.reservable,
            "state": n.state,
            "bars": bars(n, start, end, me=principal.user),
        }
        for n in shown[(page - 1) * PER_PAGE : page * PER_PAGE]
    ]
    records = (
        await handle.reservations(principal=principal, live=True) if handle is not None else []
    )
    environments: list[str] = []
    can_reserve = handle is not None and allows(principal.role, Action.RESERVE)
    if can_reserve and ctx.deploy is not None:
        environments = [e.name for e in await ctx.deploy.environments()]
    return {
        **_base(ctx, principal),
        "enabled": handle is not None,
        "q": query,
        "url": lambda **changes: query.url("/reservations", **changes),
        "fragment_url": query.url("/ui/reservations"),
        "rows": rows,
        "matched": len(shown),
        "total": len(fleet),
        "pages": pages,
        "windows": WINDOWS,
        "ticks": _ticks(start, query.days),
        "now_left": f"{(now - start) / (end - start) * 100:.2f}",
        "window_start": _local(start),
        "window_end": _local(end),
        "switches": switches,
        "models": models,
        "reservations": [_view(r, principal) for r in records],
        "can_reserve": can_reserve,
        "may_manage": principal.role in MANAGERS,
        "environments": environments,
    }


@router.get("/reservations", response_class=HTMLResponse)
async def reservations_page(request: Request, ctx: Ctx) -> Response:
    """The reservations page, for every signed-in principal."""
    principal = await _page_principal(request)
    if principal is None:
        return _to_login(request)
    context = await _context(request, ctx, principal)
    return templates.TemplateResponse(request, "reservations.html", context)


@router.get("/ui/reservations", response_class=HTMLResponse)
async def reservations_parts(request: Request, principal: Anyone, ctx: Ctx) -> HTMLResponse:
    """The reservations page's live parts alone, for the same query string."""
    context = await _context(request, ctx, principal)
    return templates.TemplateResponse(request, "_reservations.html", context)
