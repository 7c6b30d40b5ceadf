"""``/api/v1/environments`` and ``/api/v1/deployments``: reinstall nodes and watch them.

``GET /api/v1/deployments/{id}/events`` is a server-sent-events stream: an ``event: deployment``
with the deployment's state whenever it changes (bytes written, the step), an ``event: log`` per
line of its history (``id:`` set, so a reconnecting client sends ``Last-Event-ID`` and gets only
what it missed), and the stream ends after the deployment's final state.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from piman.access.roles import Action, allows
from piman.context import DeployHandle, DeployOptions, Principal
from piman.fleet.records import DeploymentEventRecord, DeploymentRecord, EnvironmentRecord
from piman.web.deps import get_ctx
from piman.web.security import Anyone, Reader, check_nodes, held_nodes

__all__ = ["DeploymentOut", "EnvironmentOut", "router"]

router = APIRouter(tags=["deploy"])

HEARTBEAT = 15.0


def _deploy(request: Request) -> DeployHandle:
    deploy = get_ctx(request).deploy
    if deploy is None:
        raise HTTPException(503, "reinstalls are not configured on this manager (deploy:)")
    return deploy


Deploy = Annotated[DeployHandle, Depends(_deploy)]


async def _deployment_for(
    request: Request, principal: Principal, deploy: DeployHandle, deployment_id: int, action: Action
) -> DeploymentRecord:
    """The deployment, when ``principal`` may ``action`` on its node (a ``user``: a node they
    hold; one who holds nothing is refused before the lookup)."""
    if not allows(principal.role, action) and not await held_nodes(request, principal):
        await check_nodes(request, principal, action, [None])  # 403, whatever the id
    record = await deploy.deployment(deployment_id)
    await check_nodes(request, principal, action, [record.node])
    return record


class EnvironmentOut(BaseModel):
    name: str
    source: str
    source_sha256: str
    kind: str
    image_size: int
    image_sha256: str
    mapped_bytes: int
    table: str
    os_family: str
    customisation: str
    boot_files: list[str]
    description: str
    created_at: datetime
    created_by: str

    @classmethod
    def of(cls, e: EnvironmentRecord) -> EnvironmentOut:
        return cls(
            name=e.name,
            source=e.source,
            source_sha256=e.source_sha256,
            kind=e.kind,
            image_size=e.image_size,
            image_sha256=e.image_sha256,
            mapped_bytes=e.mapped_bytes,
            table=e.table,
            os_family=e.os_family,
            customisation=e.customisation,
            boot_files=list(e.boot_files),
            description=e.description,
            created_at=e.created_at,
            created_by=e.created_by,
        )


class DeploymentOut(BaseModel):
    id: int
    node: str
    environment: str
    state: str
    attempt: int
    deadline_at: datetime | None
    ranges_done: int
    bytes_done: int
    bytes_total: int
    hostname: str | None
    result: str | None
    reason: str | None
    created_by: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, d: DeploymentRecord) -> DeploymentOut:
        return cls(
            id=d.id,
            node=d.node,
            environment=d.environment,
            state=d.state,
            attempt=d.attempt,
            deadline_at=d.deadline_at,
            ranges_done=d.ranges_done,
            bytes_done=d.bytes_done,
            bytes_total=d.bytes_total,
            hostname=d.options.get("hostname"),
            result=d.result,
            reason=d.reason,
            created_by=d.created_by,
            created_at=d.created_at,
            updated_at=d.updated_at,
            finished_at=d.finished_at,
        )


class EventOut(BaseModel):
    id: int
    at: datetime
    state: str
    kind: str
    detail: str

    @classmethod
    def of(cls, e: DeploymentEventRecord) -> EventOut:
        return cls(id=e.id, at=e.at, state=e.state, kind=e.kind, detail=e.detail)


class DeployIn(BaseModel):
    """Deploy an environment to nodes (the configured default environment when none)."""

    model_config = ConfigDict(extra="forbid")

    nodes: list[str] = Field(min_length=1, max_length=4096)
    environment: str | None = Field(None, max_length=64)
    hostname: str | None = Field(
        None, max_length=63, description="A name, or a pattern with {node}"
    )
    ssh_keys: list[str] = Field(default_factory=list, max_length=64)
    customisation: Literal["firstrun", "cloudinit", "none"] | None = Field(
        None, description="The first-boot format (default: what the environment's image uses)"
    )


@router.get("/environments", response_model=list[EnvironmentOut], summary="Every environment")
async def list_environments(_: Reader, deploy: Deploy) -> list[EnvironmentOut]:
    return [EnvironmentOut.of(e) for e in await deploy.environments()]


@router.get(
    "/environments/{name}",
    response_model=EnvironmentOut,
    summary="One environment",
    responses={404: {"description": "No environment of that name"}},
)
async def get_environment(name: str, _: Reader, deploy: Deploy) -> EnvironmentOut:
    return EnvironmentOut.of(await deploy.environment(name))


@router.post(
    "/deployments",
    response_model=list[DeploymentOut],
    status_code=201,
    summary="Reinstall nodes with an environment",
    responses={
        404: {"description": "An unknown node or environment"},
        403: {"description": "A node the principal may not deploy (a user: not held)"},
        409: {"description": "A node is deploying already"},
        422: {"description": "A node that cannot be deployed (no switch port, bad state)"},
    },
)
async def start(
    body: DeployIn, request: Request, principal: Anyone, deploy: Deploy
) -> list[DeploymentOut]:
    await check_nodes(request, principal, Action.DEPLOY, body.nodes)
    options = DeployOptions(
        hostname=body.hostname, ssh_keys=tuple(body.ssh_keys), customisation=body.customisation
    )
    try:
        made = await deploy.start(
            body.nodes, body.environment, actor=principal.actor, options=options
        )
    except ValueError as err:
        raise HTTPException(422, str(err)) from None
    return [DeploymentOut.of(d) for d in made]


@router.get("/deployments", response_model=list[DeploymentOut], summary="Deployments, newest first")
async def list_deployments(
    _: Reader,
    deploy: Deploy,
    node: str | None = None,
    active: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[DeploymentOut]:
    records = await deploy.deployments(node=node, active=active, limit=limit)
    return [DeploymentOut.of(d) for d in records]


# What a deployment's own routes answer besides: the principal may not read or act on it.
_ONE: dict[int | str, dict[str, Any]] = {
    403: {"description": "Not the role's, and the node of the deployment is not held"},
    404: {"description": "No such deployment"},
}


@router.get(
    "/deployments/{deployment_id}",
    response_model=DeploymentOut,
    summary="One deployment",
    responses=_ONE,
)
async def get_deployment(
    deployment_id: int, request: Request, principal: Anyone, deploy: Deploy
) -> DeploymentOut:
    return DeploymentOut.of(
        await _deployment_for(request, principal, deploy, deployment_id, Action.READ)
    )


@router.get(
    "/deployments/{deployment_id}/history",
    response_model=list[EventOut],
    summary="A deployment's history (transitions, power, installer lines)",
    responses=_ONE,
)
async def history(
    deployment_id: int, request: Request, principal: Anyone, deploy: Deploy
) -> list[EventOut]:
    await _deployment_for(request, principal, deploy, deployment_id, Action.READ)
    return [EventOut.of(e) for e in await deploy.events(deployment_id)]


@router.post(
    "/deployments/{deployment_id}/cancel",
    response_model=DeploymentOut,
    summary="Cancel a deployment (the node is left failed_deployment)",
    responses=_ONE,
)
async def cancel(
    deployment_id: int, request: Request, principal: Anyone, deploy: Deploy
) -> DeploymentOut:
    await _deployment_for(request, principal, deploy, deployment_id, Action.DEPLOY)
    return DeploymentOut.of(await deploy.cancel(deployment_id, actor=principal.actor))


def _sse(event: str, data: dict[str, Any], ident: int | None = None) -> bytes:
    head = f"id: {ident}\n" if ident is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, default=str)}\n\n".encode()


@router.get(
    "/deployments/{deployment_id}/events",
    summary="Server-sent events: the deployment's state as it changes, and its log",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, **_ONE},
)
async def events(
    deployment_id: int,
    request: Request,
    principal: Anyone,
    deploy: Deploy,
    last_event_id: Annotated[int | None, Header()] = None,
) -> StreamingResponse:
    # 403 or 404 before the stream starts
    first = await _deployment_for(request, principal, deploy, deployment_id, Action.READ)

    async def stream() -> AsyncIterator[bytes]:
        after = last_event_id or 0
        sent: DeploymentOut | None = None
        record = first
        idle = 0.0
        while True:
            for event in await deploy.events(deployment_id, after=after):
                after = event.id
                yield _sse("log", EventOut.of(event).model_dump(mode="json"), event.id)
            out = DeploymentOut.of(record)
            if out != sent:
                sent = out
                idle = 0.0
                yield _sse("deployment", out.model_dump(mode="json"))
            if record.result is not None:
                return
            if idle >= HEARTBEAT:
                idle = 0.0
                yield b": still here\n\n"
            started = asyncio.get_running_loop().time()
            await deploy.wait_change(1.0)
            idle += asyncio.get_running_loop().time() - started
            record = await deploy.deployment(deployment_id)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
