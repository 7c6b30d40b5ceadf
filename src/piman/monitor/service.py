"""Builds the scraper, alert evaluator and notifier for the manager from the configuration.

Monitoring runs when ``monitoring:`` is present and ``enabled``. It needs neither root nor a
provisioning network: agents are plain HTTP targets. :class:`Monitoring` (``ctx.monitor``)
holds the long-lived objects the API, the UI and the alert evaluator share.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from piman.monitor.fetch import StreamFetcher
from piman.monitor.scrape import Scraper, Target, targets_for
from piman.monitor.snapshot import NodeSnapshots
from piman.monitor.tsdb import TargetBatch, Tsdb

if TYPE_CHECKING:
    from piman.config.monitoring import MonitoringSettings
    from piman.manager import ManagerContext, Service

__all__ = ["METRICS_FILE", "CollectorMetrics", "Monitoring", "TsdbService", "build_services"]

METRICS_FILE = "metrics.db"


@dataclass
class Monitoring:
    """``ctx.monitor``: the store, the scraper, the UI snapshot, and the alerts (when built)."""

    settings: MonitoringSettings
    tsdb: Tsdb
    scraper: Scraper
    snapshot: NodeSnapshots = field(default_factory=NodeSnapshots)
    alerts: Any = None  # set by the alerts part


class TsdbService:
    """Opens the store, runs the scraper, closes the store (one service, so order is kept)."""

    name = "collector"

    def __init__(self, monitor: Monitoring) -> None:
        self.monitor = monitor

    async def serve(self) -> None:
        tsdb = self.monitor.tsdb
        await tsdb.open()
        try:
            await self.monitor.scraper.serve()
        finally:
            await tsdb.close()


class CollectorMetrics:
    """The collector's health on the manager's own /metrics, updated after each cycle."""

    def __init__(self, registry: CollectorRegistry, tsdb: Tsdb) -> None:
        self.tsdb = tsdb
        self.targets = Gauge(
            "piman_collector_targets",
            "Agents scraped in the last cycle, by whether the scrape worked.",
            ["state"],
            registry=registry,
        )
        self.samples = Counter(
            "piman_collector_samples_written",
            "Samples written to the metrics store.",
            registry=registry,
        )
        self.series = Gauge(
            "piman_collector_series", "Series known to the metrics store.", registry=registry
        )
        self.cpu = Counter(
            "piman_collector_store_cpu_seconds",
            "CPU time of the metrics store's writer thread.",
            ["work"],
            registry=registry,
        )
        self._seen = (0, 0.0, 0.0)

    async def update(self, batches: list[TargetBatch]) -> None:
        up = sum(1 for b in batches if len(b) >= 3 and b.values[-3] == 1.0)
        self.targets.labels("up").set(up)
        self.targets.labels("down").set(len(batches) - up)
        t = self.tsdb
        written, insert, maintain = self._seen
        self.samples.inc(t.samples_written - written)
        self.cpu.labels("insert").inc(t.cpu_insert - insert)
        self.cpu.labels("maintain").inc(t.cpu_maintain - maintain)
        self._seen = (t.samples_written, t.cpu_insert, t.cpu_maintain)
        self.series.set(t.series_count)


def build_monitoring(ctx: ManagerContext, settings: MonitoringSettings) -> Monitoring:
    """The store and scraper for a configuration (also used by tests and benchmarks)."""
    from piman.monitor.export import VictoriaForwarder

    interval = settings.scrape_interval
    tsdb = Tsdb(
        ctx.config.manager.data_dir / METRICS_FILE,
        retention=settings.retention,
        rollup_retention=settings.rollup_retention,
        grace=2 * interval,
    )

    async def targets() -> list[Target]:
        return targets_for(await ctx.store.nodes.list(), settings.agent_port)

    token = settings.agent_token.get_secret_value() if settings.agent_token else None
    context = None
    if settings.agent_ca_file is not None:
        context = ssl.create_default_context(cafile=str(settings.agent_ca_file))
    scraper = Scraper(
        tsdb,
        targets,
        interval=interval,
        timeout=settings.scrape_timeout,
        fetcher=StreamFetcher(token, ssl_context=context),
        forward=settings.forward_url is not None,
    )
    monitor = Monitoring(settings=settings, tsdb=tsdb, scraper=scraper)
    scraper.on_flush.append(monitor.snapshot.refresh)
    scraper.on_flush.append(CollectorMetrics(ctx.metrics, tsdb).update)
    if settings.forward_url is not None:
        scraper.on_flush.append(VictoriaForwarder(settings.forward_url, scraper).send)
    return monitor


def build_services(ctx: ManagerContext) -> list[Service]:
    """The collector (scraper + store) when monitoring is on, and its API routes."""
    settings = ctx.config.monitoring
    if settings is None or not settings.enabled:
        return []
    from piman.web.api.monitoring import router

    monitor = build_monitoring(ctx, settings)
    ctx.monitor = monitor
    ctx.routers.append(router)
    services: list[Service] = [TsdbService(monitor)]
    from piman.monitor.evaluator import build_alerting  # the alerts part

    tsdb = monitor.tsdb
    monitor.alerts = build_alerting(ctx, tsdb, ready=tsdb.ready.wait, fresh=lambda: tsdb.last_write)
    services += [monitor.alerts.service, monitor.alerts.notifier]
    return services
