"""``/api/v1/inventory``: the fleet as an Ansible dynamic inventory (``piman inventory --url``).

Readers (viewer, operator, admin) get every node. A ``user`` gets the nodes they hold (their
active reservations) and nothing else: an empty inventory when they hold none, 403 for
``?host=`` of a node they do not hold, so ``ansible-playbook -i`` with a user's token reaches
exactly their reservation. The fleet key's path (a file on the manager) is given to readers only.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request

from piman.access.roles import Action, allows
from piman.inventory.ansible import common_vars, host_vars, listing
from piman.inventory.hosts import collect, fleet_key
from piman.web.deps import Ctx
from piman.web.security import Anyone, held_nodes

__all__ = ["router"]

router = APIRouter(tags=["inventory"])


@router.get(
    "/inventory",
    summary="The fleet as an Ansible inventory (the dynamic-inventory --list JSON)",
    responses={
        403: {"description": "A user asked for a node they do not hold"},
        404: {"description": "No host of that name"},
    },
)
async def inventory(
    principal: Anyone,
    request: Request,
    ctx: Ctx,
    host: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=253,
            description="One host's variables (the protocol's --host NAME) instead of the list",
        ),
    ] = None,
) -> dict[str, Any]:
    hosts = await collect(ctx.config, ctx.store)
    reader = allows(principal.role, Action.READ)
    if not reader:
        held = await held_nodes(request, principal)
        if host is not None and host not in held:
            raise HTTPException(
                403, f"role {principal.role} may not read {host}: you do not hold it"
            )
        hosts = [h for h in hosts if h.name in held]
    key = fleet_key(ctx.config) if reader else None
    answer = listing(hosts, variables=common_vars(key_file=key, port=ctx.config.ssh.port))
    return host_vars(answer, host) if host is not None else answer
