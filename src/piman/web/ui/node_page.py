"""The node page, ``/nodes/{name}``: details, power, deploy, charts, deployment and audit history.

Charts come from the collector's store (``MonitorHandle.query_range``, one series per chart
with a step, see :data:`piman.web.ui.charts.RANGES`) and are drawn on the server as SVG.
``/ui/nodes/{name}`` is the same page's live parts alone, for the page's script. A ``user``
sees the page of a node they hold (an active reservation) and gets its buttons; viewers see
every node and no button.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from piman.access.roles import Action, may_act_on
from piman.context import AppContext, Principal
from piman.errors import NotFoundError
from piman.monitor.collector.query import QueryTooLarge
from piman.web.deps import Ctx
from piman.web.security import NodeReader, held_nodes
from piman.web.ui.charts import CHARTS, RANGES, line_chart
from piman.web.ui.pages import (
    _abilities,
    _base,
    _holders,
    _page_principal,
    _to_login,
    _when,
    templates,
)

__all__ = ["router"]

router = APIRouter(include_in_schema=False)

AUDIT_ROWS = 20
DEPLOYMENT_ROWS = 10


def _deployment_view(d: Any) -> dict[str, object]:
    total = max(d.bytes_total, 1)
    return {
        "id": d.id,
        "environment": d.environment,
        "step": d.result or d.state.replace("_", " "),
        "active": d.result is None,
        "percent": min(100, round(100 * d.bytes_done / total)),
        "done_mib": f"{d.bytes_done / 1048576:.0f}",
        "total_mib": f"{d.bytes_total / 1048576:.0f}",
        "reason": d.reason or "",
        "result": d.result or "",
        "created": d.created_at.astimezone().strftime("%Y-%m-%d %H:%M:%S"),
        "created_by": d.created_by,
        "finished": d.finished_at.astimezone().strftime("%H:%M:%S") if d.finished_at else "",
    }


async def _charts(ctx: AppContext, name: str, window: str) -> list[dict[str, object]]:
    monitor = ctx.monitor
    if monitor is None:
        return []
    span, step = RANGES[window]
    end = time.time()
    start = end - span
    out: list[dict[str, object]] = []
    for spec in CHARTS:
        try:
            series = await monitor.query_range(spec.metric, {"node": name}, start, end, step)
        except QueryTooLarge as err:
            out.append({"title": spec.title, "svg": None, "error": str(err)})
            continue
        points = sorted(p for s in series for p in s.points)
        svg = line_chart(spec, points, start=start, end=end, step=step)
        out.append({"title": spec.title, "svg": svg, "error": ""})
    return out


async def _context(
    request: Request, ctx: AppContext, principal: Principal, name: str
) -> dict[str, object]:
    node = await ctx.store.nodes.get(name)  # NotFoundError → 404
    window = request.query_params.get("range", "1h")
    if window not in RANGES:
        window = "1h"
    holds = name in await held_nodes(request, principal)
    abilities = _abilities(ctx, principal, holds)
    history = await ctx.deploy.deployments(node=name, limit=DEPLOYMENT_ROWS) if ctx.deploy else []
    targets = [name] + ([f"{name} ({node.switch}:{node.port})"] if node.switch else [])
    audit = [a for t in targets for a in await ctx.store.audit.list(target=t, limit=AUDIT_ROWS)]
    audit.sort(key=lambda a: a.at, reverse=True)
    monitor = ctx.monitor
    alerting = monitor.alerting if monitor is not None else None
    alerts = [a for a in alerting.active() if a.labels.get("node") == name] if alerting else []
    environments = []
    if abilities["can_deploy"] and ctx.deploy is not None:
        environments = [e.name for e in await ctx.deploy.environments()]
    return {
        **_base(ctx, principal),
        **abilities,
        "n": node,
        "window": window,
        "ranges": list(RANGES),
        "fragment_url": f"/ui/nodes/{name}?range={window}",
        "holder": (await _holders(ctx)).get(name),
        "snapshot": monitor.snapshot(name) if monitor is not None else None,
        "monitoring": monitor is not None,
        "charts": await _charts(ctx, name, window),
        "deploy_enabled": ctx.deploy is not None,
        "deploying": {name: _deployment_view(history[0])} if history else {},
        "history": [_deployment_view(d) for d in history],
        "audit": [
            {
                "at": a.at.astimezone().strftime("%Y-%m-%d %H:%M:%S"),
                "actor": a.actor,
                "action": a.action,
                "result": a.result,
                "detail": a.detail or "",
            }
            for a in audit[:AUDIT_ROWS]
        ],
        "alerts": [
            {
                "name": a.rule,
                "state": a.state,
                "value": f"{a.value:g}",
                "since": _when(a.fired_at if a.fired_at is not None else a.active_at),
            }
            for a in alerts
        ],
        "environments": environments,
    }


@router.get("/nodes/{name}", response_class=HTMLResponse)
async def node_page(name: str, request: Request, ctx: Ctx) -> Response:
    """One node's page (a ``user``: a node they hold)."""
    principal = await _page_principal(request)
    if principal is None:
        return _to_login(request)
    holds = name in await held_nodes(request, principal)
    if not may_act_on(principal.role, Action.READ, holds=holds):
        context = _base(ctx, principal)
        return templates.TemplateResponse(request, "forbidden.html", context, status_code=403)
    try:
        context = await _context(request, ctx, principal, name)
    except NotFoundError:
        context = {**_base(ctx, principal), "name": name}
        return templates.TemplateResponse(request, "not_found.html", context, status_code=404)
    return templates.TemplateResponse(request, "node.html", context)


@router.get("/ui/nodes/{name}", response_class=HTMLResponse)
async def node_parts(name: str, request: Request, principal: NodeReader, ctx: Ctx) -> Response:
    """The node page's live parts alone, for the page's script."""
    context = await _context(request, ctx, principal, name)
    return templates.TemplateResponse(request, "_node.html", context)
