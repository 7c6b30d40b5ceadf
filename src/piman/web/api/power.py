"""``/api/v1/nodes/{name}/power``: switch a node on, off or cycle it; read its port."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from piman.errors import NotFoundError
from piman.manager import ManagerContext
from piman.power.controller import Outcome, PowerController, Target

__all__ = ["PowerOut", "PowerRequest", "router"]

router = APIRouter(tags=["power"])


class PowerRequest(BaseModel):
    action: Literal["on", "off", "cycle"]


class PowerOut(BaseModel):
    """The outcome of a power request, or a port's state."""

    node: str
    switch: str
    port: int
    action: str
    ok: bool
    state: str
    detection: str | None = None
    watts: float | None = None
    error: str | None = None

    @classmethod
    def of(cls, name: str, o: Outcome) -> PowerOut:
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
