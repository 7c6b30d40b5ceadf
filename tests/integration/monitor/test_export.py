"""`piman export`: the files it writes are accepted by Prometheus' own promtool."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from piman.monitor.export import grafana_dashboard
from tests.support import needs_tool

PIMAN = [sys.executable, "-m", "piman"]

CONFIG = """\
manager: {address: 198.18.0.1, data_dir: DATA}
nodes:
  - {name: rack1-02, ip: 198.18.0.12}
  - {name: lab-pi, agent_url: "https://10.0.0.7:9443/agent/metrics"}
  - {name: no-address}
  - {name: agentless, ip: 198.18.0.13, monitor: ssh}    # sampled over SSH: no agent to scrape
  - {name: unwatched, ip: 198.18.0.14, monitor: none}
monitoring:
  agent_port: 9110
  config: {temperature: 75}
  rules:
    - alert: NodeDown
      expr: up == 0
      for: 2m
      labels: {severity: page}
      annotations: {summary: "{{ node }} is not answering"}
    - alert: ManyPids
      expr: num_pids > 1000
    - alert: Throttled
      expr: rpi_throttle_condition{condition="throttled",scope="now"} == 1
      for: 30s
"""


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PIMAN, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_prometheus_export_writes_file_sd_and_rules_promtool_accepts(tmp_path: Path) -> None:
    needs_tool("promtool")
    config = tmp_path / "piman.yaml"
    config.write_text(CONFIG.replace("DATA", str(tmp_path / "data")))
    out = tmp_path / "prom"
    done = _run("export", "prometheus", "-c", str(config), "-o", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "ManyPids" in done.stderr  # no Prometheus metric for num_pids: said, not silent

    targets = json.loads((out / "piman_targets.json").read_text())
    assert targets == [
        {
            "targets": ["10.0.0.7:9443"],
            "labels": {
                "node": "lab-pi",
                "__metrics_path__": "/agent/metrics",
                "__scheme__": "https",
            },
        },
        {"targets": ["198.18.0.12:9110"], "labels": {"node": "rack1-02"}},
    ]

    rules_file = out / "piman_rules.yml"
    check = subprocess.run(
        ["promtool", "check", "rules", str(rules_file)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout
    rules = {r["alert"]: r for r in yaml.safe_load(rules_file.read_text())["groups"][0]["rules"]}
    # Configured NodeDown replaces the default one; the seed threshold moved HotSoC to 75.
    assert rules["NodeDown"] == {
        "alert": "NodeDown",
        "expr": "up == 0",
        "for": "2m",
        "labels": {"severity": "page"},
        "annotations": {"summary": "{{ $labels.node }} is not answering"},
    }
    assert rules["HotSoC"]["expr"].endswith(">= 75")
    assert "rpi_soc_temperature_celsius" in rules["HotSoC"]["expr"]
    assert rules["Throttled"]["for"] == "30s"
    assert "ManyPids" not in rules
    assert {"UnderVoltage", "RootDiskFull", "HighMemory", "HighCpu"} <= set(rules)


def test_prometheus_export_of_a_bad_rule_is_one_line_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "piman.yaml"
    config.write_text(
        "manager: {address: 198.18.0.1}\nmonitoring:\n  rules: [{alert: X, expr: 'up === 0'}]\n"
    )
    done = _run("export", "prometheus", "-c", str(config), "-o", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_grafana_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    needs_tool("promtool")
    out = tmp_path / "dash.json"
    done = _run("export", "grafana", "-o", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    dashboard = json.loads(out.read_text())
    assert dashboard == grafana_dashboard()
    assert dashboard["templating"]["list"][1]["name"] == "node"
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert any("rpi_throttle_condition" in e for e in exprs)
    assert any("rpi_soc_temperature_celsius" in e for e in exprs)
    # Grafana fills in its variables; then each query must be PromQL promtool accepts.
    recording = [
        {
            "record": f"piman:panel{i}",
            "expr": re.sub(r"\$__rate_interval", "1m", e).replace("$node", ".*"),
        }
        for i, e in enumerate(exprs)
    ]
    rules = tmp_path / "dash_rules.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "dash", "rules": recording}]}))
    check = subprocess.run(
        ["promtool", "check", "rules", str(rules)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
