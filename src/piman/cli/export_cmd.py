"""``piman export``: files for Prometheus (file_sd targets, alert rules) and Grafana."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from piman.cli.common import EXIT_BAD_INPUT, ConfigOption, console, err_console, fail, load

__all__ = ["register"]

export_app = typer.Typer(
    help="Write Prometheus and Grafana files for this fleet.", no_args_is_help=True
)

OutDir = Annotated[
    Path,
    typer.Option("--out", "-o", help="Directory to write into (created if missing)."),
]


def _write(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as err:
        fail(f"cannot write {path}: {err.strerror or err}")
    console.print(f"wrote {path}")


@export_app.command("prometheus")
def prometheus(config: ConfigOption = None, out: OutDir = Path(".")) -> None:
    """Write piman_targets.json (file_sd) and piman_rules.yml (alert rules) for Prometheus.

    The targets are the agents of the configured nodes watched by one (``monitor: agent``, the
    default; ``monitor: ssh`` and ``monitor: none`` nodes have no agent to scrape); the rules
    are piman's (built-in defaults plus monitoring.rules), with /events fields turned into
    PromQL over the agents' metrics.

    Example: piman export prometheus -c piman.yaml -o /etc/prometheus/piman
    """
    from piman.errors import RuleError
    from piman.monitor.collector.scrape import targets_for
    from piman.monitor.export import file_sd, prometheus_rules, rules_of

    cfg = load(config)
    port = cfg.monitoring.agent_port if cfg.monitoring is not None else 9110
    nodes = [
        _Node(n.name, str(n.ip) if n.ip else None, n.agent_url)
        for n in cfg.nodes
        if n.monitor == "agent"
    ]
    try:
        rules = prometheus_rules(rules_of(cfg.monitoring))
    except RuleError as err:
        fail(f"monitoring.rules: {err}", EXIT_BAD_INPUT)
    _write(out / "piman_targets.json", json.dumps(file_sd(targets_for(nodes, port)), indent=2))
    _write(out / "piman_rules.yml", rules.yaml())
    for reason in rules.skipped:
        err_console.print(f"skipped rule {reason}", soft_wrap=True, markup=False)


@export_app.command("grafana")
def grafana(
    out: Annotated[Path, typer.Option("--out", "-o", help="Dashboard file to write.")] = Path(
        "piman-dashboard.json"
    ),
) -> None:
    """Write a Grafana dashboard JSON for the Pi-specific metrics (rpi_*, temperature).

    Import it in Grafana (Dashboards → Import) and pick the Prometheus data source.

    Example: piman export grafana -o piman-dashboard.json
    """
    from piman.monitor.export import grafana_dashboard

    _write(out, json.dumps(grafana_dashboard(), indent=2))


class _Node:
    def __init__(self, name: str, ip: str | None, agent_url: str | None) -> None:
        self.name, self.ip, self.agent_url = name, ip, agent_url


def register(app: typer.Typer) -> None:
    """Add ``piman export`` to the root app."""
    app.add_typer(export_app, name="export")
