"""Configuration of monitoring: scraping, storage, alert rules and notification channels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
)

from piman.config.matchers import check_field
from piman.config.types import Duration
from piman.errors import RuleError

__all__ = ["MonitoringSettings", "RuleSettings"]


class RuleSettings(BaseModel):
    """One alert rule: ``<selector> <op> <number>`` held for ``for``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    alert: str
    expr: str
    for_: Duration = Field(default=0.0, alias="for")
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("alert", "expr")
    @classmethod
    def _check_rule(cls, value: str, info: ValidationInfo) -> str:
        try:
            return check_field(info.field_name or "", value)
        except RuleError as err:
            raise ValueError(str(err)) from None


class MonitoringSettings(BaseModel):
    """``monitoring:`` — the collector, its store, alerts and notifications."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    agent_port: int = Field(default=9110, ge=1, le=65535)
    scrape_interval: Duration = 15.0
    scrape_timeout: Duration | None = None  # default: 80 % of the interval
    retention: Duration = 15 * 86400.0
    rollup_retention: Duration = 400 * 86400.0
    group_by: list[str] = Field(default_factory=lambda: ["alertname"])
    group_wait: Duration = 30.0
    group_interval: Duration = 300.0
    repeat_interval: Duration = 4 * 3600.0
    default_rules: bool = True
    rules: list[RuleSettings] = Field(default_factory=list)
    notify: list[str] = Field(default_factory=list)
    webhooks: list[str] = Field(default_factory=list)
    # The seed piman's monitoring.config thresholds (cpu, memory, disk, timeout …).
    config: dict[str, Any] = Field(default_factory=dict)
    forward_url: str | None = None  # VictoriaMetrics /api/v1/import/prometheus
    # Agents started with a bearer token / TLS (piman agent --token, --tls-cert). The token is
    # sent only to the agents of nodes declared under `nodes:` (a node's own agent_token wins),
    # never to a node the manager only discovered.
    agent_token: SecretStr | None = None
    agent_ca_file: Path | None = None  # CA for https agent_urls (default: system CAs)
    # What one scrape of one agent may bring (Prometheus' scrape_config limits). A scrape over
    # any of them fails as a whole: up 0, nothing stored, the reason in the log.
    body_size_limit: ByteSize = Field(default=ByteSize(4 << 20), ge=1024)  # bytes of /metrics
    sample_limit: int = Field(default=5000, ge=1)  # samples in one scrape
    # Series one target may have (vmagent's series_limit): a scrape that would add new series
    # beyond it fails. Series that have not reported for `retention` are forgotten.
    series_limit: int = Field(default=5000, ge=1)
    label_limit: int = Field(default=30, ge=0)  # labels of one series, besides its name
    label_name_length_limit: int = Field(default=128, ge=1)
    label_value_length_limit: int = Field(default=512, ge=1)  # the metric name counts as one
