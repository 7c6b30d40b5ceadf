"""The power capability, built for the manager.

When any switch has a power driver, :func:`build` returns one :class:`PowerController` as the
:class:`~piman.context.PowerHandle` (``ctx.power``: what the REST API and the web UI switch
ports with), counts ``piman_power_operations_total``, and runs a service that refreshes every
node's power state from its switch every :data:`STATUS_INTERVAL` seconds and closes the drivers
on stop.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import Counter

from piman.context import AppContext, Built, PowerHandle
from piman.fleet.power import PowerResult
from piman.power.controller import PowerController
from piman.power.registry import default_registry

__all__ = ["STATUS_INTERVAL", "PowerService", "build"]

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


def build(ctx: AppContext) -> Built[PowerHandle] | None:
    """The controller and its status service, when a configured switch has a power driver."""
    if not any(sw.driver != "none" for sw in ctx.config.switches):
        return None
    operations = Counter(
        "piman_power_operations",
        "Power operations by action and result.",
        ["action", "result"],
        registry=ctx.metrics,
    )

    def count(outcome: PowerResult) -> None:
        operations.labels(outcome.action, "ok" if outcome.ok else "failed").inc()

    controller = PowerController(
        ctx.config,
        store=ctx.store,
        registry=default_registry(ssh=ctx.ssh),  # ssh-reboot logs in with the manager's client
        actor="manager",
        on_outcome=count,
    )
    return Built(controller, (PowerService(controller),))
