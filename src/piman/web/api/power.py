"""``/api/v1/nodes/{name}/power``: switch a node on, off or cycle it; read its port.

``/api/v1/power`` runs one command on many targets at once (what ``piman power --url`` uses), so
that the manager staggers their power-on exactly as it does for the CLI.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from piman.access.roles import Action
from piman.context import AppContext, PowerHandle
from piman.errors import NotFoundError
from piman.fleet.power import PowerResult, PowerTarget
from piman.web.deps import Ctx, Power
from piman.web.security import Anyone, NodePower, NodeReader, check_nodes

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
    def of(cls, name: str | None, o: PowerResult) -> PowerOut:
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


def _target(ctx: AppContext, power: PowerHandle, name: str) -> PowerTarget | JSONResponse:
    if ctx.config.node(name) is None:
        raise NotFoundError(f"no node named {name!r} in the configuration")
    try:
        [target] = power.resolve([name])
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
async def set_power(
    name: str, body: PowerRequest, principal: NodePower, ctx: Ctx, power: Power
) -> PowerOut | JSONResponse:
    target = _target(ctx, power, name)
    if isinstance(target, JSONResponse):
        return target
    [outcome] = await power.run(body.action, [target], actor=principal.actor)
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
async def get_power(
    name: str, principal: NodeReader, ctx: Ctx, power: Power
) -> PowerOut | JSONResponse:
    target = _target(ctx, power, name)
    if isinstance(target, JSONResponse):
        return target
    [outcome] = await power.run("status", [target], actor=principal.actor)
    out = PowerOut.of(name, outcome)
    if not outcome.ok:
        return JSONResponse(out.model_dump(), status_code=502)
    return out


@router.post(
    "/power",
    response_model=list[PowerOut],
    summary="Run one power command on many targets (node names, switch:port, all)",
    responses={
        403: {"description": "A target the principal may not switch (not held, or a bare port)"},
        404: {"description": "A target names no node or port"},
    },
)
async def run_power(
    body: BulkPowerRequest, request: Request, principal: Anyone, power: Power
) -> list[PowerOut]:
    needed = Action.READ if body.action == "status" else Action.POWER
    targets = power.resolve(body.targets)
    await check_nodes(request, principal, needed, [t.node for t in targets])
    outcomes = await power.run(body.action, targets, actor=principal.actor)
    return [PowerOut.of(o.target.node, o) for o in outcomes]
