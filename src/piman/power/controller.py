"""The power controller: retries, read-back, the off-wait-on cycle and staggered power-on.

Theory of operation. A command (``on``, ``off``, ``cycle``, ``status``) names targets — a switch
and a port, and the node hanging there when one is declared. Targets are grouped by switch and
every switch runs concurrently; within a switch:

1. ``off`` and the first half of ``cycle`` switch every target off at once (at most
   :data:`PER_SWITCH_CONCURRENCY` driver calls in flight, or the driver's ``concurrency``).
   A switch's ``uplink_port`` (where the manager itself hangs) is refused, never sent.
2. ``cycle`` then waits ``off_seconds``.
3. ``on`` and the second half of ``cycle`` switch targets on in batches of ``batch_size``, batch
   *i* starting ``i × batch_interval`` after the first, so that a rack of Pis does not ask for
   DHCP and TFTP all at the same instant.
4. After each set the controller reads the port back (drivers that can): AdminEnable must show
   the asked state, and after ``on`` the PSE's detection status must reach ``deliveringPower``
   within ``detect_timeout``, polled every :data:`POLL_INTERVAL`.

A driver's :class:`~piman.errors.PowerConnError` is retried after each delay of
``retry_delays``; a :class:`~piman.errors.PowerFatalError` ends that target at once. Every set
and every final outcome goes to the audit log (actions ``port.on``/``port.off`` and
``power.<command>``) and the node's power state to the store. Time comes from an injected
:class:`Clock`, so tests run without sleeping.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol, TypeVar

from piman.config.models import Config, NodeSettings
from piman.config.power import SwitchSettings
from piman.errors import NotFoundError, PimanError, PowerConnError, PowerError, PowerFatalError
from piman.fleet.lifecycle import PowerState
from piman.fleet.power import POWER_ACTIONS, PortReading, PowerAction, PowerResult, PowerTarget
from piman.power.base import PowerDriver, Rebooter
from piman.power.registry import DriverRegistry, default_registry
from piman.power.targets import nodes_of, resolve, target

if TYPE_CHECKING:
    from piman.fleet.ports import Repositories

__all__ = ["POLL_INTERVAL", "RETRY_DELAYS", "Clock", "PowerController", "SystemClock"]

logger = logging.getLogger(__name__)

RETRY_DELAYS: tuple[float, ...] = (1.0, 2.0, 4.0)
POLL_INTERVAL = 1.0
PER_SWITCH_CONCURRENCY = 8

T = TypeVar("T")


class Clock(Protocol):
    """Time as the controller sees it."""

    def now(self) -> float:
        """Monotonic seconds."""

    def wall(self) -> datetime:
        """Aware UTC time, for the audit log."""

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def wall(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class _Failed(Exception):
    """One target failed (the message says why); internal to the controller."""


class PowerController:
    """Runs power commands against the configured switches. One per process; ``await close()``."""

    def __init__(
        self,
        config: Config,
        *,
        store: Repositories | None = None,
        registry: DriverRegistry | None = None,
        clock: Clock | None = None,
        retry_delays: Sequence[float] = RETRY_DELAYS,
        actor: str = "piman",
        on_outcome: Callable[[PowerResult], None] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.registry = registry or default_registry()
        self.clock: Clock = clock or SystemClock()
        self.retry_delays = tuple(retry_delays)
        self.actor = actor
        self.on_outcome = on_outcome
        self._drivers: dict[str, PowerDriver] = {}
        self._locks: dict[tuple[str, int], asyncio.Lock] = {}
        self._limits: dict[str, asyncio.Semaphore] = {}

    # ----------------------------------------------------------------- targets

    def nodes_of(self, switch: SwitchSettings) -> dict[int, NodeSettings]:
        """Port → declared node on a switch."""
        return nodes_of(self.config, switch)

    def target(self, switch_key: str, port: int) -> PowerTarget:
        """The target at a switch (by name or address) and port; raises NotFoundError."""
        return target(self.config, switch_key, port)

    def resolve(self, specs: Sequence[str]) -> list[PowerTarget]:
        """Targets from node names, ``switch:port`` and ``all``; raises NotFoundError."""
        return resolve(self.config, specs)

    def driver(self, switch: SwitchSettings) -> PowerDriver:
        driver = self._drivers.get(switch.name)
        if driver is None:
            driver = self.registry.build(switch, self.nodes_of(switch))
            self._drivers[switch.name] = driver
        return driver

    def driver_can_read(self, switch: SwitchSettings) -> bool:
        """True when the switch's driver reads ports back (False also when it cannot be built)."""
        try:
            return self.driver(switch).has_readback
        except PowerError:
            return False

    async def close(self) -> None:
        drivers, self._drivers = list(self._drivers.values()), {}
        for driver in drivers:
            await driver.close()

    # ----------------------------------------------------------------- running

    async def run(
        self, action: PowerAction, targets: Sequence[PowerTarget], *, actor: str | None = None
    ) -> list[PowerResult]:
        """Run one command on every target; outcomes in the order of ``targets``.

        A port named twice is acted on once (its outcome is returned once).
        """
        if action not in POWER_ACTIONS:
            raise ValueError(f"unknown power action {action!r}")
        who = actor or self.actor
        unique: dict[tuple[str, int], PowerTarget] = {}
        for t in targets:
            unique.setdefault((t.switch.name, t.port), t)
        by_switch: dict[str, list[PowerTarget]] = {}
        for t in unique.values():
            by_switch.setdefault(t.switch.name, []).append(t)
        results: dict[tuple[str, int], PowerResult] = {}
        async with asyncio.TaskGroup() as group:
            for switch_targets in by_switch.values():
                group.create_task(self._run_switch(action, switch_targets, who, results))
        return [results[key] for key in unique]

    async def _run_switch(
        self,
        action: PowerAction,
        targets: list[PowerTarget],
        actor: str,
        results: dict[tuple[str, int], PowerResult],
    ) -> None:
        switch = targets[0].switch

        async def finish(
            t: PowerTarget, ok: bool, reading: PortReading | None, error: str | None
        ) -> None:
            outcome = PowerResult(t, action, ok, reading, error)
            results[(switch.name, t.port)] = outcome
            await self._record(outcome, actor)
            if self.on_outcome is not None:
                self.on_outcome(outcome)

        try:
            driver = self.driver(switch)
        except PowerError as err:
            for t in targets:
                await finish(t, False, None, str(err))
            return

        async def step(t: PowerTarget, state: PowerState) -> PortReading | None:
            return await self._set_and_check(driver, t, state, actor)

        async def guarded(t: PowerTarget, work: Awaitable[None]) -> None:
            try:
                await work
            except _Failed as err:
                await finish(t, False, None, str(err))
            except Exception as err:  # one target's bug must not sink the others
                logger.exception(
                    "[switch=%s port=%d] power %s crashed", switch.name, t.port, action
                )
                await finish(t, False, None, f"internal error: {type(err).__name__}: {err}")

        if action == "status":

            async def status(t: PowerTarget) -> None:
                reading = await self._retry(t, lambda: driver.get_port(t.port))
                await finish(t, True, reading, None)

            async with asyncio.TaskGroup() as group:
                for t in targets:
                    group.create_task(guarded(t, status(t)))
            return

        live = list(targets)
        if action in ("off", "cycle"):
            for t in [t for t in live if t.is_uplink]:
                await finish(
                    t,
                    False,
                    None,
                    f"{t.where} is the uplink_port of switch {switch.name!r} (the manager hangs "
                    "on it): it is never switched off",
                )
            live = [t for t in live if not t.is_uplink]

        if action == "cycle" and isinstance(driver, Rebooter):

            async def reboot(t: PowerTarget) -> None:
                await self._retry(t, lambda: driver.reboot(t.port))
                await self._audit(actor, "port.reboot", t, "ok", None)
                await finish(t, True, None, None)

            async with asyncio.TaskGroup() as group:
                for t in live:
                    group.create_task(guarded(t, reboot(t)))
            return

        if action in ("off", "cycle"):
            off_ok: list[PowerTarget] = []

            async def off(t: PowerTarget) -> None:
                reading = await step(t, PowerState.OFF)
                if action == "off":
                    await finish(t, True, reading, None)
                else:
                    off_ok.append(t)

            async with asyncio.TaskGroup() as group:
                for t in live:
                    group.create_task(guarded(t, off(t)))
            if action == "off":
                return
            live = [t for t in live if t in off_ok]
            if live:
                await self.clock.sleep(switch.off_seconds)

        async def on(t: PowerTarget) -> None:
            reading = await step(t, PowerState.ON)
            await finish(t, True, reading, None)

        start = self.clock.now()
        async with asyncio.TaskGroup() as group:
            for i in range(0, len(live), switch.batch_size):
                batch_no = i // switch.batch_size
                delay = start + batch_no * switch.batch_interval - self.clock.now()
                if delay > 0:
                    await self.clock.sleep(delay)
                for t in live[i : i + switch.batch_size]:
                    group.create_task(guarded(t, on(t)))

    async def _set_and_check(
        self, driver: PowerDriver, t: PowerTarget, state: PowerState, actor: str
    ) -> PortReading | None:
        key = (t.switch.name, t.port)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            try:
                await self._retry(t, lambda: driver.set_port(t.port, state))
            except _Failed as err:
                await self._audit(actor, f"port.{state.value}", t, "failed", str(err))
                raise
            set_at = self.clock.wall()
            try:
                # Read back at once (no store write in between), so that the ports set by one
                # request are read back by one request too.
                if not driver.has_readback:
                    return None
                reading = await self._retry(t, lambda: driver.get_port(t.port))
                if reading.admin is not state:
                    raise _Failed(
                        f"{t.where}: set {state.value} but the switch reads back "
                        f"{reading.admin.value}"
                    )
                if (
                    state is PowerState.ON
                    and driver.has_detection
                    and reading.detection is not None
                ):
                    reading = await self._wait_delivering(driver, t, reading)
                return reading
            finally:
                await self._audit(actor, f"port.{state.value}", t, "ok", None, at=set_at)

    async def _wait_delivering(
        self, driver: PowerDriver, t: PowerTarget, reading: PortReading
    ) -> PortReading:
        deadline = self.clock.now() + t.switch.detect_timeout
        while not reading.delivering:
            if self.clock.now() >= deadline:
                raise _Failed(
                    f"{t.where}: port is on but the switch reports {reading.detection} after "
                    f"{t.switch.detect_timeout:g} s, not deliveringPower; is a powered device "
                    "plugged in?"
                )
            await self.clock.sleep(POLL_INTERVAL)
            reading = await self._retry(t, lambda: driver.get_port(t.port))
        return reading

    async def _retry(self, t: PowerTarget, call: Callable[[], Awaitable[T]]) -> T:
        """Call the driver (at most PER_SWITCH_CONCURRENCY calls in flight per switch)."""
        limit = self._limits.get(t.switch.name)
        if limit is None:
            driver = self._drivers.get(t.switch.name)
            size = getattr(driver, "concurrency", PER_SWITCH_CONCURRENCY)
            limit = self._limits[t.switch.name] = asyncio.Semaphore(size)
        for attempt in range(len(self.retry_delays) + 1):
            try:
                async with limit:
                    return await call()
            except PowerFatalError as err:
                raise _Failed(str(err)) from err
            except PowerConnError as err:
                if attempt >= len(self.retry_delays):
                    raise _Failed(f"{err} (gave up after {attempt + 1} attempts)") from err
                delay = self.retry_delays[attempt]
                logger.warning(
                    "[switch=%s port=%d] %s; retrying in %g s", t.switch.name, t.port, err, delay
                )
                await self.clock.sleep(delay)
        raise AssertionError("unreachable")

    # ----------------------------------------------------------------- records

    async def _audit(
        self,
        actor: str,
        action: str,
        t: PowerTarget,
        result: str,
        detail: str | None,
        *,
        at: datetime | None = None,
    ) -> None:
        if self.store is None:
            return
        target = f"{t.node} ({t.where})" if t.node else t.where
        try:
            await self.store.audit.add(
                actor, action, target, result, detail, at=at or self.clock.wall()
            )
        except PimanError as err:
            logger.warning(
                "[switch=%s port=%d] audit log not written: %s", t.switch.name, t.port, err
            )

    async def _record(self, outcome: PowerResult, actor: str) -> None:
        t = outcome.target
        level = logging.INFO if outcome.ok else logging.WARNING
        if outcome.action == "status" and outcome.ok:
            level = logging.DEBUG
        logger.log(
            level,
            "[switch=%s port=%d node=%s] power %s: %s",
            t.switch.name,
            t.port,
            t.node or "-",
            outcome.action,
            "ok" if outcome.ok else outcome.error,
        )
        if outcome.action == "status" and outcome.ok:
            state = outcome.state
        elif outcome.ok and outcome.action != "status":
            state = PowerState.OFF if outcome.action == "off" else PowerState.ON
        else:
            state = PowerState.UNKNOWN
        if outcome.action != "status":
            detail = outcome.error if not outcome.ok else _describe(outcome.reading)
            await self._audit(
                actor, f"power.{outcome.action}", t, "ok" if outcome.ok else "failed", detail
            )
        if self.store is not None and t.node is not None:
            try:
                await self.store.nodes.set_power_state(t.node, state)
            except NotFoundError:
                logger.debug("node %s is not in the store yet", t.node)
            except PimanError as err:
                logger.warning("node %s: power state not stored: %s", t.node, err)


def _describe(reading: PortReading | None) -> str | None:
    if reading is None:
        return None
    parts = [f"admin={reading.admin.value}"]
    if reading.detection is not None:
        parts.append(f"detection={reading.detection}")
    if reading.watts is not None:
        parts.append(f"watts={reading.watts:g}")
    return " ".join(parts)
