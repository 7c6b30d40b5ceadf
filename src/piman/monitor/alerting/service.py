"""The alerting half of monitoring, built for the manager: evaluator, notifier and their handle.

:func:`build_alerting` reads ``monitoring:`` (rules, grouping, receivers) and returns an
:class:`Alerting`: the :class:`~piman.context.AlertingHandle` the web and the CLI use, and the
two services (evaluator and notifier) the manager runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter

from piman.config.models import Config
from piman.config.monitoring import MonitoringSettings
from piman.config.reservations import OWNER_MAIL_RECEIVER, owner_mail_url
from piman.context import Service
from piman.errors import ConfigError, ConfigProblem, RuleError
from piman.fleet.ports import AlertRepository
from piman.fleet.records import AlertHistoryRecord, AlertRecord, OutboxItem, SilenceRecord
from piman.monitor.alerting.book import GroupSettings
from piman.monitor.alerting.evaluator import AlertService, MetricsReader, QuerySource
from piman.monitor.alerting.notify import Notifier, OwnerMailReceiver, Receiver, build_receivers
from piman.monitor.alerting.own import OwnGauges, healing_rules
from piman.monitor.alerting.rules import Rule, default_rules
from piman.monitor.alerting.silences import Silence, make_silence

__all__ = ["Alerting", "build_alerting", "configured_rules", "external_url"]


class Alerting:
    """The :class:`~piman.context.AlertingHandle`: the live alert book, history and silences."""

    def __init__(
        self, service: AlertService, notifier: Notifier, repo: AlertRepository, rules: list[Rule]
    ) -> None:
        self.service = service
        self.notifier = notifier
        self.repo = repo
        self.rules = rules

    @property
    def services(self) -> tuple[Service, ...]:
        return (self.service, self.notifier)

    @property
    def rule_count(self) -> int:
        return len(self.rules)

    @property
    def last_evaluated(self) -> float | None:
        return self.service.last_evaluated

    async def wait_restored(self, within: float) -> bool:
        try:
            await asyncio.wait_for(self.service.restored.wait(), within)
        except TimeoutError:
            return False
        return True

    def active(self) -> list[AlertRecord]:
        return self.service.active()

    def recent(self) -> list[AlertHistoryRecord]:
        return list(self.service.recent)

    async def history(self, limit: int) -> list[AlertHistoryRecord]:
        return await self.repo.history(limit)

    def silenced_by(
        self, labels: Mapping[str, str], silences: Sequence[SilenceRecord], now: float
    ) -> list[str]:
        out = []
        for record in silences:
            try:
                if Silence.of(record).mutes(labels, now):
                    out.append(record.id)
            except ValueError:  # a stored silence whose matchers no longer parse mutes nothing
                continue
        return out

    async def silences(self, *, active_at: float | None = None) -> list[SilenceRecord]:
        return await self.repo.silences(now=active_at)

    async def add_silence(
        self,
        matchers: str | Sequence[str],
        *,
        duration: float,
        created_by: str,
        comment: str = "",
        now: float | None = None,
    ) -> SilenceRecord:
        silence = make_silence(
            matchers,
            now=time.time() if now is None else now,
            duration=duration,
            created_by=created_by,
            comment=comment,
        )
        await self.repo.add_silence(silence)
        return silence

    async def expire_silence(self, silence_id: str, *, now: float | None = None) -> SilenceRecord:
        return await self.repo.expire_silence(silence_id, time.time() if now is None else now)

    async def outbox(self, *, state: str | None = None, limit: int = 100) -> list[OutboxItem]:
        return await self.repo.outbox(state=state, limit=limit)

    async def requeue_dead(self, ids: Sequence[int] = ()) -> int:
        count = await self.repo.requeue_dead(time.time(), ids)
        if count:
            self.notifier.wake()
        return count


def configured_rules(monitoring: MonitoringSettings) -> list[Rule]:
    """Built-in defaults (unless ``default_rules: false``) then the configured rules.

    A configured rule with the name of a default replaces it.
    """
    mine = [Rule.of(r) for r in monitoring.rules]
    names = {r.name for r in mine}
    defaults = default_rules(monitoring.config) if monitoring.default_rules else []
    return [r for r in defaults if r.name not in names] + mine


def external_url(config: Config) -> str:
    """The web UI's URL as notifications name it (Alertmanager's ``externalURL``)."""
    if config.manager.external_url:
        return str(config.manager.external_url)
    host, port = config.manager.http_host_port
    if host in ("0.0.0.0", "::", ""):
        host = str(config.manager.address)
    scheme = "https" if config.manager.tls is not None else "http"
    return f"{scheme}://{host}:{port}"


def build_alerting(
    config: Config,
    repo: AlertRepository,
    registry: CollectorRegistry,
    query: MetricsReader,
    *,
    ready: Callable[[], Awaitable[object]] | None = None,
    fresh: Callable[[], float] | None = None,
) -> Alerting:
    """Evaluator + notifier over the time-series store.

    ``ready`` is awaited before the first evaluation (the store is open); ``fresh`` returns the
    time of the store's last write, so no rule is evaluated before the first scrape after start.
    """
    monitoring = config.monitoring
    if monitoring is None:
        raise ConfigError([ConfigProblem("config", "monitoring", "alerting needs monitoring")])
    try:
        rules = configured_rules(monitoring)
    except RuleError as err:
        raise ConfigError([ConfigProblem("config", "", str(err))]) from None
    if config.healing is not None and config.healing.enabled:  # its alerts, unless redefined
        names = {r.name for r in rules}
        rules += [r for r in healing_rules() if r.name not in names]
    receivers = build_receivers(
        monitoring.notify, monitoring.webhooks, external_url=external_url(config)
    )
    sent = Counter(
        "piman_notifications",
        "Notification delivery attempts by receiver and result (delivered, failed; dead: "
        "given up on, kept in the outbox).",
        ["receiver", "result"],
        registry=registry,
    )

    def count(receiver: str, result: str) -> None:
        sent.labels(receiver, result).inc()  # receiver names hold no secret (receiver_name)

    # Mail to reservations' owners goes through the same outbox and worker, never to alerts.
    owners: list[Receiver] = []
    mail = owner_mail_url(config.reservations, monitoring.notify)
    if config.reservations.enabled and mail is not None:
        owners.append(OwnerMailReceiver(mail, name=OWNER_MAIL_RECEIVER))
    notifier = Notifier(repo, [*receivers, *owners], on_result=count)
    service = AlertService(
        rules,
        repo,
        OwnGauges(  # the manager's own piman_* gauges too (healing's quarantine …)
            QuerySource(query, max(3 * monitoring.scrape_interval, 60.0)),
            registry,
            lookback=max(3 * monitoring.scrape_interval, 60.0),
        ),
        GroupSettings(
            tuple(monitoring.group_by),
            monitoring.group_wait,
            monitoring.group_interval,
            monitoring.repeat_interval,
        ),
        interval=monitoring.scrape_interval,
        receivers=[r.name for r in receivers],
        wake=notifier.wake,
        registry=registry,
        ready=ready,
        fresh=fresh,
    )
    return Alerting(service, notifier, repo, rules)
