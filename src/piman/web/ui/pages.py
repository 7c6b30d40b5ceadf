"""Web pages. Server-rendered with Jinja2; a small script of ours refreshes the node table."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from piman import __version__
from piman.manager import ManagerContext

__all__ = ["router"]

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")


async def _page_context(request: Request) -> dict[str, object]:
    ctx: ManagerContext = request.app.state.ctx
    nodes = await ctx.store.nodes.list()
    counts: dict[str, int] = {}
    for node in nodes:
        counts[node.state] = counts.get(node.state, 0) + 1
    return {
        "nodes": nodes,
        "counts": counts,
        "version": __version__,
        "manager": ctx.config.manager,
        "power_enabled": ctx.power is not None,
        "monitor": ctx.monitor,
    }


@router.get("/", response_class=HTMLResponse)
async def index(request: Request) -> HTMLResponse:
    return templates.TemplateResponse(request, "index.html", await _page_context(request))


@router.get("/ui/nodes", response_class=HTMLResponse)
async def node_rows(request: Request) -> HTMLResponse:
    """The node table's body alone, for the page's refresh script."""
    return templates.TemplateResponse(request, "_node_rows.html", await _page_context(request))
