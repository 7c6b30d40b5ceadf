"""The composition root: configuration → store → capabilities → services, run in one TaskGroup.

Theory of operation: :class:`Manager` opens the store, reconciles the configuration's inventory
into it, and builds one :class:`~piman.context.AppContext`. It then asks each capability the
configuration turns on to build itself (:data:`CAPABILITIES`, in that order: a later one may use
an earlier one's handle) and sets each handle on the context, then awaits their startup steps
(the first admin account …). Front ends come last: the entry
point passes them in (``piman server`` and ``piman demo`` pass the web's HTTP service), so the
manager never imports the web. Every service runs under a supervisor in one
:class:`asyncio.TaskGroup`: a service that fails is logged and restarted with backoff
(:data:`RESTART_DELAYS`); it never takes the others down.

``stop()`` (called from the signal handlers of ``piman server``) cancels every service and waits
for them; a service still running after :data:`STOP_TIMEOUT` seconds is named in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import TypeVar

from prometheus_client import CollectorRegistry, Gauge

from piman.access import reservations_service
from piman.access import service as access_service
from piman.config.models import Config
from piman.context import AppContext, Built, Service
from piman.deploy import service as deploy_service
from piman.errors import PimanError, StoreError
from piman.inventory import healing_service, ssh_service
from piman.inventory import service as inventory_service
from piman.monitor import service as monitor_service
from piman.netboot import service as netboot_service
from piman.power import service as power_service
from piman.private_files import make_private_dir
from piman.store import Store, reconcile

__all__ = ["CAPABILITIES", "RESTART_DELAYS", "STOP_TIMEOUT", "Frontend", "Manager"]

logger = logging.getLogger(__name__)

STOP_TIMEOUT = 5.0
RESTART_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)
CAPABILITIES = (
    "inventory",
    "ssh",
    "access",
    "power",
    "deploy",
    "reservations",
    "netboot",
    "monitor",
    "healing",
)

Frontend = Callable[[AppContext], Service]
"""Builds a front end (the HTTP server) once every capability's handle is on the context."""

H = TypeVar("H")


class Manager:
    """``piman server``: everything central, in one process."""

    def __init__(
        self,
        config: Config,
        *,
        capabilities: Collection[str] = CAPABILITIES,
        frontends: Sequence[Frontend] = (),
    ) -> None:
        unknown = set(capabilities) - set(CAPABILITIES)
        if unknown:
            raise ValueError(f"unknown capabilities: {', '.join(sorted(unknown))}")
        self.config = config
        self.capabilities = frozenset(capabilities)
        self.frontends = tuple(frontends)
        self.registry = CollectorRegistry()
        self.ctx: AppContext | None = None
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._startup: list[Callable[[], Awaitable[None]]] = []
        self._restarts = Gauge(
            "piman_service_restarts",
            "How many times a manager service was restarted after a failure.",
            ["service"],
            registry=self.registry,
        )

    def stop(self) -> None:
        """Ask the manager to stop (safe from a signal handler)."""
        self._stop.set()

    def build(self, ctx: AppContext) -> list[Service]:
        """Build the capabilities that are on, set their handles on ``ctx``; their services."""
        services: list[Service] = []

        def take(built: Built[H] | None) -> H | None:
            if built is None:
                return None
            services.extend(built.services)
            self._startup.extend(built.startup)
            return built.handle

        on = self.capabilities
        if "inventory" in on:
            ctx.inventory = take(inventory_service.build(ctx))
        if "ssh" in on:
            ctx.ssh = take(ssh_service.build(ctx))
        if "access" in on:
            ctx.access = take(access_service.build(ctx))
        if "power" in on:
            ctx.power = take(power_service.build(ctx))
        if "deploy" in on:
            ctx.deploy = take(deploy_service.build(ctx))
        if "reservations" in on:
            ctx.reservations = take(reservations_service.build(ctx))
        if "netboot" in on:
            ctx.netboot = take(netboot_service.build(ctx))
        if "monitor" in on:
            ctx.monitor = take(monitor_service.build(ctx))
        if "healing" in on:  # after power, deploy and monitor, whose handles it uses
            take(healing_service.build(ctx))
        services.extend(front(ctx) for front in self.frontends)
        return services

    async def run(self) -> None:
        """Open the store, start every service, run until :meth:`stop`."""
        t0 = time.perf_counter()
        data_dir = self.config.manager.data_dir
        try:  # 0700 whatever the umask: it holds keys, the database, the logs
            make_private_dir(data_dir)
        except OSError as err:
            raise StoreError(f"cannot create data_dir {data_dir}: {err.strerror or err}") from err
        store = Store(self.config.database_url)
        await store.open()
        try:
            await reconcile(store, self.config)
            ctx = AppContext(config=self.config, store=store, metrics=self.registry)
            self.ctx = ctx
            services = self.build(ctx)
            for step in self._startup:
                await step()
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
                _, slow = await asyncio.wait(tasks, timeout=STOP_TIMEOUT)
                if slow:
                    logger.warning(
                        "still stopping after %.0f s: %s",
                        STOP_TIMEOUT,
                        ", ".join(t.get_name() for t in slow),
                    )
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
