"""Coalesce per-port calls made at the same moment into one bulk call (one SNMP PDU).

The controller asks per port (``set_port(3, ON)``, ``get_port(3)``), concurrently for a whole
batch. A :class:`Coalescer` collects the calls made during one turn of the event loop and runs
them as bulk calls of at most ``max_batch`` keys, then hands each caller its own result or
exception. A 48-port cycle so costs a handful of SNMP requests instead of one per port and step.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["Coalescer"]

K = TypeVar("K", bound=Hashable)
R = TypeVar("R")


class Coalescer(Generic[K, R]):
    """Gathers ``await coalescer(key)`` calls of one loop turn into ``bulk([keys…])`` calls."""

    def __init__(
        self, bulk: Callable[[list[K]], Awaitable[dict[K, R | Exception]]], max_batch: int
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._bulk = bulk
        self._max = max_batch
        self._pending: list[tuple[K, asyncio.Future[R]]] = []
        self._handle: asyncio.Handle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.calls = 0  # bulk calls made

    async def __call__(self, key: K) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((key, future))
        if self._handle is None:
            self._handle = loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._handle = None
        pending, self._pending = self._pending, []
        keys: list[K] = []
        for key, _ in pending:
            if key not in keys:
                keys.append(key)
        for i in range(0, len(keys), self._max):
            chunk = keys[i : i + self._max]
            waiters = [(k, f) for k, f in pending if k in chunk]
            task = asyncio.ensure_future(self._run(chunk, waiters))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, keys: list[K], waiters: list[tuple[K, asyncio.Future[R]]]) -> None:
        self.calls += 1
        try:
            results = await self._bulk(keys)
        except asyncio.CancelledError:
            for _, future in waiters:
                future.cancel()
            raise
        except Exception as err:  # noqa: BLE001 - handed to every caller, who re-raises it
            for _, future in waiters:
                if not future.done():
                    future.set_exception(err)
            return
        for key, future in waiters:
            if future.done():
                continue
            result = results.get(key)
            if isinstance(result, Exception):
                future.set_exception(result)
            elif key not in results:
                future.set_exception(RuntimeError(f"bulk call returned nothing for {key!r}"))
            else:
                future.set_result(result)  # type: ignore[arg-type]

    async def close(self) -> None:
        """Cancel bulk calls still running."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        for _, future in self._pending:
            future.cancel()
        self._pending = []
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
