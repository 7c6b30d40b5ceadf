"""The monitoring capability, built for the manager: the collector, and alerting over its store.

Monitoring runs when ``monitoring:`` is present and ``enabled``. It needs neither root nor a
provisioning network: agents are plain HTTP targets. Nodes marked ``monitor: ssh`` run no agent
and are sampled through ``ctx.ssh`` instead (:mod:`.collector.sshscrape`); ``monitor: none``
nodes are not watched. :func:`build` returns the
:class:`~piman.context.MonitorHandle` (:class:`Monitoring`) and three services: the collector
(it opens the time-series store, scrapes, and closes the store), the alert evaluator and the
notifier.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from piman.config.models import Config
from piman.config.monitoring import MonitoringSettings
from piman.context import AppContext, Built, MonitorHandle, Service, SshHandle
from piman.fleet.lifecycle import NodeState
from piman.fleet.metrics import NodeSnapshot, Series
from piman.fleet.ports import NodeRepository
from piman.fleet.ssh import SshTarget
from piman.monitor.alerting.service import Alerting, build_alerting
from piman.monitor.collector.fetch import StreamFetcher
from piman.monitor.collector.ingest import ScrapeLimits
from piman.monitor.collector.query import QueryLimits
from piman.monitor.collector.scrape import Scraper, ScrapeTarget, targets_for, with_tokens
from piman.monitor.collector.snapshot import NodeSnapshots
from piman.monitor.collector.sshscrape import SshSampler, ssh_targets
from piman.monitor.collector.tsdb import TargetBatch, Tsdb
from piman.monitor.export import VictoriaForwarder

__all__ = [
    "METRICS_FILE",
    "CollectorMetrics",
    "CollectorService",
    "Monitoring",
    "build",
    "build_collector",
]

METRICS_FILE = "metrics.db"

logger = logging.getLogger(__name__)


class CollectorService:
    """Opens the metrics store, runs the scraper, closes the store (one service, so order holds)."""

    name = "collector"

    def __init__(self, tsdb: Tsdb, scraper: Scraper) -> None:
        self.tsdb = tsdb
        self.scraper = scraper

    async def serve(self) -> None:
        await self.tsdb.open()
        try:
            await self.scraper.serve()
        finally:
            await self.tsdb.close()


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
        self.failures = Counter(
            "piman_collector_scrape_failures",
            "Failed scrapes by reason (timeout, unreachable, http_status, malformed, "
            "body_size_limit, sample_limit, series_limit, label_limit …).",
            ["reason"],
            registry=registry,
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
        for b in batches:
            if b.error is not None:
                self.failures.labels(b.error).inc()
        self.targets.labels("up").set(up)
        self.targets.labels("down").set(len(batches) - up)
        t = self.tsdb
        written, insert, maintain = self._seen
        self.samples.inc(t.samples_written - written)
        self.cpu.labels("insert").inc(t.cpu_insert - insert)
        self.cpu.labels("maintain").inc(t.cpu_maintain - maintain)
        self._seen = (t.samples_written, t.cpu_insert, t.cpu_maintain)
        self.series.set(t.series_count)


class Monitoring:
    """The :class:`~piman.context.MonitorHandle`: the metrics store, snapshots, alerting."""

    def __init__(
        self,
        settings: MonitoringSettings,
        tsdb: Tsdb,
        scraper: Scraper,
        snapshots: NodeSnapshots,
    ) -> None:
        self.settings = settings
        self.tsdb = tsdb
        self.scraper = scraper
        self.snapshots = snapshots
        self.query_limits = QueryLimits()
        self._alerting: Alerting | None = None

    @property
    def alerting(self) -> Alerting | None:
        return self._alerting

    def attach(self, alerting: Alerting) -> None:
        """Alerting over this store (built after it, as it reads the store)."""
        self._alerting = alerting

    async def query_range(
        self,
        metric: str,
        matchers: Mapping[str, str] | None,
        start: float,
        end: float,
        step: float | None = None,
    ) -> list[Series]:
        """What a user asks (``/api/v1/query_range``): within :class:`QueryLimits`."""
        return await self.tsdb.range(metric, matchers, start, end, step, limits=self.query_limits)

    async def latest_events(self, node: str) -> dict[str, Any] | None:
        return await self.tsdb.latest_events(node)

    def snapshot(self, node: str) -> NodeSnapshot | None:
        return self.snapshots.get(node)

    @property
    def services(self) -> tuple[Service, ...]:
        own: tuple[Service, ...] = (CollectorService(self.tsdb, self.scraper),)
        return own + (self._alerting.services if self._alerting is not None else ())


def build_collector(
    config: Config,
    settings: MonitoringSettings,
    nodes: NodeRepository,
    registry: CollectorRegistry,
    ssh: SshHandle | None = None,
) -> Monitoring:
    """The metrics store, scraper and snapshots for a configuration (tests and benchmarks too);
    ``ssh`` samples the ``monitor: ssh`` nodes (without it they are down)."""
    interval = settings.scrape_interval
    tsdb = Tsdb(
        config.manager.data_dir / METRICS_FILE,
        retention=settings.retention,
        rollup_retention=settings.rollup_retention,
        grace=2 * interval,
    )

    # Tokens go to declared nodes' agent URLs only (a node's own token before the fleet's).
    tokens: dict[tuple[str, str], str] = {}
    for node in config.nodes:
        secret = node.agent_token or settings.agent_token
        if secret is not None:
            for declared in targets_for([node], settings.agent_port):
                tokens[(declared.node, declared.metrics_url)] = secret.get_secret_value()

    # How each declared node is watched (a node known only to the store: by its agent).
    modes = {n.name: n.monitor for n in config.nodes}
    users = {n.name: n.ssh_user or config.ssh.user for n in config.nodes if n.monitor == "ssh"}

    async def targets() -> list[ScrapeTarget]:
        # A broken node is quarantined (by an operator or self-healing): not scraped.
        watched = [n for n in await nodes.list() if n.state != NodeState.BROKEN]
        agents = [n for n in watched if modes.get(n.name, "agent") == "agent"]
        # Agentless nodes with an address (as agents: none without one), asked in one call.
        agentless = [n.name for n in watched if modes.get(n.name) == "ssh" and n.ip]
        out = with_tokens(targets_for(agents, settings.agent_port), tokens)
        fallback = {  # where they would be reached, for when there is no SSH client
            n.name: SshTarget(n.name, str(n.ip), config.ssh.port, users[n.name])
            for n in watched
            if n.name in users and n.ip
        }
        logins = await ssh_targets(ssh, agentless, fallback)
        return out + [ScrapeTarget.over_ssh(login) for login in logins]

    context = None
    if settings.agent_ca_file is not None:
        context = ssl.create_default_context(cafile=str(settings.agent_ca_file))
    limits = ScrapeLimits(
        body_size=int(settings.body_size_limit),
        samples=settings.sample_limit,
        series=settings.series_limit,
        labels=settings.label_limit,
        label_name_length=settings.label_name_length_limit,
        label_value_length=settings.label_value_length_limit,
    )
    scraper = Scraper(
        tsdb,
        targets,
        interval=interval,
        timeout=settings.scrape_timeout,
        fetcher=StreamFetcher(ssl_context=context, max_body=limits.body_size),
        forward=settings.forward_url is not None,
        limits=limits,
        agentless=SshSampler(ssh, connect_timeout=config.ssh.connect_timeout),
    )
    snapshots = NodeSnapshots()
    monitor = Monitoring(settings, tsdb, scraper, snapshots)
    scraper.on_flush.append(snapshots.refresh)
    scraper.on_flush.append(CollectorMetrics(registry, tsdb).update)
    if settings.forward_url is not None:
        scraper.on_flush.append(VictoriaForwarder(settings.forward_url, scraper).send)
    return monitor


def build(ctx: AppContext) -> Built[MonitorHandle] | None:
    """The collector, alert evaluator and notifier when monitoring is on."""
    settings = ctx.config.monitoring
    if settings is None or not settings.enabled:
        return None
    agentless = [n.name for n in ctx.config.nodes if n.monitor == "ssh"]
    if agentless and ctx.ssh is None:
        logger.warning(
            "%d node(s) have `monitor: ssh` (%s) but the manager has no SSH client: "
            "they are not sampled and show as down",
            len(agentless),
            ", ".join(agentless[:5]) + (" …" if len(agentless) > 5 else ""),
        )
    monitor = build_collector(ctx.config, settings, ctx.store.nodes, ctx.metrics, ctx.ssh)
    tsdb = monitor.tsdb
    monitor.attach(
        build_alerting(
            ctx.config,
            ctx.store.alerts,
            ctx.metrics,
            tsdb,
            ready=tsdb.ready.wait,
            fresh=lambda: tsdb.last_write,
        )
    )
    return Built(monitor, monitor.services)
