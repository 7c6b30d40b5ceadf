"""The FastAPI application: REST API under /api/v1, the web UI at /, /metrics and /healthz.

:func:`create_app` composes the routers from the handles the context holds: the power routes
exist when ``ctx.power`` does, the monitoring routes when ``ctx.monitor`` does, the alert routes
when monitoring runs alerting. Nothing registers itself from elsewhere.

Access (see :mod:`piman.web.security`): every request passes the :class:`RequestGuard` (Host,
Origin, content type); every route but ``/healthz``, ``/login``, the static files, the login
and token-login calls asks for a principal and a role. ``/metrics`` is open unless
``manager.metrics_token`` is set. The API's documentation (``/api/v1/docs``) is Swagger UI from
the ``swagger-ui-bundle`` package, served by the manager itself: nothing comes from a CDN.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from piman import __version__
from piman.access.roles import Action, allows
from piman.context import AppContext
from piman.errors import (
    AuthError,
    ConflictError,
    Forbidden,
    Gone,
    NotFoundError,
    PimanError,
    RateLimited,
)
from piman.web.api import (
    accounts,
    alerts,
    boot,
    deploy,
    discovery,
    env_upload,
    inventory,
    monitoring,
    nodes,
    power,
    reservations,
    ssh,
)
from piman.web.api.fleetcache import FleetCache, InvalidateOnWrite
from piman.web.openapi import install as install_openapi
from piman.web.security import HostPolicy, Reader, RequestGuard, optional_principal
from piman.web.ui import (
    admin_page,
    alerts_page,
    envs_page,
    live,
    node_page,
    pages,
    reservations_page,
)

__all__ = ["create_app", "create_installer_app"]

STATIC = Path(__file__).parent / "ui" / "static"
OPENAPI_URL = "/api/v1/openapi.json"


def _swagger_assets() -> Path | None:
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:  # the docs page then says where to find the document instead
        return None
    return Path(str(swagger_ui_path))


def create_app(ctx: AppContext) -> FastAPI:
    """Build the app around a context (tests pass their own)."""
    app = FastAPI(
        title="piman",
        version=__version__,
        description="Raspberry Pi fleet manager: nodes, switches, power, netboot, monitoring. "
        "Authenticate with `Authorization: Bearer <token>` (`piman token create`) or the "
        "session cookie of the web UI.",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.ctx = ctx
    app.state.fleet_cache = FleetCache(ctx)  # the node list pages and /api/v1/nodes share
    app.add_middleware(InvalidateOnWrite, cache=app.state.fleet_cache)
    app.add_middleware(RequestGuard, policy=HostPolicy.of(ctx.config))
    _errors(app)
    install_openapi(app)  # the guard's and the checks' answers documented; Allow on a 405

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    return _rest(app, ctx)


def create_installer_app(ctx: AppContext) -> FastAPI:
    """Only ``/boot/v1``, for the plain-HTTP listener of a manager whose API is HTTPS
    (``manager.tls``): the installer's busybox wget speaks plain HTTP. Its own secrets (the
    one-time token, the session) and the node's address are what it checks."""
    app = FastAPI(title="piman installer API", version=__version__, openapi_url=None,
                  docs_url=None, redoc_url=None)  # fmt: skip
    app.state.ctx = ctx
    app.add_middleware(RequestGuard, policy=HostPolicy.of(ctx.config))
    _errors(app)
    install_openapi(app)
    app.include_router(boot.router)
    return app


def _errors(app: FastAPI) -> None:
    @app.exception_handler(NotFoundError)
    async def _not_found(_request: Request, err: NotFoundError) -> JSONResponse:
        return JSONResponse({"error": "not_found", "detail": str(err)}, status_code=404)

    @app.exception_handler(AuthError)
    async def _unauthorized(_request: Request, err: AuthError) -> JSONResponse:
        return JSONResponse({"error": "unauthorized", "detail": str(err)}, status_code=401)

    @app.exception_handler(Forbidden)
    async def _forbidden(_request: Request, err: Forbidden) -> JSONResponse:
        return JSONResponse({"error": "forbidden", "detail": str(err)}, status_code=403)

    @app.exception_handler(ConflictError)
    async def _conflict(_request: Request, err: ConflictError) -> JSONResponse:
        return JSONResponse({"error": "conflict", "detail": str(err)}, status_code=409)

    @app.exception_handler(Gone)
    async def _gone(_request: Request, err: Gone) -> JSONResponse:
        return JSONResponse({"error": "gone", "detail": str(err)}, status_code=410)

    @app.exception_handler(RateLimited)
    async def _throttled(_request: Request, err: RateLimited) -> JSONResponse:
        return JSONResponse(
            {"error": "rate_limited", "detail": str(err)},
            status_code=429,
            headers={"Retry-After": str(int(err.retry_after) + 1)},
        )

    @app.exception_handler(PimanError)
    async def _failed(_request: Request, err: PimanError) -> JSONResponse:
        return JSONResponse({"error": "failed", "detail": str(err)}, status_code=500)


def _rest(app: FastAPI, ctx: AppContext) -> FastAPI:
    metrics_token = ctx.config.manager.metrics_token

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        if metrics_token is not None:
            given = request.headers.get("authorization", "")
            expected = f"Bearer {metrics_token.get_secret_value()}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                principal = await optional_principal(request)
                if principal is None or not allows(principal.role, Action.READ):
                    raise HTTPException(
                        401,
                        "send Authorization: Bearer <manager.metrics_token>",
                        headers={"WWW-Authenticate": 'Bearer realm="piman"'},
                    )
        return Response(generate_latest(ctx.metrics), media_type=CONTENT_TYPE_LATEST)

    @app.get(OPENAPI_URL, include_in_schema=False)
    async def openapi(_: Reader) -> dict[str, Any]:
        return app.openapi()

    assets = _swagger_assets()

    @app.get("/api/v1/docs", include_in_schema=False, response_class=HTMLResponse)
    async def docs(_: Reader) -> HTMLResponse:
        if assets is None:
            return HTMLResponse(
                f"<p>Swagger UI is not installed here; the API is described at "
                f'<a href="{OPENAPI_URL}">{OPENAPI_URL}</a>.</p>'
            )
        return get_swagger_ui_html(
            openapi_url=OPENAPI_URL,
            title="piman API",
            swagger_js_url="/api/v1/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/api/v1/docs/assets/swagger-ui.css",
            swagger_favicon_url="/api/v1/docs/assets/favicon-32x32.png",
        )

    if assets is not None:
        app.mount("/api/v1/docs/assets", StaticFiles(directory=assets), name="docs-assets")

    app.include_router(accounts.router, prefix="/api/v1")
    app.include_router(nodes.router, prefix="/api/v1")
    app.include_router(inventory.router, prefix="/api/v1")
    if ctx.inventory is not None:
        app.include_router(discovery.router, prefix="/api/v1")
    app.include_router(ssh.router, prefix="/api/v1")  # 503 while ctx.ssh is None
    if ctx.power is not None:
        app.include_router(power.router, prefix="/api/v1")
    if ctx.deploy is not None:
        app.include_router(deploy.router, prefix="/api/v1")
        app.include_router(env_upload.router, prefix="/api/v1")
        app.include_router(boot.router)
    if ctx.reservations is not None:
        app.include_router(reservations.router, prefix="/api/v1")
    if ctx.monitor is not None:
        app.include_router(monitoring.router, prefix="/api/v1")
        if ctx.monitor.alerting is not None:
            app.include_router(alerts.router, prefix="/api/v1")
    app.include_router(pages.router)
    app.include_router(node_page.router)
    app.include_router(reservations_page.router)
    app.include_router(envs_page.router)
    app.include_router(alerts_page.router)
    app.include_router(admin_page.router)
    app.include_router(live.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
