"""Builds the power controller for the manager from the configuration.

When any switch has a power driver, the manager gets one :class:`PowerController` (as
``ctx.power``), the REST routes of :mod:`piman.web.api.power`, the
``piman_power_operations_total`` metric, and a service that refreshes every node's power state
from its switch every :data:`STATUS_INTERVAL` seconds and closes the drivers on stop.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from prometheus_client import Counter

from piman.power.controller import Outcome, PowerController

if TYPE_CHECKING:
    from piman.manager import ManagerContext, Service

__all__ = ["STATUS_INTERVAL", "PowerService", "build_services"]

logger = logging.getLogger(__name__)

STATUS_INTERVAL = 60.0


class PowerService:
    """Keeps node power states fresh; owns the controller's drivers."""

    name = "power"

    def __init__(self, controller: PowerController, interval: float = STATUS_INTERVAL) -> None:
        self.controller = controller
        self.interval = interval

    async def serve(self) -> None:
        try:
            while True:
                targets = self.controller.resolve(["all"])
                readable = [t for t in targets if self.controller.driver_can_read(t.switch)]
                if readable:
                    await self.controller.run("status", readable, actor="manager")
                await asyncio.sleep(self.interval)
        finally:
            await self.controller.close()


def build_services(ctx: ManagerContext) -> list[Service]:
    """The power service and routes, when a configured switch has a power driver."""
    if not any(sw.driver != "none" for sw in ctx.config.switches):
        return []
    from piman.web.api.power import router

    operations = Counter(
        "piman_power_operations",
        "Power operations by action and result.",
        ["action", "result"],
        registry=ctx.metrics,
    )

    def count(outcome: Outcome) -> None:
        operations.labels(outcome.action, "ok" if outcome.ok else "failed").inc()

    controller = PowerController(ctx.config, store=ctx.store, actor="manager", on_outcome=count)
    ctx.power = controller
    ctx.routers.append(router)
    return [PowerService(controller)]
