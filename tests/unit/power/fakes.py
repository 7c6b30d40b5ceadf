"""Fakes for power tests: a virtual clock and an in-memory PoE switch driver."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from datetime import UTC, datetime, timedelta

from piman.config.models import NodeSettings
from piman.config.power import SwitchSettings
from piman.errors import PowerConnError, PowerFatalError
from piman.fleet.lifecycle import PowerState
from piman.fleet.power import PortReading

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


class FakeClock:
    """Virtual time: ``sleep`` parks the caller; once every task is parked, time jumps to the
    earliest wake-up. Records every sleep."""

    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps: list[float] = []
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._runner: asyncio.Task[None] | None = None

    def now(self) -> float:
        return self.t

    def wall(self) -> datetime:
        return EPOCH + timedelta(seconds=self.t)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (self.t + seconds, next(self._seq), future))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._advance())
        await future

    async def _advance(self) -> None:
        while self._heap:
            for _ in range(50):  # let every runnable task reach its next sleep
                await asyncio.sleep(0)
            wake, _, future = heapq.heappop(self._heap)
            self.t = max(self.t, wake)
            future.set_result(None)


class FakeSwitch:
    """The state of a pretend PoE switch, shared by the drivers built for it."""

    def __init__(self) -> None:
        self.admin: dict[int, PowerState] = {}
        self.log: list[tuple[str, int, str]] = []  # (switch, port, "on"/"off")
        self.conn_failures: dict[int, int] = {}  # port -> how many PowerConnError to raise
        self.fatal: set[int] = set()
        self.stuck: set[int] = set()  # ports that accept a set and keep their state
        self.gets = 0


class FakeDriver:
    name = "fake"
    has_readback = True
    has_detection = True

    def __init__(self, sw: FakeSwitch, switch: SwitchSettings) -> None:
        self.sw = sw
        self.switch = switch.name
        self.closed = False

    async def set_port(self, port: int, state: PowerState) -> None:
        if port in self.sw.fatal:
            raise PowerFatalError(f"switch {self.switch!r}: port {port} is read-only")
        if self.sw.conn_failures.get(port, 0) > 0:
            self.sw.conn_failures[port] -= 1
            raise PowerConnError(f"switch {self.switch!r}: no answer")
        self.sw.log.append((self.switch, port, state.value))
        if port not in self.sw.stuck:
            self.sw.admin[port] = state

    async def get_port(self, port: int) -> PortReading:
        self.sw.gets += 1
        admin = self.sw.admin.get(port, PowerState.ON)
        detection = "deliveringPower" if admin is PowerState.ON else "disabled"
        return PortReading(admin=admin, detection=detection)

    async def close(self) -> None:
        self.closed = True


def fake_factory(switches: dict[str, FakeSwitch]):  # type: ignore[no-untyped-def]
    def build(switch: SwitchSettings, nodes: dict[int, NodeSettings]) -> FakeDriver:
        return FakeDriver(switches.setdefault(switch.name, FakeSwitch()), switch)

    return build
