"""Web pages. Server-rendered with Jinja2; a small script of ours refreshes parts of a page."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from piman import __version__
from piman.access.roles import Action, allows, may_act_on
from piman.context import AlertingHandle, AppContext, Principal
from piman.web.api.fleetcache import cache_of
from piman.web.deps import Ctx
from piman.web.security import Reader, optional_principal
from piman.web.ui.fleet import PER_PAGE, FleetQuery, Holder, select

__all__ = ["alerts_panel", "router", "sparkline", "templates"]

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")

SPARK_WIDTH, SPARK_HEIGHT = 80, 20


def sparkline(values: Any, top: float = 100.0) -> str:
    """SVG polyline points for values in [0, top], oldest left; gaps (None) are skipped."""
    points = list(values)
    if not points:
        return ""
    dx = SPARK_WIDTH / max(len(points) - 1, 1)
    out = []
    for i, v in enumerate(points):
        if v is None:
            continue
        y = SPARK_HEIGHT - min(max(v, 0.0), top) / top * SPARK_HEIGHT
        out.append(f"{i * dx:.1f},{y:.1f}")
    return " ".join(out)


templates.env.filters["sparkline"] = sparkline


def _when(ts: float | None) -> str:
    return "" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def alerts_panel(alerting: AlertingHandle | None) -> dict[str, Any] | None:
    """Display-ready rows for the alerts panel (local time, formatted values), or None."""
    if alerting is None:
        return None
    return {
        "active": [
            {
                "fingerprint": a.fingerprint,
                "state": a.state,
                "alertname": a.rule,
                "node": a.labels.get("node", ""),
                "value": f"{a.value:g}",
                "since": _when(a.fired_at if a.fired_at is not None else a.active_at),
                "summary": a.annotations.get("summary", ""),
                "late": a.late,
            }
            for a in alerting.active()
        ],
        "history": [
            {
                "at": _when(h.at),
                "alertname": h.rule,
                "node": h.node,
                "state": h.state,
                "value": f"{h.value:g}",
                "late": h.late,
            }
            for h in alerting.recent()[:10]
        ],
        "rules": alerting.rule_count,
        "last_evaluated": _when(alerting.last_evaluated) or None,
    }


def _query(params: dict[str, str]) -> str:
    return "?" + urlencode(params) if params else ""


async def _holders(ctx: AppContext) -> dict[str, Holder]:
    """Who holds each node now (active reservations); empty without reservations."""
    if ctx.reservations is None:
        return {}
    out: dict[str, Holder] = {}
    for r in await ctx.store.reservations.live():
        if r.state == "active":
            for name in r.nodes:
                out[name] = Holder(r.owner, r.end_at)
    return out


def _alert_counts(ctx: AppContext) -> dict[str, tuple[int, int]]:
    alerting = ctx.monitor.alerting if ctx.monitor is not None else None
    if alerting is None:
        return {}
    counts: dict[str, tuple[int, int]] = {}
    for a in alerting.active():
        node = a.labels.get("node", "")
        firing, pending = counts.get(node, (0, 0))
        counts[node] = (firing + 1, pending) if a.state == "firing" else (firing, pending + 1)
    return counts


def _abilities(ctx: AppContext, principal: Principal, holds: bool = False) -> dict[str, bool]:
    """Which buttons ``principal`` gets (fleet-wide, or on a node they hold)."""
    can_power = ctx.power is not None and may_act_on(principal.role, Action.POWER, holds=holds)
    can_deploy = ctx.deploy is not None and may_act_on(principal.role, Action.DEPLOY, holds=holds)
    return {"can_power": can_power, "can_deploy": can_deploy, "can_act": can_power or can_deploy}


async def _fleet_context(
    request: Request, ctx: AppContext, principal: Principal
) -> dict[str, object]:
    query = FleetQuery.parse(request.query_params)
    monitor = ctx.monitor
    page = select(
        await cache_of(request, ctx).nodes(),
        query,
        holders=await _holders(ctx),
        snapshot=monitor.snapshot if monitor is not None else None,
        alerts=_alert_counts(ctx),
    )
    abilities = _abilities(ctx, principal)
    return {
        **_base(ctx, principal),
        **abilities,
        "page": page,
        "q": page.query,
        "per_page": PER_PAGE,
        "url": lambda **changes: "/" + _query(page.query.params(**changes)),
        "fragment_url": "/ui/nodes" + _query(page.query.params()),
        "snapshot": monitor.snapshot if monitor is not None else None,
        "deploying": await _deployments(ctx),
        "deploy_enabled": ctx.deploy is not None,
        "environments": [e.name for e in await ctx.deploy.environments()]
        if abilities["can_deploy"] and ctx.deploy is not None
        else [],
        "monitoring": monitor is not None,
        "reservations": ctx.reservations is not None,
        "panel": alerts_panel(monitor.alerting if monitor is not None else None),
        "now": datetime.now(UTC),
    }


async def _deployments(ctx: AppContext) -> dict[str, dict[str, object]]:
    """Per node, its active deployment (else its last one): step, percent, bytes, outcome."""
    if ctx.deploy is None:
        return {}
    out: dict[str, dict[str, object]] = {}
    for d in reversed(await ctx.deploy.deployments(limit=200)):  # oldest first: newest wins
        total = max(d.bytes_total, 1)
        out[d.node] = {
            "id": d.id,
            "environment": d.environment,
            "step": d.result or d.state.replace("_", " "),
            "active": d.result is None,
            "percent": min(100, round(100 * d.bytes_done / total)),
            "done_mib": f"{d.bytes_done / 1048576:.0f}",
            "total_mib": f"{d.bytes_total / 1048576:.0f}",
            "reason": d.reason or "",
            "result": d.result or "",
        }
    return out


async def _page_principal(request: Request) -> Principal | None:
    """The signed-in principal of a page request; None sends the browser to the login page."""
    try:
        return await optional_principal(request)
    except HTTPException as err:
        if err.status_code == 401:
            return None  # an ended session: log in again
        raise


def _to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target)}", status_code=303)


def _base(ctx: AppContext, principal: Principal | None) -> dict[str, object]:
    return {"version": __version__, "manager": ctx.config.manager, "principal": principal}


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, ctx: Ctx, next: str = "/") -> Response:
    """The login form (its script posts JSON to ``/api/v1/auth/login``)."""
    if not next.startswith("/") or next.startswith("//"):
        next = "/"
    context = {**_base(ctx, None), "next": next}
    return templates.TemplateResponse(request, "login.html", context)


@router.get("/", response_class=HTMLResponse)
async def index(request: Request, ctx: Ctx) -> Response:
    """The fleet page: filtered, sorted and paged on the server (:mod:`piman.web.ui.fleet`)."""
    principal = await _page_principal(request)
    if principal is None:
        return _to_login(request)
    if not allows(principal.role, Action.READ):
        context = _base(ctx, principal)
        return templates.TemplateResponse(request, "forbidden.html", context, status_code=403)
    context = await _fleet_context(request, ctx, principal)
    return templates.TemplateResponse(request, "fleet.html", context)


@router.get("/ui/nodes", response_class=HTMLResponse)
async def node_rows(request: Request, principal: Reader, ctx: Ctx) -> HTMLResponse:
    """The fleet page's live parts (summary, rows, pager) for the same query string."""
    context = await _fleet_context(request, ctx, principal)
    return templates.TemplateResponse(request, "_fleet.html", context)


@router.get("/ui/alerts", response_class=HTMLResponse)
async def alerts_rows(request: Request, _: Reader, ctx: Ctx) -> HTMLResponse:
    """The alerts panel's body alone, for the page's refresh script."""
    monitor = ctx.monitor
    context = {
        "monitoring": monitor is not None,
        "panel": alerts_panel(monitor.alerting if monitor is not None else None),
        "body_only": True,
    }
    return templates.TemplateResponse(request, "_alerts_panel.html", context)
