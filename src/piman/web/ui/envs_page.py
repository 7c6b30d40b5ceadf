"""The environments page, ``/environments``: the OS images the manager can deploy, and an
upload form for operators and admins.

The form's script sends the chosen file as the body of ``POST /api/v1/environments`` with
``XMLHttpRequest`` (its upload progress events drive the progress bar), then the manager
imports it as ``piman env add`` does; the list is re-fetched from ``/ui/environments`` when
that answers. Readers (viewers, operators, admins) see the page; viewers get no form.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from piman.access.roles import Action, allows
from piman.context import AppContext, Principal
from piman.web.deps import Ctx
from piman.web.security import Reader
from piman.web.ui.pages import _base, _page_principal, _to_login, templates

__all__ = ["router", "size"]

router = APIRouter(include_in_schema=False)


def size(n: int) -> str:
    """Bytes for people: ``512 B``, ``3.2 MiB``, ``1.9 GiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # not reached


async def _context(ctx: AppContext, principal: Principal) -> dict[str, Any]:
    deploy = ctx.deploy
    records = await deploy.environments() if deploy is not None else []
    return {
        **_base(ctx, principal),
        "enabled": deploy is not None,
        "environments": [
            {
                "name": e.name,
                "os": e.os_family,
                "kind": e.kind,
                "size": size(e.image_size),
                "mapped": size(e.mapped_bytes),
                "table": e.table,
                "customisation": e.customisation,
                "source": e.source,
                "description": e.description,
                "created": e.created_at.astimezone().strftime("%Y-%m-%d %H:%M"),
                "created_by": e.created_by,
            }
            for e in sorted(records, key=lambda e: e.name)
        ],
        "can_upload": deploy is not None and allows(principal.role, Action.POWER),
        "max_upload": ctx.config.deploy.max_upload if ctx.config.deploy is not None else 0,
        "max_upload_text": size(ctx.config.deploy.max_upload) if ctx.config.deploy else "",
    }


@router.get("/environments", response_class=HTMLResponse)
async def environments_page(request: Request, ctx: Ctx) -> Response:
    """The environments page (readers; operators and admins also upload)."""
    principal = await _page_principal(request)
    if principal is None:
        return _to_login(request)
    if not allows(principal.role, Action.READ):
        context = _base(ctx, principal)
        return templates.TemplateResponse(request, "forbidden.html", context, status_code=403)
    context = await _context(ctx, principal)
    return templates.TemplateResponse(request, "environments.html", context)


@router.get("/ui/environments", response_class=HTMLResponse)
async def environments_rows(request: Request, principal: Reader, ctx: Ctx) -> HTMLResponse:
    """The environments list alone, for the page's script."""
    context = await _context(ctx, principal)
    return templates.TemplateResponse(request, "_environments.html", context)
