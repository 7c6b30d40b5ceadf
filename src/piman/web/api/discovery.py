"""``/api/v1/discovered``: devices the netboot servers saw that are not nodes, and accepting one.

The list is the inventory's bounded, in-memory discovered list (at most
``piman.inventory.sightings.MAX_DISCOVERED`` devices). Accepting makes a device a ``new`` node
with what was seen of it; that is an operator's decision (anyone on the provisioning network can
claim to be a Pi), and it goes to the audit log under the principal who made it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from piman.context import AppContext, InventoryHandle
from piman.fleet.records import DiscoveredDevice
from piman.web.api.nodes import NodeOut
from piman.web.deps import Ctx, get_ctx
from piman.web.security import Operator, Reader

__all__ = ["AcceptIn", "DiscoveredOut", "router"]

router = APIRouter(tags=["inventory"])


class DiscoveredOut(BaseModel):
    """A device seen on the wire that is no node (yet)."""

    mac: str
    first_seen: datetime
    last_seen: datetime
    sightings: int
    ip: str | None
    serial: str | None
    model: str | None
    vendor_class: str | None

    @classmethod
    def of(cls, d: DiscoveredDevice) -> DiscoveredOut:
        return cls(
            mac=d.mac,
            first_seen=d.first_seen,
            last_seen=d.last_seen,
            sightings=d.sightings,
            ip=d.ip,
            serial=d.serial,
            model=d.model,
            vendor_class=d.vendor_class,
        )


class AcceptIn(BaseModel):
    """The new node's name (default ``pi-<mac without colons>``)."""

    name: str | None = Field(default=None, max_length=63)


def _inventory(ctx: Annotated[AppContext, Depends(get_ctx)]) -> InventoryHandle:
    if ctx.inventory is None:
        raise HTTPException(503, "the inventory is not running on this manager")
    return ctx.inventory


Inventory = Annotated[InventoryHandle, Depends(_inventory)]


@router.get(
    "/discovered",
    response_model=list[DiscoveredOut],
    summary="Devices the DHCP and TFTP servers saw that are not nodes, most recent first",
)
async def list_discovered(_: Reader, inventory: Inventory) -> list[DiscoveredOut]:
    return [DiscoveredOut.of(d) for d in inventory.discovered()]


@router.post(
    "/discovered/{mac}/accept",
    response_model=NodeOut,
    status_code=201,
    summary="Make a discovered device a new node",
    responses={
        404: {"description": "No discovered device with that MAC"},
        409: {"description": "A node with that name exists already"},
        422: {"description": "A malformed MAC or name"},
    },
)
async def accept(
    mac: str, principal: Operator, ctx: Ctx, inventory: Inventory, body: AcceptIn | None = None
) -> NodeOut:
    try:
        node = await inventory.accept(mac, body.name if body is not None else None)
    except ValueError as err:
        raise HTTPException(422, str(err)) from None
    await ctx.store.audit.add(principal.actor, "node.accept", node.name, "ok", f"mac {node.mac}")
    return NodeOut.of(node)
