"""``/api/v1/nodes/{name}/power``: switch a node on, off or cycle it; read its port.

``/api/v1/power`` runs one command on many targets at once (what ``piman power --url`` uses), so
that the manager staggers their power-on exactly as it does for the CLI.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from piman.errors import NotFoundError
from piman.manager import ManagerContext
from piman.power.controller import Outcome, PowerController, Target

__all__ = ["BulkPowerRequest", "PowerOut", "PowerRequest", "router"]

router = APIRouter(tags=["power"])


class PowerRequest(BaseModel):
    action: Literal["on", "off", "cycle"]


class BulkPowerRequest(BaseModel):
    action: Literal["on", "off", "cycle", "status"]
    targets: list[str]  # node names, switch:port, or "all"


class PowerOut(BaseModel):
    """The outcome of a power request, or a port's state."""

    node: str | None
    switch: str
    port: int
    action: str
    ok: bool
    state: str
    detection: str | None = None
    watts: float | None = None
    error: str | None = None

    @classmethod
    def of(cls, name: str | None, o: Outcome) -> PowerOut:
        r = o.reading
        return cls(
            node=name,
            switch=o.target.switch.name,
            port=o.target.port,
            action=o.action,
            ok=o.ok,
            state=o.state.value,
            detection=r.detection if r else None,
            watts=r.watts if r else None,
            error=o.error,
        )


def _controller(request: Request) -> PowerController:
    ctx: ManagerContext = request.app.state.ctx
    controller: PowerController = ctx.power
    return controller


def _target(controller: PowerController, name: str) -> Target | JSONResponse:
    if controller.config.node(name) is None:
        raise NotFoundError(f"no node named {name!r} in the configuration")
    try:
        [target] = controller.resolve([name])
    except NotFoundError as err:
        return JSONResponse({"error": "no_port", "detail": str(err)}, status_code=409)
    return target


_RESPONSES: dict[int | str, dict[str, str]] = {
    404: {"description": "No node of that name"},
    409: {"description": "The node has no switch port"},
    502: {"description": "The switch failed or refused (see error)"},
}


@router.post(
    "/nodes/{name}/power",
    response_model=PowerOut,
    summary="Switch a node on, off, or power-cycle it",
    responses=_RESPONSES,
)
async def set_power(name: str, body: PowerRequest, request: Request) -> PowerOut | JSONResponse:
    controller = _controller(request)
    target = _target(controller, name)
    if isinstance(target, JSONResponse):
        return target
    [outcome] = await controller.run(body.action, [target], actor="api")
    out = PowerOut.of(name, outcome)
    if not outcome.ok:
        return JSONResponse(out.model_dump(), status_code=502)
    return out


@router.get(
    "/nodes/{name}/power",
    response_model=PowerOut,
    summary="Read a node's port: admin state, detection, watts",
    responses=_RESPONSES,
)
async def get_power(name: str, request: Request) -> PowerOut | JSONResponse:
    controller = _controller(request)
    target = _target(controller, name)
    if isinstance(target, JSONResponse):
        return target
    [outcome] = await controller.run("status", [target], actor="api")
    out = PowerOut.of(name, outcome)
    if not outcome.ok:
        return JSONResponse(out.model_dump(), status_code=502)
    return out


@router.post(
    "/power",
    response_model=list[PowerOut],
    summary="Run one power command on many targets (node names, switch:port, all)",
    responses={404: {"description": "A target names no node or port"}},
)
async def run_power(body: BulkPowerRequest, request: Request) -> list[PowerOut]:
    controller = _controller(request)
    targets = controller.resolve(body.targets)
    outcomes = await controller.run(body.action, targets, actor="api")
    return [PowerOut.of(o.target.node, o) for o in outcomes]
