"""``/api/v1/auth`` (log in and out, who am I, a token for the CLI), ``/api/v1/tokens`` (your API
tokens; an admin sees everyone's) and ``/api/v1/users`` (accounts, admin only).

Every change to an account or a token goes to the audit log under the principal who made it.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from piman.access.roles import Role
from piman.access.secrets import PasswordPolicyError
from piman.access.service import check_user_name
from piman.config.types import parse_duration
from piman.context import AccessHandle, AppContext, Principal
from piman.errors import NotFoundError, StoreError
from piman.fleet.records import TokenRecord, UserRecord
from piman.web.deps import Ctx
from piman.web.security import SESSION_COOKIE, Admin, Anyone

__all__ = ["router"]

router = APIRouter(tags=["accounts"])

RoleName = Literal["admin", "operator", "user", "viewer"]
_TOKEN_NAME = re.compile(r"^[\w .@:/+-]{1,128}$")


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(max_length=64)
    password: str = Field(max_length=1024)


class TokenLoginIn(LoginIn):
    """A password login that returns an API token (what ``piman login`` does)."""

    name: str = Field("cli", max_length=128, description="What the token is for.")
    expires_in: str | None = Field(None, description="e.g. 30d; none: until revoked.")


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=128)
    expires_in: str | None = Field(None, description="e.g. 30d; none: until revoked.")


class PrincipalOut(BaseModel):
    user: str
    role: str
    via: str

    @classmethod
    def of(cls, p: Principal) -> PrincipalOut:
        return cls(user=p.user, role=p.role, via=p.via)


class TokenOut(BaseModel):
    id: int
    user: str
    name: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    state: str  # active | expired | revoked

    @classmethod
    def of(cls, t: TokenRecord) -> TokenOut:
        now = datetime.now(UTC)
        state = "revoked" if t.revoked_at else ("active" if t.usable(now) else "expired")
        return cls(
            id=t.id,
            user=t.user,
            name=t.name,
            prefix=t.prefix,
            created_at=t.created_at,
            expires_at=t.expires_at,
            revoked_at=t.revoked_at,
            last_used_at=t.last_used_at,
            state=state,
        )


class NewTokenOut(TokenOut):
    token: str = Field(description="The token itself: shown this once, never again.")


class UserOut(BaseModel):
    name: str
    role: str
    created_at: datetime
    updated_at: datetime
    email: str | None = None

    @classmethod
    def of(cls, u: UserRecord) -> UserOut:
        return cls(
            name=u.name,
            role=u.role,
            created_at=u.created_at,
            updated_at=u.updated_at,
            email=u.email,
        )


class UserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=64)
    role: RoleName
    password: str = Field(max_length=1024)


class UserPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: RoleName | None = None
    password: str | None = Field(None, max_length=1024)
    email: str | None = Field(
        None, max_length=320, description="Where reservation warnings go; null clears it"
    )


class PasswordIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    password: str = Field(max_length=1024)
    current_password: str | None = Field(None, max_length=1024)


def _access(ctx: AppContext) -> AccessHandle:
    if ctx.access is None:
        raise HTTPException(503, "accounts are not available on this manager")
    return ctx.access


def _client(request: Request) -> str:
    return request.client.host if request.client else "-"


def _expiry(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        seconds = parse_duration(text)
    except ValueError as err:
        raise HTTPException(422, str(err)) from None
    if seconds <= 0:
        raise HTTPException(422, "expires_in must be more than 0 s")
    return datetime.now(UTC) + timedelta(seconds=seconds)


def _secure(ctx: AppContext, request: Request) -> bool:
    return ctx.config.manager.tls is not None or request.url.scheme == "https"


# -- /auth ---------------------------------------------------------------------------------------


@router.post(
    "/auth/login",
    response_model=PrincipalOut,
    summary="Log in with a password; sets the session cookie",
    responses={401: {"description": "Wrong name or password"}, 429: {"description": "Throttled"}},
)
async def login(body: LoginIn, request: Request, response: Response, ctx: Ctx) -> PrincipalOut:
    principal, cookie = await _access(ctx).login(
        body.username, body.password, client=_client(request)
    )
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=int(ctx.config.access.session_max),
        path="/",
        httponly=True,
        samesite="strict",
        secure=_secure(ctx, request),
    )
    return PrincipalOut.of(principal)


@router.post("/auth/logout", status_code=204, summary="End the browser session")
async def logout(request: Request, ctx: Ctx) -> Response:
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        await _access(ctx).logout(cookie)
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.get("/auth/me", response_model=PrincipalOut, summary="Who the request acts as")
async def me(principal: Anyone) -> PrincipalOut:
    return PrincipalOut.of(principal)


@router.post(
    "/auth/token",
    response_model=NewTokenOut,
    status_code=201,
    summary="Log in with a password and get a new API token (piman login)",
    responses={401: {"description": "Wrong name or password"}, 429: {"description": "Throttled"}},
)
async def token_login(body: TokenLoginIn, request: Request, ctx: Ctx) -> NewTokenOut:
    access = _access(ctx)
    user = await access.check_password(body.username, body.password, client=_client(request))
    wanted = TokenIn(name=body.name, expires_in=body.expires_in)
    return await _create_token(ctx, Principal(user.name, user.role, "password"), wanted)


# -- /tokens -------------------------------------------------------------------------------------


async def _create_token(ctx: AppContext, principal: Principal, body: TokenIn) -> NewTokenOut:
    if not _TOKEN_NAME.match(body.name):
        raise HTTPException(422, "a token name is 1-128 letters, digits, spaces and .@:/+-_")
    expires = _expiry(body.expires_in)
    record, token = await _access(ctx).create_token(principal.user, body.name, expires)
    await ctx.store.audit.add(principal.actor, "token.create", principal.user, "ok", record.prefix)
    return NewTokenOut(**TokenOut.of(record).model_dump(), token=token)


@router.get(
    "/tokens",
    response_model=list[TokenOut],
    summary="Your API tokens (admin: all)",
    responses={403: {"description": "all=true from anyone but an admin"}},
)
async def list_tokens(
    principal: Anyone,
    ctx: Ctx,
    everyone: Annotated[bool, Query(alias="all")] = False,
) -> list[TokenOut]:
    if everyone and principal.role != Role.ADMIN:
        raise HTTPException(403, "only an admin sees everyone's tokens")
    records = await _access(ctx).tokens(None if everyone else principal.user)
    return [TokenOut.of(t) for t in records]


@router.post(
    "/tokens",
    response_model=NewTokenOut,
    status_code=201,
    summary="A new API token for yourself (shown once)",
)
async def create_token(body: TokenIn, principal: Anyone, ctx: Ctx) -> NewTokenOut:
    return await _create_token(ctx, principal, body)


@router.delete(
    "/tokens/{token_id}",
    response_model=TokenOut,
    summary="Revoke a token (yours; an admin's: anyone's)",
    responses={404: {"description": "No such token (of yours)"}},
)
async def revoke_token(token_id: int, principal: Anyone, ctx: Ctx) -> TokenOut:
    owner = None if principal.role == Role.ADMIN else principal.user
    record = await _access(ctx).revoke_token(token_id, user=owner)
    await ctx.store.audit.add(principal.actor, "token.revoke", record.user, "ok", record.prefix)
    return TokenOut.of(record)


# -- /users --------------------------------------------------------------------------------------


async def _admins(access: AccessHandle) -> list[str]:
    return [u.name for u in await access.users() if u.role == Role.ADMIN]


@router.get("/users", response_model=list[UserOut], summary="Every account (admin)")
async def list_users(_: Admin, ctx: Ctx) -> list[UserOut]:
    return [UserOut.of(u) for u in await _access(ctx).users()]


@router.post(
    "/users",
    response_model=UserOut,
    status_code=201,
    summary="Create an account (admin)",
    responses={409: {"description": "The name is taken"}, 422: {"description": "Bad value"}},
)
async def add_user(body: UserIn, principal: Admin, ctx: Ctx) -> UserOut:
    try:
        check_user_name(body.name)
        user = await _access(ctx).add_user(body.name, body.role, body.password)
    except (ValueError, PasswordPolicyError) as err:
        raise HTTPException(422, str(err)) from None
    except StoreError as err:
        raise HTTPException(409, str(err)) from None
    await ctx.store.audit.add(principal.actor, "user.add", user.name, "ok", f"role {user.role}")
    return UserOut.of(user)


@router.patch(
    "/users/{name}",
    response_model=UserOut,
    summary="Change an account's role, password or e-mail address (admin)",
    responses={
        404: {"description": "No such user"},
        409: {"description": "Last admin"},
        422: {"description": "A password or e-mail address that is not accepted"},
    },
)
async def change_user(name: str, body: UserPatch, principal: Admin, ctx: Ctx) -> UserOut:
    access = _access(ctx)
    user: UserRecord | None = None
    if body.role is not None:
        if body.role != Role.ADMIN.value and await _admins(access) == [name]:
            raise HTTPException(409, f"{name} is the last admin: make another admin first")
        user = await access.set_role(name, body.role)
        await ctx.store.audit.add(principal.actor, "user.role", name, "ok", f"role {body.role}")
    if body.password is not None:
        try:
            user = await access.set_password(name, body.password)
        except PasswordPolicyError as err:
            raise HTTPException(422, str(err)) from None
        await ctx.store.audit.add(principal.actor, "user.passwd", name, "ok")
    if "email" in body.model_fields_set:
        try:
            user = await access.set_email(name, body.email or None)
        except ValueError as err:
            raise HTTPException(422, str(err)) from None
        await ctx.store.audit.add(principal.actor, "user.email", name, "ok", body.email)
    if user is None:
        found = [u for u in await access.users() if u.name == name]
        if not found:
            raise NotFoundError(f"no user named {name!r}")
        user = found[0]
    return UserOut.of(user)


@router.post(
    "/users/{name}/password",
    response_model=UserOut,
    summary="Change your own password (with the current one); an admin changes anyone's",
    responses={
        401: {"description": "Wrong current password"},
        403: {"description": "Another user's password, from anyone but an admin"},
        429: {"description": "Throttled: too many wrong current passwords"},
    },
)
async def change_password(
    name: str, body: PasswordIn, principal: Anyone, request: Request, ctx: Ctx
) -> UserOut:
    access = _access(ctx)
    if principal.role != Role.ADMIN:
        if name != principal.user:
            raise HTTPException(403, "you may change your own password only")
        await access.check_password(name, body.current_password or "", client=_client(request))
    try:
        user = await access.set_password(name, body.password)
    except PasswordPolicyError as err:
        raise HTTPException(422, str(err)) from None
    await ctx.store.audit.add(principal.actor, "user.passwd", name, "ok")
    return UserOut.of(user)


@router.delete(
    "/users/{name}",
    status_code=204,
    summary="Remove an account with its tokens and sessions (admin)",
    responses={404: {"description": "No such user"}, 409: {"description": "Last admin"}},
)
async def remove_user(name: str, principal: Admin, ctx: Ctx) -> Response:
    access = _access(ctx)
    if await _admins(access) == [name]:
        raise HTTPException(409, f"{name} is the last admin: make another admin first")
    await access.remove_user(name)
    await ctx.store.audit.add(principal.actor, "user.remove", name, "ok")
    return Response(status_code=204)
