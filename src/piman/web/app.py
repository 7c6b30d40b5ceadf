"""The FastAPI application: REST API under /api/v1, the web UI at /, /metrics and /healthz."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from piman import __version__
from piman.errors import NotFoundError, PimanError
from piman.manager import ManagerContext
from piman.web.api import nodes
from piman.web.ui import pages

__all__ = ["create_app"]

STATIC = Path(__file__).parent / "ui" / "static"


def create_app(ctx: ManagerContext) -> FastAPI:
    """Build the app around a manager context (tests pass their own)."""
    app = FastAPI(
        title="piman",
        version=__version__,
        description="Raspberry Pi fleet manager: nodes, switches, power, netboot, monitoring.",
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        redoc_url=None,
    )
    app.state.ctx = ctx

    @app.exception_handler(NotFoundError)
    async def _not_found(_request: Request, err: NotFoundError) -> JSONResponse:
        return JSONResponse({"error": "not_found", "detail": str(err)}, status_code=404)

    @app.exception_handler(PimanError)
    async def _failed(_request: Request, err: PimanError) -> JSONResponse:
        return JSONResponse({"error": "failed", "detail": str(err)}, status_code=500)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(ctx.metrics), media_type=CONTENT_TYPE_LATEST)

    app.include_router(nodes.router, prefix="/api/v1")
    # Capabilities add their routers here (power, monitoring …) when they are on.
    for router in ctx.routers:
        app.include_router(router, prefix="/api/v1")
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
