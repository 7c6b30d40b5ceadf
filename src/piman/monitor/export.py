"""Interop with Prometheus, Grafana and VictoriaMetrics: files to write, samples to forward.

- :func:`file_sd` — a Prometheus ``file_sd_configs`` target list: one group per node, labelled
  ``node`` (and ``__metrics_path__``/``__scheme__`` from the node's ``agent_url``), so a
  Prometheus scrape job sees the same ``instance``/``node`` labels piman's collector writes.
- :func:`prometheus_rules` — a rule file equivalent to piman's alert rules (built-in defaults
  plus ``monitoring.rules``). Prometheus only has ``/metrics``, so the ``/events`` fields
  become the PromQL over the agent's node_exporter metrics that computes the same number
  (:data:`EVENT_PROMQL`); ``num_pids`` has no metric, so rules on it are left out and listed
  in the result. ``{{ node }}``/``{{ value }}`` in annotations become ``{{ $labels.node }}`` /
  ``{{ $value }}``.
- :func:`grafana_dashboard` — a dashboard for the Pi-specific metrics (``rpi_*``, temperature,
  the ``/events`` percentages) with a ``node`` variable; "Node Exporter Full" covers the rest.
- :class:`VictoriaForwarder` — after each scrape cycle, POSTs the cycle's samples as
  Prometheus text with timestamps to ``monitoring.forward_url`` (VictoriaMetrics'
  ``/api/v1/import/prometheus``). A failed POST is logged and that cycle dropped (no queue).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import yaml

from piman.fleet.metrics import EVENT_FIELDS
from piman.monitor.alerting.notify import safe_url, scrub_url
from piman.monitor.alerting.rules import Rule, default_rules

if TYPE_CHECKING:
    from piman.config.monitoring import MonitoringSettings
    from piman.monitor.collector.scrape import Scraper, ScrapeTarget
    from piman.monitor.collector.tsdb import TargetBatch

__all__ = [
    "EVENT_PROMQL",
    "RuleExport",
    "VictoriaForwarder",
    "file_sd",
    "grafana_dashboard",
    "prometheus_rules",
    "rules_of",
]

logger = logging.getLogger(__name__)

_BY = "instance, node, job"
_ROOT = 'mountpoint="/"'
EVENT_PROMQL: dict[str, str] = {
    "cpu_percent": (
        f'100 * (1 - avg by ({_BY}) (rate(node_cpu_seconds_total{{mode="idle"}}[1m])))'
    ),
    "memory_percent": ("100 * (1 - node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes)"),
    # psutil's definition, as the agent's /events: used / (used + avail), used = size - free.
    "disk_percent": (
        f"100 * (node_filesystem_size_bytes{{{_ROOT}}} - node_filesystem_free_bytes{{{_ROOT}}})"
        f" / (node_filesystem_size_bytes{{{_ROOT}}} - node_filesystem_free_bytes{{{_ROOT}}}"
        f" + node_filesystem_avail_bytes{{{_ROOT}}})"
    ),
    "temperature_celsius": (
        f"max by ({_BY}) (rpi_soc_temperature_celsius) or max by ({_BY}) (node_thermal_zone_temp)"
    ),
    "throttled": "rpi_throttled_mask",
}


def file_sd(targets: Iterable[ScrapeTarget]) -> list[dict[str, Any]]:
    """Prometheus file_sd groups, one per target."""
    out = []
    for t in sorted(targets, key=lambda t: t.node):
        parts = urlsplit(t.metrics_url)
        labels = {"node": t.node}
        if parts.path and parts.path != "/metrics":
            labels["__metrics_path__"] = parts.path
        if parts.scheme and parts.scheme != "http":
            labels["__scheme__"] = parts.scheme
        out.append({"targets": [parts.netloc], "labels": labels})
    return out


def rules_of(settings: MonitoringSettings | None) -> list[Rule]:
    """piman's effective rules: defaults (unless ``default_rules: false``) then configured ones.

    A configured rule with a default's name replaces that default, as the evaluator does.
    """
    if settings is None:
        return default_rules()
    configured = [Rule.of(r) for r in settings.rules]
    names = {r.name for r in configured}
    defaults = default_rules(settings.config) if settings.default_rules else []
    return [r for r in defaults if r.name not in names] + configured


def _duration(seconds: float) -> str:
    s = round(seconds)
    if s % 3600 == 0 and s:
        return f"{s // 3600}h"
    if s % 60 == 0 and s:
        return f"{s // 60}m"
    return f"{s}s"


_TEMPLATE = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")


def _template(text: str) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        return "{{ $value }}" if name == "value" else "{{ $labels." + name + " }}"

    return _TEMPLATE.sub(sub, text)


@dataclass
class RuleExport:
    """A rule file's content, and the rules that have no Prometheus equivalent."""

    document: dict[str, Any]
    skipped: list[str] = field(default_factory=list)

    def yaml(self) -> str:
        text: str = yaml.safe_dump(self.document, sort_keys=False, allow_unicode=True)
        return text


def prometheus_rules(rules: Sequence[Rule], group: str = "piman") -> RuleExport:
    """A Prometheus rule file equivalent to ``rules``."""
    out: list[dict[str, Any]] = []
    skipped = []
    for rule in rules:
        metric = rule.selector.metric
        if rule.selector.metric in EVENT_FIELDS:
            promql = EVENT_PROMQL.get(metric)
            if promql is None:
                skipped.append(f"{rule.name}: /events field {metric} has no Prometheus metric")
                continue
            expr = f"({promql}) {rule.op} {rule.threshold:g}"
        else:
            expr = f"{rule.selector} {rule.op} {rule.threshold:g}"
        entry: dict[str, Any] = {"alert": rule.name, "expr": expr}
        if rule.for_:
            entry["for"] = _duration(rule.for_)
        if rule.labels:
            entry["labels"] = dict(rule.labels)
        if rule.annotations:
            entry["annotations"] = {k: _template(v) for k, v in rule.annotations.items()}
        out.append(entry)
    return RuleExport({"groups": [{"name": group, "rules": out}]}, skipped)


def _panel(
    pid: int, title: str, exprs: Mapping[str, str], unit: str, x: int, y: int
) -> dict[str, Any]:
    return {
        "id": pid,
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
            for i, (legend, expr) in enumerate(exprs.items())
        ],
    }


def grafana_dashboard(title: str = "piman: Raspberry Pi") -> dict[str, Any]:
    """A Grafana dashboard (schema 39) for the Pi-specific metrics, per ``node``."""
    sel = 'node=~"$node"'
    panels_spec: list[tuple[str, dict[str, str], str]] = [
        (
            "SoC temperature",
            {
                "{{node}}": f"rpi_soc_temperature_celsius{{{sel}}}"
                f" or max by (node) (node_thermal_zone_temp{{{sel}}})"
            },
            "celsius",
        ),
        (
            "Throttling now",
            {"{{node}} {{condition}}": f'rpi_throttle_condition{{scope="now",{sel}}}'},
            "bool_yes_no",
        ),
        (
            "Throttling since boot",
            {"{{node}} {{condition}}": f'rpi_throttle_condition{{scope="since_boot",{sel}}}'},
            "bool_yes_no",
        ),
        (
            "Clock frequencies",
            {"{{node}} {{component}}": f"rpi_clock_frequency_hertz{{{sel}}}"},
            "hertz",
        ),
        ("Voltages", {"{{node}} {{component}}": f"rpi_voltage_volts{{{sel}}}"}, "volt"),
        (
            "CPU busy",
            {
                "{{node}}": "100 * (1 - avg by (node) (rate(node_cpu_seconds_total"
                f'{{mode="idle",{sel}}}[$__rate_interval])))'
            },
            "percent",
        ),
        (
            "Memory used",
            {
                "{{node}}": f"100 * (1 - node_memory_MemAvailable_bytes{{{sel}}}"
                f" / node_memory_MemTotal_bytes{{{sel}}})"
            },
            "percent",
        ),
        (
            "Root disk used",
            {
                "{{node}}": f'100 * (1 - node_filesystem_avail_bytes{{mountpoint="/",{sel}}}'
                f' / node_filesystem_size_bytes{{mountpoint="/",{sel}}})'
            },
            "percent",
        ),
    ]
    panels = [
        _panel(i + 1, name, exprs, unit, (i % 2) * 12, (i // 2) * 8)
        for i, (name, exprs, unit) in enumerate(panels_spec)
    ]
    return {
        "title": title,
        "uid": "piman-rpi",
        "tags": ["piman", "raspberry-pi"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "type": "datasource",
                    "query": "prometheus",
                    "label": "Data source",
                },
                {
                    "name": "node",
                    "type": "query",
                    "label": "Node",
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    "query": {"query": "label_values(up, node)", "refId": "node"},
                    "definition": "label_values(up, node)",
                    "refresh": 2,
                    "multi": True,
                    "includeAll": True,
                    "allValue": ".*",
                    "current": {"text": "All", "value": "$__all"},
                },
            ]
        },
        "panels": panels,
    }


class VictoriaForwarder:
    """A scraper ``on_flush`` callback that POSTs each cycle's samples to ``url``."""

    def __init__(self, url: str, scraper: Scraper, *, timeout: float = 10.0) -> None:
        self.url = url
        self.scraper = scraper
        self.timeout = timeout
        self.sent = 0
        self.failed = 0

    async def send(self, batches: list[TargetBatch]) -> None:
        body = self.scraper.exposition(batches)
        if not body:
            return
        try:
            async with httpx.AsyncClient(timeout=self.timeout, trust_env=False) as client:
                response = await client.post(
                    self.url, content=body.encode(), headers={"Content-Type": "text/plain"}
                )
            response.raise_for_status()
        except httpx.HTTPStatusError as err:  # its text quotes the whole URL: not logged
            self.failed += 1
            logger.warning(
                "forward to %s failed, cycle dropped: answered %d",
                safe_url(self.url),
                err.response.status_code,
            )
            return
        except httpx.HTTPError as err:
            self.failed += 1
            logger.warning(
                "forward to %s failed, cycle dropped: %s",
                safe_url(self.url),
                scrub_url(f"{type(err).__name__}: {err}", self.url),
            )
            return
        self.sent += body.count("\n")
