"""The node list the fleet page, its live stream and ``GET /api/v1/nodes`` share.

Reading every node from the store costs about 25 µs of CPU per node (2,000 nodes: ~50 ms), so
a fleet of thousands cannot be read once per request when 20 clients poll it or many open pages
re-fetch after a change. :class:`FleetCache` holds the list read at most :data:`CACHE_AGE`
seconds ago; concurrent misses wait for one read instead of each making their own, and what is
derived from a list (the API's encoded JSON) is computed once per list (:meth:`derived`).

Reading your own writes: :class:`InvalidateOnWrite` (ASGI middleware) drops the list when a
mutating request (POST, PUT, PATCH, DELETE) starts its response, so a client that switched a
node off and then lists the nodes sees it off, and so does the page whose button it was.
Changes made by the manager's own services (the deploy engine, DHCP sightings, reservation
timers) are seen within :data:`CACHE_AGE`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from piman.context import AppContext
from piman.fleet.records import NodeRecord

__all__ = ["CACHE_AGE", "FleetCache", "InvalidateOnWrite", "cache_of"]

CACHE_AGE = 1.0  # seconds a node list read from the store is served
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class FleetCache:
    """Every node (the store's order), read at most ``max_age`` seconds ago."""

    def __init__(
        self,
        ctx: AppContext,
        max_age: float = CACHE_AGE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ctx = ctx
        self.max_age = max_age
        self.clock = clock
        self._nodes: list[NodeRecord] | None = None
        self._at = 0.0  # when the held list's read started
        self._generation = 0  # bumped by invalidate(): a read that started before is not kept
        self._derived: dict[str, tuple[list[NodeRecord], Any]] = {}
        self._lock = asyncio.Lock()
        self.reads = 0  # store reads made (tests, the benchmark)

    def _fresh(self) -> bool:
        return self._nodes is not None and self.clock() - self._at < self.max_age

    async def nodes(self, *, fresh: bool = False) -> list[NodeRecord]:
        """The list (``fresh``: read now, whatever the age of the one held)."""
        if not fresh and self._fresh():
            assert self._nodes is not None
            return self._nodes
        asked = self.clock()
        async with self._lock:
            if not fresh and self._nodes is not None and self._at >= asked:
                return self._nodes  # read by another request while this one waited
            at, generation = self.clock(), self._generation
            nodes = await self.ctx.store.nodes.list()
            self.reads += 1
            if generation == self._generation:  # no write happened during the read
                self._nodes, self._at = nodes, at
            return nodes

    async def derived(self, key: str, make: Callable[[list[NodeRecord]], Any]) -> Any:
        """``make(nodes)`` for the current list, computed once per list read."""
        nodes = await self.nodes()
        held = self._derived.get(key)
        if held is not None and held[0] is nodes:
            return held[1]
        value = await asyncio.to_thread(make, nodes)
        self._derived[key] = (nodes, value)
        return value

    def invalidate(self) -> None:
        """Forget the list: the next reader reads the store."""
        self._nodes = None
        self._generation += 1
        self._derived.clear()


def cache_of(request: Request, ctx: AppContext) -> FleetCache:
    """The app's cache (made on first use when the app did not make one)."""
    state = request.app.state
    cache = getattr(state, "fleet_cache", None)
    if not isinstance(cache, FleetCache):
        cache = FleetCache(ctx)
        state.fleet_cache = cache
    return cache


class InvalidateOnWrite:
    """ASGI middleware: a mutating request's response start drops ``cache``'s list."""

    def __init__(self, app: ASGIApp, cache: FleetCache) -> None:
        self.app = app
        self.cache = cache

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in MUTATING:
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.cache.invalidate()
            await send(message)

        await self.app(scope, receive, sending)
