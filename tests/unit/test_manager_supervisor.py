"""The manager's supervisor: a service that fails is logged and restarted with backoff, counted in
``piman_service_restarts``, and never takes the other services down.

The restart waits are read from the supervisor's own ``asyncio.sleep`` calls (recorded, then
yielded at once) so that the 1 s, 2 s … backoff is asserted without waiting for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import piman.manager
from piman.config.models import Config
from piman.errors import PimanError
from piman.manager import RESTART_DELAYS, Manager


class RecordingAsyncio(ModuleType):
    """``asyncio`` as the manager module sees it, but ``sleep`` records and returns at once."""

    def __init__(self) -> None:
        super().__init__("asyncio")
        self.sleeps: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(0)


class FakeMonotonic(ModuleType):
    """``time`` as the manager module sees it, with a monotonic clock the test moves."""

    def __init__(self) -> None:
        super().__init__("time")
        self.now = 1000.0

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def monotonic(self) -> float:
        return self.now


class Flaky:
    """Fails (``failures`` is what each failed start raises, in order), then runs until
    cancelled. ``before_failing`` runs at the start of each failing call."""

    def __init__(
        self, name: str, failures: list[BaseException], before_failing: Any = None
    ) -> None:
        self.name = name
        self.failures = list(failures)
        self.before_failing = before_failing
        self.starts = 0
        self.running = asyncio.Event()

    async def serve(self) -> None:
        self.starts += 1
        if self.failures:
            if self.before_failing is not None:
                self.before_failing()
            raise self.failures.pop(0)
        self.running.set()
        await asyncio.Event().wait()


def config(tmp: Path) -> Config:
    return Config.model_validate({"manager": {"address": "198.18.0.1", "data_dir": str(tmp)}})


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> RecordingAsyncio:
    recording = RecordingAsyncio()
    monkeypatch.setattr(piman.manager, "asyncio", recording)
    return recording


async def run_until_running(manager: Manager, *services: Flaky) -> asyncio.Task[None]:
    task = asyncio.create_task(manager.run())
    try:
        await asyncio.wait_for(manager.ready.wait(), 60)
        for service in services:
            await asyncio.wait_for(service.running.wait(), 30)
    except BaseException:
        manager.stop()
        await asyncio.gather(task, return_exceptions=True)
        raise
    return task


def restarts(manager: Manager, service: str) -> float | None:
    return manager.registry.get_sample_value("piman_service_restarts", {"service": service})


async def test_a_service_that_fails_twice_is_restarted_with_backoff_and_counted(
    tmp_path: Path, sleeps: RecordingAsyncio, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="piman.manager")
    flaky = Flaky("flaky", [PimanError("switch rack1 unreachable"), RuntimeError("bug")])
    steady = Flaky("steady", [])
    manager = Manager(
        config(tmp_path), capabilities=(), frontends=[lambda ctx: flaky, lambda ctx: steady]
    )
    task = await run_until_running(manager, flaky, steady)
    try:
        assert flaky.starts == 3  # failed, failed, runs
        assert sleeps.sleeps == [RESTART_DELAYS[0], RESTART_DELAYS[1]] == [1.0, 2.0]
        assert restarts(manager, "flaky") == 2.0
        # The other service was never stopped or restarted meanwhile.
        assert steady.starts == 1
        assert restarts(manager, "steady") is None
        assert not task.done()
    finally:
        manager.stop()
        await asyncio.wait_for(task, 30)
    messages = [r.getMessage() for r in caplog.records if r.name == "piman.manager"]
    assert "service flaky failed: switch rack1 unreachable" in messages
    assert "service flaky crashed" in messages
    assert "restarting service flaky in 1 s" in messages
    assert "restarting service flaky in 2 s" in messages
    crashed = next(r for r in caplog.records if r.getMessage() == "service flaky crashed")
    assert crashed.exc_info is not None  # a bug is logged with its traceback
    failed = next(r for r in caplog.records if r.getMessage().startswith("service flaky failed"))
    assert failed.exc_info is None  # an expected failure is one line


async def test_backoff_grows_to_its_last_step_and_stays_there(
    tmp_path: Path, sleeps: RecordingAsyncio
) -> None:
    failures = len(RESTART_DELAYS) + 2
    flaky = Flaky("flaky", [RuntimeError(f"crash {i}") for i in range(failures)])
    manager = Manager(config(tmp_path), capabilities=(), frontends=[lambda ctx: flaky])
    task = await run_until_running(manager, flaky)
    try:
        assert sleeps.sleeps == [*RESTART_DELAYS, RESTART_DELAYS[-1], RESTART_DELAYS[-1]]
        assert restarts(manager, "flaky") == float(failures)
    finally:
        manager.stop()
        await asyncio.wait_for(task, 30)


async def test_a_service_that_returns_is_restarted_too(
    tmp_path: Path, sleeps: RecordingAsyncio
) -> None:
    class Returns:
        name = "returns"

        def __init__(self) -> None:
            self.starts = 0
            self.running = asyncio.Event()

        async def serve(self) -> None:
            self.starts += 1
            if self.starts > 1:
                self.running.set()
                await asyncio.Event().wait()

    service = Returns()
    manager = Manager(config(tmp_path), capabilities=(), frontends=[lambda ctx: service])
    task = asyncio.create_task(manager.run())
    try:
        await asyncio.wait_for(service.running.wait(), 60)
        assert service.starts == 2
        assert sleeps.sleeps == [RESTART_DELAYS[0]]
        assert restarts(manager, "returns") == 1.0
    finally:
        manager.stop()
        await asyncio.wait_for(task, 30)


async def test_a_service_that_ran_a_long_time_before_failing_starts_the_backoff_again(
    tmp_path: Path, sleeps: RecordingAsyncio, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeMonotonic()
    monkeypatch.setattr(piman.manager, "time", clock)
    calls = iter([0.0, 61.0])  # the first start fails at once, the second after 61 s of work

    def age() -> None:
        clock.now += next(calls)

    flaky = Flaky("flaky", [RuntimeError("early"), RuntimeError("late")], before_failing=age)
    manager = Manager(config(tmp_path), capabilities=(), frontends=[lambda ctx: flaky])
    task = await run_until_running(manager, flaky)
    try:
        assert sleeps.sleeps == [RESTART_DELAYS[0], RESTART_DELAYS[0]]
        assert restarts(manager, "flaky") == 2.0
    finally:
        manager.stop()
        await asyncio.wait_for(task, 30)


async def test_stop_ends_a_service_waiting_to_be_restarted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The real sleep: the service waits RESTART_DELAYS[0] before its restart; stop() must not.
    caplog.set_level(logging.INFO, logger="piman.manager")
    failed = asyncio.Event()

    class Fails:
        name = "fails"

        async def serve(self) -> None:
            failed.set()
            raise RuntimeError("crash")

    manager = Manager(config(tmp_path), capabilities=(), frontends=[lambda ctx: Fails()])
    task = asyncio.create_task(manager.run())
    await asyncio.wait_for(failed.wait(), 60)
    manager.stop()
    await asyncio.wait_for(task, 30)
    assert "manager stopped" in caplog.text
    assert "still stopping" not in caplog.text
