"""Live pages: ``GET /ui/events``, a server-sent-events stream of what changed in the fleet.

Theory of operation
-------------------
One :class:`FleetWatch` per app looks at the fleet every :data:`INTERVAL` seconds while at
least one page listens (it stops when the last one leaves): the nodes in the store (state,
power, address, last sighting), the collector's snapshot time of each node, the active or
latest deployment of each node and the active alerts. It compares each look with the previous
one and, when something differs, sends every listener one ``event: change`` whose data is
JSON: ``{"seq": n, "fleet": bool, "alerts": bool, "nodes": [names]}``. ``fleet`` is true when
a change can move a node in or out of a filtered, sorted page (a node added or removed, a
state, power or reservation change); ``nodes`` names the nodes whose row or page changed;
``alerts`` says that the set of active alerts changed. The pages' script re-fetches what it
shows when the event concerns it, so a change reaches an open page within about
``INTERVAL`` plus one fetch.

The stream starts with ``retry: 1000`` and an ``event: hello``; a comment line every
:data:`HEARTBEAT` seconds keeps proxies from closing it. When the manager restarts, the
browser's EventSource reconnects by itself; the page re-fetches everything it shows on each
reconnect (it may have missed events), so nothing stale stays on screen.

The pages and the watch read the node list through one
:class:`~piman.web.api.fleetcache.FleetCache` (at most a second old): reading thousands of
nodes from the store is what a fleet page costs, and many open pages re-fetching after one
change share a single read.

A client that does not accept ``text/event-stream`` gets 406: the stream never ends by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import StreamingResponse

from piman.context import AppContext
from piman.web.api.fleetcache import FleetCache, cache_of
from piman.web.deps import Ctx
from piman.web.security import Anyone

__all__ = ["HEARTBEAT", "INTERVAL", "FleetWatch", "Look", "diff", "router"]

logger = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)

INTERVAL = 1.0  # seconds between looks at the fleet while someone listens
HEARTBEAT = 15.0


@dataclass(frozen=True, slots=True)
class Look:
    """What the watch saw once: per node, what places it in a list and what its row shows."""

    placing: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    showing: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    alerts: frozenset[tuple[str, str, str]] = frozenset()  # (fingerprint, state, node)


def diff(old: Look, new: Look) -> dict[str, Any] | None:
    """The change event between two looks, or None when nothing differs (pure)."""
    fleet = old.placing != new.placing
    nodes = {n for n in new.placing.keys() | old.placing.keys()
             if old.placing.get(n) != new.placing.get(n)}  # fmt: skip
    nodes |= {n for n in new.showing.keys() | old.showing.keys()
              if old.showing.get(n) != new.showing.get(n)}  # fmt: skip
    alerts = old.alerts != new.alerts
    nodes |= {node for _, _, node in old.alerts ^ new.alerts if node}
    if not (fleet or alerts or nodes):
        return None
    return {"fleet": fleet, "alerts": alerts, "nodes": sorted(nodes)}


async def look(ctx: AppContext, cache: FleetCache | None = None) -> Look:
    """One look at the fleet (the store, the collector's snapshots, deployments, alerts)."""
    placing: dict[str, tuple[Any, ...]] = {}
    showing: dict[str, tuple[Any, ...]] = {}
    holders: dict[str, str] = {}
    if ctx.reservations is not None:
        for r in await ctx.store.reservations.live():
            if r.state == "active":
                for name in r.nodes:
                    holders[name] = f"{r.owner}@{r.end_at.timestamp()}"
    monitor = ctx.monitor
    fleet = await cache.nodes(fresh=True) if cache is not None else await ctx.store.nodes.list()
    for n in fleet:
        placing[n.name] = (n.state, n.power_state, n.switch, n.port, n.model, holders.get(n.name))
        snap = monitor.snapshot(n.name) if monitor is not None else None
        showing[n.name] = (n.ip, n.mac, n.last_seen, snap.time if snap is not None else None)
    if ctx.deploy is not None:
        for d in await ctx.deploy.deployments(active=True, limit=500):
            showing[d.node] = (*showing.get(d.node, ()), d.id, d.state, d.bytes_done)
        for d in await ctx.deploy.deployments(limit=20):  # a just-finished one changes rows too
            showing[d.node] = (*showing.get(d.node, ()), d.id, d.result)
    alerts: frozenset[tuple[str, str, str]] = frozenset()
    if monitor is not None and monitor.alerting is not None:
        alerts = frozenset(
            (a.fingerprint, a.state, a.labels.get("node", "")) for a in monitor.alerting.active()
        )
    return Look(placing, showing, alerts)


class FleetWatch:
    """Looks at the fleet while someone listens; hands each change to every listener."""

    def __init__(self, ctx: AppContext, cache: FleetCache, interval: float = INTERVAL) -> None:
        self.ctx = ctx
        self.cache = cache
        self.interval = interval
        self.listeners: set[asyncio.Queue[dict[str, Any]]] = set()
        self.seq = 0
        self._task: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def listen(self) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=64)
        self.listeners.add(queue)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="ui-fleet-watch")
        try:
            yield queue
        finally:
            self.listeners.discard(queue)

    async def _run(self) -> None:
        previous: Look | None = None
        while self.listeners:
            try:
                current = await look(self.ctx, self.cache)
            except Exception:  # a store hiccup must not end the live pages
                logger.exception("ui: looking at the fleet failed")
                await asyncio.sleep(self.interval)
                continue
            change = diff(previous, current) if previous is not None else None
            previous = current
            if change is not None:
                self.seq += 1
                change["seq"] = self.seq
                for queue in list(self.listeners):
                    item = change
                    if queue.full():  # a stuck listener: tell it to re-fetch everything
                        with contextlib.suppress(asyncio.QueueEmpty):
                            queue.get_nowait()
                        item = {**change, "fleet": True, "alerts": True}
                    queue.put_nowait(item)
            await asyncio.sleep(self.interval)


def watch_of(request: Request, ctx: AppContext) -> FleetWatch:
    state = request.app.state
    watch = getattr(state, "fleet_watch", None)
    if not isinstance(watch, FleetWatch):
        watch = FleetWatch(ctx, cache_of(request, ctx))
        state.fleet_watch = watch
    return watch


@router.get("/ui/events")
async def events(request: Request, _: Anyone, ctx: Ctx) -> StreamingResponse:
    """What changed in the fleet, as server-sent events (see the module docstring)."""
    if "text/event-stream" not in request.headers.get("accept", ""):
        raise HTTPException(406, "this is a server-sent-events stream: Accept text/event-stream")
    watch = watch_of(request, ctx)

    async def stream() -> AsyncIterator[str]:
        async with watch.listen() as queue:
            yield f"retry: 1000\nevent: hello\ndata: {json.dumps({'seq': watch.seq})}\n\n"
            while True:
                try:
                    async with asyncio.timeout(HEARTBEAT):
                        change = await queue.get()
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                yield f"event: change\ndata: {json.dumps(change)}\n\n"

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
