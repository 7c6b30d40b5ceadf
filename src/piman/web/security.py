"""Who is asking, and whether the request may come at all: Host, Origin, content type, principal.

Theory of operation
-------------------
:class:`RequestGuard` (ASGI middleware, before any route) refuses:

- a request whose ``Host`` is not one the manager answers to (:class:`HostPolicy`: IP literals,
  ``localhost``, this machine's names, ``manager.allowed_hosts`` and the host of
  ``manager.external_url``): a DNS-rebinding page has its own name in ``Host`` → 400;
- a mutating request (POST, PUT, PATCH, DELETE) from another origin: its ``Origin`` must be the
  manager's own (the scheme and ``Host`` it was reached by, or ``external_url``), or, without
  ``Origin``, its ``Sec-Fetch-Site`` must be ``same-origin``/``none``; a request that carries
  neither and a session cookie is refused too (a browser always sends one of them). Requests
  with a bearer token and no cookie (the CLI, scripts) need neither → 403;
- a mutating request with a body that is not ``application/json`` (HTML forms and
  ``sendBeacon`` cannot send that cross-origin without a CORS preflight, which is never
  granted) → 415;
- a body larger than :data:`MAX_BODY` → 413, or without a ``Content-Length`` (chunked) → 411:
  no request can make the manager buffer more than that.

Then routes ask for a principal through :data:`Reader`, :data:`Operator`, :data:`Admin`,
:data:`Anyone` (any signed-in principal) or :func:`optional_principal`: a bearer token
(``Authorization: Bearer pm_…``) or the session cookie (:data:`SESSION_COOKIE`). No credentials
→ 401; a role that does not allow the action → 403. Routes about one node (``{name}``) ask
through :data:`NodeReader` and :data:`NodePower`, and routes about several through
:func:`check_nodes`: there a ``user`` passes for the nodes they hold (an active reservation).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from piman.access.roles import Action, Role, allows, may_act_on
from piman.config.models import Config
from piman.context import AccessHandle, Principal
from piman.web.deps import get_ctx

__all__ = [
    "MAX_BODY",
    "SESSION_COOKIE",
    "Admin",
    "Anyone",
    "Deployer",
    "HostPolicy",
    "NodePower",
    "NodeReader",
    "Operator",
    "Reader",
    "RequestGuard",
    "Silencer",
    "check_nodes",
    "held_nodes",
    "optional_principal",
    "require",
    "require_on_node",
]

logger = logging.getLogger(__name__)

SESSION_COOKIE = "piman_session"
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_BODY = 1 << 20  # bytes: the largest request body the API reads
# Routes whose body is a file (application/octet-stream), bounded by the route itself
# (deploy.max_upload) instead of MAX_BODY; Origin and Host are checked as for any other.
UPLOADS = frozenset({("POST", "/api/v1/environments")})
UPLOAD_PATHS = frozenset(path for _, path in UPLOADS)


def _host_only(value: str) -> str:
    """``[::1]:8000`` → ``::1``, ``Piman.lab:8000`` → ``piman.lab``."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    host, sep, port = value.rpartition(":")
    return host if sep and port.isdigit() and ":" not in host else value


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class HostPolicy:
    """The host names the manager answers to (IP literals always: DNS cannot rebind those)."""

    names: frozenset[str]
    origins: frozenset[str]  # extra origins a browser may send (external_url's)

    @classmethod
    def of(cls, config: Config, machine_names: Iterable[str] | None = None) -> HostPolicy:
        names = {"localhost", "localhost.localdomain"}
        if machine_names is None:
            machine_names = {socket.gethostname(), socket.getfqdn()}
        names.update(n.lower() for n in machine_names if n)
        names.update(_host_only(h) for h in config.manager.allowed_hosts)
        origins: set[str] = set()
        if config.manager.external_url:
            url = urlsplit(config.manager.external_url)
            if url.hostname:
                names.add(url.hostname.lower())
                origins.add(f"{url.scheme}://{url.netloc}".lower())
        return cls(frozenset(names), frozenset(origins))

    def allows_host(self, host_header: str) -> bool:
        host = _host_only(host_header)
        return bool(host) and (_is_ip(host) or host in self.names)

    def same_origin(self, origin: str, scheme: str, host_header: str) -> bool:
        origin = origin.strip().lower()
        if origin in self.origins:
            return True
        return origin == f"{scheme}://{host_header.strip().lower()}"


def _reject(status: int, error: str, detail: str) -> tuple[int, bytes]:
    return status, json.dumps({"error": error, "detail": detail}).encode()


class RequestGuard:
    """ASGI middleware: Host for every request, Origin and content type for mutating ones."""

    def __init__(self, app: ASGIApp, policy: HostPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.check(scope)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, body = refusal
        client = scope.get("client") or ("-", 0)
        logger.warning(
            "[http client=%s] %s %s refused: %s",
            client[0],
            scope["method"],
            scope["path"],
            json.loads(body)["detail"],
        )
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def check(self, scope: Scope) -> tuple[int, bytes] | None:
        headers: dict[bytes, bytes] = {}
        for key, value in scope["headers"]:
            headers.setdefault(key, value)  # the first of repeated headers decides
        host = headers.get(b"host", b"").decode("latin-1")
        if not self.policy.allows_host(host):
            return _reject(400, "bad_host", f"this manager does not answer to host {host!r}")
        if scope["method"] not in MUTATING:
            return None
        origin = headers.get(b"origin")
        fetch_site = headers.get(b"sec-fetch-site")
        if origin is not None:
            if not self.policy.same_origin(origin.decode("latin-1"), scope["scheme"], host):
                return _reject(403, "cross_origin", "cross-origin request refused")
        elif fetch_site is not None:
            if fetch_site not in (b"same-origin", b"none"):
                return _reject(403, "cross_origin", "cross-site request refused")
        elif SESSION_COOKIE.encode() in headers.get(b"cookie", b""):
            return _reject(
                403, "cross_origin", "a request with a session cookie must say its Origin"
            )
        if b"transfer-encoding" in headers:
            return _reject(411, "length_required", "send the body with a Content-Length")
        length = headers.get(b"content-length", b"0").strip() or b"0"
        if not length.isdigit():
            return _reject(400, "bad_length", "Content-Length is not a number")
        if scope["path"] in UPLOAD_PATHS and (scope["method"], scope["path"]) not in UPLOADS:
            return None  # a method the upload path does not have: the router answers 405
        if (scope["method"], scope["path"]) in UPLOADS:
            kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            if int(length) > 0 and kind != b"application/octet-stream":
                return _reject(415, "content_type", "send the file as application/octet-stream")
            return None
        if int(length) > MAX_BODY:
            return _reject(413, "too_large", f"a request body has at most {MAX_BODY} bytes")
        if int(length) > 0:
            kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            if kind != b"application/json":
                return _reject(415, "content_type", "send the body as application/json")
        return None


# Principals --------------------------------------------------------------------------------------


def _access(request: Request) -> AccessHandle:
    access = get_ctx(request).access
    if access is None:
        raise HTTPException(503, "accounts are not available on this manager")
    return access


async def optional_principal(request: Request) -> Principal | None:
    """The principal of a bearer token or the session cookie; None when there is neither.

    A credential that is present but wrong is a 401, not "anonymous".
    """
    cached = getattr(request.state, "principal", False)
    if cached is not False:
        assert cached is None or isinstance(cached, Principal)
        return cached
    principal: Principal | None = None
    authorization = request.headers.get("authorization")
    cookie = request.cookies.get(SESSION_COOKIE)
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("use Authorization: Bearer <token>")
        token = token.strip()
        access = _access(request)
        if token.startswith("local."):
            principal = access.from_local(token, request.headers.get("x-piman-local-user", ""))
        else:
            principal = await access.from_token(token)
        if principal is None:
            raise _unauthorized("the token is unknown, revoked or expired")
    elif cookie is not None:
        principal = await _access(request).from_session(cookie)
        if principal is None:
            raise _unauthorized("the session has ended: log in again")
    request.state.principal = principal
    return principal


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": 'Bearer realm="piman"'})


async def _anyone(
    principal: Annotated[Principal | None, Depends(optional_principal)],
) -> Principal:
    if principal is None:
        raise _unauthorized("log in, or send Authorization: Bearer <token>")
    return principal


def require(action: Action) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the principal, when its role allows ``action`` fleet-wide (else 401/403)."""

    async def check(principal: Annotated[Principal, Depends(_anyone)]) -> Principal:
        if not allows(principal.role, action):
            raise HTTPException(403, f"role {principal.role} may not {action.value}: ask an admin")
        return principal

    check.__name__ = f"require_{action.value}"
    return check


async def held_nodes(request: Request, principal: Principal) -> frozenset[str]:
    """The nodes a ``user`` holds now (their active reservations); empty for other roles."""
    reservations = get_ctx(request).reservations
    if principal.role != Role.USER or reservations is None:
        return frozenset()
    mine = await reservations.reservations(principal=principal, live=True)
    return frozenset(n for r in mine if r.state == "active" for n in r.nodes)


async def check_nodes(
    request: Request, principal: Principal, action: Action, nodes: Iterable[str | None]
) -> None:
    """403 unless ``principal`` may do ``action`` on every one of ``nodes`` (fleet-wide, or
    as the holder of each; a target that is no node, such as ``switch:port``, needs the role)."""
    if allows(principal.role, action):
        return
    held = await held_nodes(request, principal)
    for node in nodes:
        if not may_act_on(principal.role, action, holds=node is not None and node in held):
            what = node or "a port without a node"
            raise HTTPException(
                403, f"role {principal.role} may not {action.value} {what}: you do not hold it"
            )


def require_on_node(action: Action) -> Callable[..., Awaitable[Principal]]:
    """A dependency of routes with a ``{name}`` node: the principal, when its role allows
    ``action`` fleet-wide or it holds that node (else 401/403)."""

    async def check(
        name: str, request: Request, principal: Annotated[Principal, Depends(_anyone)]
    ) -> Principal:
        await check_nodes(request, principal, action, [name])
        return principal

    check.__name__ = f"require_{action.value}_on_node"
    return check


Anyone = Annotated[Principal, Depends(_anyone)]
Reader = Annotated[Principal, Depends(require(Action.READ))]
Operator = Annotated[Principal, Depends(require(Action.POWER))]
Deployer = Annotated[Principal, Depends(require(Action.DEPLOY))]
Silencer = Annotated[Principal, Depends(require(Action.SILENCE))]
Admin = Annotated[Principal, Depends(require(Action.ADMIN))]
NodeReader = Annotated[Principal, Depends(require_on_node(Action.READ))]
NodePower = Annotated[Principal, Depends(require_on_node(Action.POWER))]
