"""``/api/v1/nodes`` and ``/api/v1/switches``."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, TypeAdapter

from piman.fleet.records import NodeRecord
from piman.web.api.fleetcache import cache_of
from piman.web.deps import Ctx
from piman.web.security import NodeReader, Reader

__all__ = ["NodeOut", "SwitchOut", "router"]

router = APIRouter(tags=["inventory"])


class NodeOut(BaseModel):
    """A node as the API shows it."""

    name: str
    state: str
    power: str
    ip: str | None
    mac: str | None
    model: str | None
    serial: str | None
    hostname: str | None
    switch: str | None
    port: int | None
    declared: bool
    vendor_class: str | None
    first_seen: datetime | None
    last_seen: datetime | None

    @classmethod
    def of(cls, n: NodeRecord) -> NodeOut:
        return cls(
            name=n.name,
            state=n.state,
            power=n.power_state,
            ip=n.ip,
            mac=n.mac,
            model=n.model,
            serial=n.serial,
            hostname=n.hostname,
            switch=n.switch,
            port=n.port,
            declared=n.declared,
            vendor_class=n.vendor_class,
            first_seen=n.first_seen,
            last_seen=n.last_seen,
        )


class SwitchOut(BaseModel):
    name: str
    address: str | None
    driver: str
    profile: str | None
    nodes: int


_NODE_LIST = TypeAdapter(list[NodeOut])


def encode_nodes(nodes: list[NodeRecord]) -> bytes:
    """The JSON of ``GET /nodes`` (made once per node list read, on a worker thread)."""
    return _NODE_LIST.dump_json([NodeOut.of(n) for n in nodes])


@router.get("/nodes", response_model=list[NodeOut], summary="List every node")
async def list_nodes(_: Reader, request: Request, ctx: Ctx) -> Response:
    body = await cache_of(request, ctx).derived("api.nodes", encode_nodes)
    return Response(body, media_type="application/json")


@router.get(
    "/nodes/{name}",
    response_model=NodeOut,
    summary="One node",
    responses={404: {"description": "No node of that name"}},
)
async def get_node(name: str, _: NodeReader, ctx: Ctx) -> NodeOut:
    return NodeOut.of(await ctx.store.nodes.get(name))


@router.get("/switches", response_model=list[SwitchOut], summary="List every switch")
async def list_switches(_: Reader, ctx: Ctx) -> list[SwitchOut]:
    store = ctx.store
    nodes = await store.nodes.list()
    return [
        SwitchOut(
            name=s.name,
            address=s.address,
            driver=s.driver,
            profile=s.profile,
            nodes=sum(1 for n in nodes if n.switch == s.name),
        )
        for s in await store.switches.list()
        if s.declared
    ]
