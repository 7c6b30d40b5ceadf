"""``POST /api/v1/ssh/run``: one command on many nodes over SSH, streamed as it finishes.

Theory of operation. The request names its targets as everywhere (node names, ``switch:port``,
``all``, group names such as ``model_pi4``: :func:`piman.inventory.groups.select` over
:func:`piman.inventory.hosts.collect`), and ``reserved: true`` adds the caller's nodes (those of
their active reservations). Everything that can refuse does so before any host is contacted:

1. the role: operators and admins may run on any node, a ``user`` on the nodes they hold, a
   viewer on none (403);
2. the targets: an unknown one is a 404 naming it; a ``user``'s first node that they do not
   hold is a 403 naming it; nothing to run on is a 409 (``reserved`` alone, nothing held);
3. SSH itself: 503 when the manager runs no SSH client (``ctx.ssh``); a node without an
   address is a 422 naming it.

Then each node gets an audit entry (``ssh.run``, the actor, the node, the command), and the
answer is ``application/x-ndjson``: one JSON object per host as it finishes (``node, host,
exit_status, stdout, stderr, error, elapsed, truncated``), then ``{"summary": {"total", "ok",
"failed"}}``. A client that goes away stops the run (the SSH stream is closed).

Bounds: the command at most :data:`MAX_COMMAND` characters, at most :data:`MAX_TARGETS` target
specs naming at most :data:`MAX_NODES` nodes; the deadlines and the concurrency a caller asks for
are clamped to :data:`MAX_CONNECT_TIMEOUT`, :data:`MAX_COMMAND_TIMEOUT`, :data:`MAX_CONCURRENCY`
(absent: the ``ssh:`` settings). Output per host and stream is bounded by ``ssh.max_output``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Annotated

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from piman.access.roles import Action, Role, allows
from piman.config.types import Duration
from piman.context import AppContext, Principal, SshHandle
from piman.errors import ConflictError
from piman.fleet.ssh import SshResult, SshTarget
from piman.inventory.groups import InventoryHost, select
from piman.inventory.hosts import collect, ssh_targets
from piman.web.deps import Ctx
from piman.web.security import Anyone, held_nodes

__all__ = [
    "MAX_COMMAND",
    "MAX_COMMAND_TIMEOUT",
    "MAX_CONCURRENCY",
    "MAX_CONNECT_TIMEOUT",
    "MAX_NODES",
    "MAX_TARGETS",
    "SshRunIn",
    "router",
]

logger = logging.getLogger(__name__)

router = APIRouter(tags=["ssh"])

MAX_COMMAND = 4096  # characters
MAX_TARGETS = 1000  # target specs in one request
MAX_NODES = 4096  # nodes they may name (``all`` on a big fleet)
MAX_CONNECT_TIMEOUT = 120.0  # seconds
MAX_COMMAND_TIMEOUT = 3600.0
MAX_CONCURRENCY = 1000
NDJSON = "application/x-ndjson"

Spec = Annotated[str, Field(min_length=1, max_length=255)]


class SshRunIn(BaseModel):
    """A command and where to run it: ``targets`` and/or ``reserved`` (the caller's nodes)."""

    model_config = ConfigDict(extra="forbid")

    command: str = Field(min_length=1, max_length=MAX_COMMAND)
    targets: list[Spec] = Field(
        default_factory=list,
        max_length=MAX_TARGETS,
        description="Node names, switch:port, all, or group names (as piman inventory has them)",
    )
    reserved: bool = Field(False, description="Also the nodes of the caller's active reservations")
    connect_timeout: Annotated[Duration, Field(gt=0)] | None = Field(
        None, description=f"Seconds or a duration (10s); at most {MAX_CONNECT_TIMEOUT:g} s"
    )
    command_timeout: Annotated[Duration, Field(gt=0)] | None = Field(
        None, description=f"Seconds or a duration (5m); at most {MAX_COMMAND_TIMEOUT:g} s"
    )
    concurrency: int | None = Field(None, ge=1, description=f"At most {MAX_CONCURRENCY}")


def _clamp(value: float | None, limit: float) -> float | None:
    return None if value is None else min(value, limit)


async def _chosen(
    ctx: AppContext, request: Request, principal: Principal, body: SshRunIn
) -> list[InventoryHost]:
    """The nodes to run on, in inventory order for specs, then the caller's held ones; every
    refusal of the role and the targets (module doc, steps 1 and 2)."""
    may_any = allows(principal.role, Action.DEPLOY)
    if not may_any and principal.role != Role.USER:
        raise HTTPException(403, f"role {principal.role} may not run commands on nodes")
    hosts = await collect(ctx.config, ctx.store)  # NotFoundError (404) names an unknown spec
    chosen = select(hosts, body.targets) if body.targets else []
    if body.reserved:  # a host's owner: the owner of its active reservation
        seen = {h.name for h in chosen}
        chosen += [h for h in hosts if h.owner == principal.user and h.name not in seen]
        if not chosen:
            raise ConflictError("you hold no nodes now: reserve some first (piman reserve)")
    if not chosen:
        raise HTTPException(422, "name targets (nodes, switch:port, all, groups) or reserved")
    if len(chosen) > MAX_NODES:
        raise HTTPException(422, f"{len(chosen)} nodes: at most {MAX_NODES} in one run")
    if not may_any:
        held = await held_nodes(request, principal)
        for host in chosen:
            if host.name not in held:
                raise HTTPException(
                    403,
                    f"role {principal.role} may not run commands on {host.name}: "
                    "you do not hold it",
                )
    return chosen


def _ssh(ctx: AppContext) -> SshHandle:
    if ctx.ssh is None:
        raise HTTPException(
            503,
            "SSH to the nodes is not available on this manager (the ssh: settings and the "
            "fleet key, piman ssh keygen; see the manager's log)",
        )
    return ctx.ssh


def _targets(ctx: AppContext, chosen: Sequence[InventoryHost]) -> list[SshTarget]:
    """Where to log in, from the hosts read once for the whole request."""
    try:
        return ssh_targets(chosen, ctx.config.ssh.port)
    except ValueError as err:  # a node with no known address
        raise HTTPException(422, str(err)) from None


async def _audit(ctx: AppContext, actor: str, names: Sequence[str], command: str) -> None:
    await ctx.store.audit.add_many(actor, "ssh.run", names, "started", command)


async def _lines(results: AsyncIterator[SshResult], total: int, actor: str) -> AsyncIterator[bytes]:
    ok = failed = 0
    try:
        async for r in results:
            if r.ok:
                ok += 1
            else:
                failed += 1
            yield (json.dumps(r.as_line()) + "\n").encode()
        summary = {"summary": {"total": total, "ok": ok, "failed": failed}}
        yield (json.dumps(summary) + "\n").encode()
        logger.info("[ssh actor=%s] done on %d nodes: %d ok, %d failed", actor, total, ok, failed)
    finally:
        close = getattr(results, "aclose", None)
        if close is not None:  # the client went away: stop the hosts still running
            await close()


@router.post(
    "/ssh/run",
    summary="Run one command on many nodes over SSH; one JSON line per host as it finishes",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "NDJSON: a line per host, then a summary line",
            "content": {NDJSON: {}},
        },
        403: {"description": "The role may not; a user: a target node they do not hold"},
        404: {"description": "A target names no node, port or group"},
        409: {"description": "reserved alone, and the caller holds no nodes"},
        422: {"description": "No targets, too many nodes, or a node without an address"},
        503: {"description": "This manager runs no SSH client"},
    },
)
async def run(body: SshRunIn, request: Request, principal: Anyone, ctx: Ctx) -> StreamingResponse:
    chosen = await _chosen(ctx, request, principal, body)
    names = [h.name for h in chosen]
    ssh = _ssh(ctx)
    targets = _targets(ctx, chosen)
    await _audit(ctx, principal.actor, names, body.command)
    logger.info(
        "[ssh actor=%s] running on %d nodes: %.200s", principal.actor, len(names), body.command
    )
    results = ssh.stream(
        targets,
        body.command,
        connect_timeout=_clamp(body.connect_timeout, MAX_CONNECT_TIMEOUT),
        command_timeout=_clamp(body.command_timeout, MAX_COMMAND_TIMEOUT),
        concurrency=None if body.concurrency is None else min(body.concurrency, MAX_CONCURRENCY),
    )

    return StreamingResponse(
        _lines(results, len(targets), principal.actor),
        media_type=NDJSON,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
