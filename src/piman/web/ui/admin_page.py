"""The users and tokens page, ``/admin/users`` (admins only): every account with its role,
a form to add one, and per account Set role and Reset password; every API token with Revoke.

The buttons call the accounts API (``/api/v1/users``, ``/api/v1/tokens``), whose Origin check
is the forms' CSRF protection and which writes each change to the audit log. Passwords are
never shown or sent back; a token's secret is never stored, only its prefix is listed.
``/ui/users`` is the page's live parts alone, re-fetched after each action.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from piman.access.roles import Action, Role, allows
from piman.context import AppContext, Principal
from piman.web.deps import Ctx
from piman.web.security import Admin
from piman.web.ui.pages import _base, _page_principal, _to_login, templates

__all__ = ["router"]

router = APIRouter(include_in_schema=False)


def _at(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M") if value is not None else ""


async def _context(ctx: AppContext, principal: Principal) -> dict[str, Any]:
    access = ctx.access
    users = await access.users() if access is not None else []
    tokens = await access.tokens(None) if access is not None else []
    now = datetime.now(UTC)
    return {
        **_base(ctx, principal),
        "enabled": access is not None,
        "roles": [r.value for r in Role],
        "users": [
            {
                "name": u.name,
                "role": u.role,
                "email": u.email or "",
                "created": _at(u.created_at),
                "me": u.name == principal.user,
            }
            for u in sorted(users, key=lambda u: u.name)
        ],
        "tokens": [
            {
                "id": t.id,
                "user": t.user,
                "name": t.name,
                "prefix": t.prefix,
                "created": _at(t.created_at),
                "expires": _at(t.expires_at) or "never",
                "last_used": _at(t.last_used_at) or "never",
                "status": "revoked"
                if t.revoked_at is not None
                else ("usable" if t.usable(now) else "expired"),
            }
            for t in sorted(tokens, key=lambda t: (t.user, t.id))
        ],
    }


@router.get("/admin/users", response_class=HTMLResponse)
async def users_page(request: Request, ctx: Ctx) -> Response:
    """The users and tokens page (admins)."""
    principal = await _page_principal(request)
    if principal is None:
        return _to_login(request)
    if not allows(principal.role, Action.ADMIN):
        context = _base(ctx, principal)
        return templates.TemplateResponse(request, "forbidden.html", context, status_code=403)
    context = await _context(ctx, principal)
    return templates.TemplateResponse(request, "admin_users.html", context)


@router.get("/ui/users", response_class=HTMLResponse)
async def users_parts(request: Request, principal: Admin, ctx: Ctx) -> HTMLResponse:
    """The users and tokens page's live parts alone."""
    context = await _context(ctx, principal)
    return templates.TemplateResponse(request, "_admin_users.html", context)
