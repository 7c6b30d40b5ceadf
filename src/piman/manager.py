"""The composition root: configuration → store → services, run in one TaskGroup.

Theory of operation: :class:`Manager` opens the store, reconciles the configuration's inventory
into it, builds the services the configuration turns on (HTTP always; DHCP, TFTP, power, monitoring
when their sections say so) and runs each under a supervisor in one :class:`asyncio.TaskGroup`. A
service that fails is logged and restarted with backoff; it never takes the others down. ``stop()``
(called from the signal handlers of ``piman server``) cancels the group; every service must end
within :data:`STOP_TIMEOUT` seconds.

Services share a :class:`ManagerContext`: the configuration, the store, the manager's own
Prometheus registry, and the long-lived objects that several services use (the power controller,
the time-series store …), which a capability sets when it builds its services.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Gauge

from piman.config.models import Config
from piman.errors import PimanError
from piman.store import Store, reconcile

__all__ = ["STOP_TIMEOUT", "Manager", "ManagerContext", "Service"]

logger = logging.getLogger(__name__)

STOP_TIMEOUT = 5.0
RESTART_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)


class Service(Protocol):
    """A long-running part of the manager."""

    name: str

    async def serve(self) -> None:
        """Run until cancelled. Raising means failure: the supervisor restarts it."""


@dataclass
class ManagerContext:
    """What services share. Built once by :class:`Manager`; passed down explicitly."""

    config: Config
    store: Store
    metrics: CollectorRegistry
    started_at: float = field(default_factory=time.time)
    # Long-lived objects of capabilities, set while services are built (None when off).
    power: Any = None
    netboot: Any = None
    monitor: Any = None
    # FastAPI routers that capabilities add to /api/v1 (read when the HTTP app is built).
    routers: list[Any] = field(default_factory=list)
    # Callbacks run once every service was built.
    on_ready: list[Callable[[], None]] = field(default_factory=list)


ServiceFactory = Callable[[ManagerContext], list[Service]]


def _http(ctx: ManagerContext) -> list[Service]:
    from piman.web.server import HttpService

    return [HttpService(ctx)]


def _netboot(ctx: ManagerContext) -> list[Service]:
    from piman.netboot.service import build_services

    return build_services(ctx)


def _power(ctx: ManagerContext) -> list[Service]:
    from piman.power.service import build_services

    return build_services(ctx)


def _monitor(ctx: ManagerContext) -> list[Service]:
    from piman.monitor.service import build_services

    return build_services(ctx)


# Order matters: capabilities set ctx attributes that the HTTP app reads, so HTTP comes last.
SERVICE_FACTORIES: tuple[ServiceFactory, ...] = (_power, _netboot, _monitor, _http)


class Manager:
    """``piman server``: everything central, in one process."""

    def __init__(
        self,
        config: Config,
        *,
        factories: tuple[ServiceFactory, ...] = SERVICE_FACTORIES,
    ) -> None:
        self.config = config
        self.factories = factories
        self.registry = CollectorRegistry()
        self.ctx: ManagerContext | None = None
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._restarts = Gauge(
            "piman_service_restarts",
            "How many times a manager service was restarted after a failure.",
            ["service"],
            registry=self.registry,
        )

    def stop(self) -> None:
        """Ask the manager to stop (safe from a signal handler)."""
        self._stop.set()

    async def run(self) -> None:
        """Open the store, start every service, run until :meth:`stop`."""
        t0 = time.perf_counter()
        store = Store(self.config.database_url)
        await store.open()
        try:
            await reconcile(store, self.config)
            ctx = ManagerContext(config=self.config, store=store, metrics=self.registry)
            self.ctx = ctx
            services: list[Service] = []
            for factory in self.factories:
                services.extend(factory(ctx))
            for callback in ctx.on_ready:
                callback()
            logger.info(
                "manager starting %d services (%s)",
                len(services),
                ", ".join(s.name for s in services),
            )
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._supervise(s), name=s.name) for s in services]
                self.ready.set()
                logger.info("manager ready in %.2f s", time.perf_counter() - t0)
                await self._stop.wait()
                logger.info("manager stopping")
                for task in tasks:
                    task.cancel()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(store.close(), STOP_TIMEOUT)
            logger.info("manager stopped")

    async def _supervise(self, service: Service) -> None:
        failures = 0
        while True:
            started = time.monotonic()
            try:
                await service.serve()
                logger.warning("service %s returned; restarting it", service.name)
            except asyncio.CancelledError:
                raise
            except PimanError as err:
                logger.error("service %s failed: %s", service.name, err)  # noqa: TRY400
            except Exception:
                logger.exception("service %s crashed", service.name)
            if time.monotonic() - started > 60:
                failures = 0
            delay = RESTART_DELAYS[min(failures, len(RESTART_DELAYS) - 1)]
            failures += 1
            self._restarts.labels(service.name).inc()
            logger.info("restarting service %s in %.0f s", service.name, delay)
            await asyncio.sleep(delay)
