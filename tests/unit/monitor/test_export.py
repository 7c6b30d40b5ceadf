"""Export of piman's rules and targets to Prometheus' forms (pure parts)."""

from __future__ import annotations

import pytest

from piman.config.monitoring import MonitoringSettings, RuleSettings
from piman.fleet.metrics import EVENT_FIELDS
from piman.monitor.alerting.rules import Rule
from piman.monitor.collector.scrape import ScrapeTarget
from piman.monitor.export import EVENT_PROMQL, file_sd, prometheus_rules, rules_of


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.0, None), (30.0, "30s"), (60.0, "1m"), (90.0, "90s"), (7200.0, "2h")]
)
def test_for_durations_use_prometheus_units(seconds: float, text: str | None) -> None:
    [entry] = prometheus_rules([Rule.parse("A", "up == 0", seconds)]).document["groups"][0]["rules"]
    assert entry.get("for") == text


def test_annotation_templates_become_prometheus_templates() -> None:
    rule = Rule.parse("A", "up == 0", annotations={"summary": "{{ node }} at {{value}} ({{job}})"})
    [entry] = prometheus_rules([rule]).document["groups"][0]["rules"]
    assert entry["annotations"] == {
        "summary": "{{ $labels.node }} at {{ $value }} ({{ $labels.job }})"
    }


def test_every_events_field_but_num_pids_has_a_promql_equivalent() -> None:
    assert set(EVENT_PROMQL) == set(EVENT_FIELDS) - {"num_pids"}


def test_events_rules_wrap_their_promql_and_keep_the_threshold() -> None:
    [entry] = prometheus_rules([Rule.parse("Hot", "temperature_celsius >= 80")]).document["groups"][
        0
    ]["rules"]
    assert entry["expr"] == f"({EVENT_PROMQL['temperature_celsius']}) >= 80"


def test_configured_rules_replace_defaults_of_the_same_name_and_can_turn_them_off() -> None:
    mine = RuleSettings(alert="HighCpu", expr="cpu_percent > 50")
    names = [r.name for r in rules_of(MonitoringSettings(rules=[mine]))]
    assert names.count("HighCpu") == 1
    assert names[-1] == "HighCpu"
    assert [r.name for r in rules_of(MonitoringSettings(rules=[mine], default_rules=False))] == [
        "HighCpu"
    ]


def test_file_sd_groups_are_sorted_by_node() -> None:
    got = file_sd(
        [
            ScrapeTarget("b", "http://10.0.0.2:9110/metrics", None),
            ScrapeTarget("a", "http://10.0.0.1:9110/metrics", None),
        ]
    )
    assert [g["labels"]["node"] for g in got] == ["a", "b"]
    assert got[0]["targets"] == ["10.0.0.1:9110"]
