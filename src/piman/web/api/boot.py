"""``/boot/v1``: the installer's conversation with the manager (docs/boot-protocol.md).

No account signs these requests: the one-time token (hello) and then the deployment's session
do, and only from the node's address (:mod:`piman.deploy.service` decides). Bodies are small
JSON objects; answers are plain text or a tar, what busybox ``wget`` reads.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Request
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from piman.context import DeployHandle
from piman.web.deps import get_ctx

__all__ = ["router"]

router = APIRouter(prefix="/boot/v1", tags=["installer"])

_REFUSED: dict[int | str, dict[str, Any]] = {
    403: {"description": "Not this deployment's token or session, or not from its node"},
    410: {"description": "The deployment ended (cancelled or finished): stop"},
}


def _deploy(request: Request) -> DeployHandle:
    deploy = get_ctx(request).deploy
    if deploy is None:
        raise HTTPException(503, "reinstalls are not configured on this manager (deploy:)")
    return deploy


Deploy = Annotated[DeployHandle, Depends(_deploy)]


def _secret(authorization: str | None) -> str:
    scheme, _, value = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise HTTPException(403, "send Authorization: Bearer <token>")
    return value.strip()


def _client(request: Request) -> str:
    return request.client.host if request.client else "-"


class HelloIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    node: str = Field("", max_length=64)
    disk: str = Field("", max_length=256)
    disk_bytes: int | None = Field(None, ge=0)
    installer: str = Field("1", max_length=16)


class ProgressIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    step: str = Field(max_length=32)
    ranges_done: int | None = Field(None, ge=0)
    bytes_done: int | None = Field(None, ge=0)
    bytes_total: int | None = Field(None, ge=0)


class ResultIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    ok: bool
    step: str = Field("", max_length=32)
    reason: str = Field("", max_length=2000)
    bytes_written: int | None = Field(None, ge=0)
    customise: str = Field("", max_length=16)  # "skipped" (with the reason) when it could not


@router.post(
    "/hello",
    response_class=PlainTextResponse,
    summary="The installer says hello with its one-time token; answers the plan",
    responses=_REFUSED,
)
async def hello(
    body: HelloIn,
    request: Request,
    deploy: Deploy,
    authorization: Annotated[str | None, Header()] = None,
) -> PlainTextResponse:
    plan = await deploy.hello(_secret(authorization), _client(request), body.model_dump())
    return PlainTextResponse(plan)


@router.post(
    "/deployments/{deployment_id}/progress",
    status_code=204,
    summary="The installer's progress (ranges written and synced, bytes)",
    responses=_REFUSED,
)
async def progress(
    deployment_id: int,
    body: ProgressIn,
    request: Request,
    deploy: Deploy,
    authorization: Annotated[str | None, Header()] = None,
) -> Response:
    await deploy.progress(
        deployment_id, _secret(authorization), _client(request), body.model_dump()
    )
    return Response(status_code=204)


@router.post(
    "/deployments/{deployment_id}/result",
    status_code=204,
    summary="The installer's result",
    responses=_REFUSED,
)
async def result(
    deployment_id: int,
    body: ResultIn,
    request: Request,
    deploy: Deploy,
    authorization: Annotated[str | None, Header()] = None,
) -> Response:
    await deploy.result(deployment_id, _secret(authorization), _client(request), body.model_dump())
    return Response(status_code=204)


@router.get(
    "/deployments/{deployment_id}/files.tar",
    summary="The first-boot files for the node's boot partition (a tar)",
    responses=_REFUSED,
    response_class=Response,
)
async def files(
    deployment_id: int,
    request: Request,
    deploy: Deploy,
    authorization: Annotated[str | None, Header()] = None,
) -> Response:
    data = await deploy.files(deployment_id, _secret(authorization), _client(request))
    return Response(data, media_type="application/x-tar")
