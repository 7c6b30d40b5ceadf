"""Alert rules: the expr grammar, matchers, defaults, and config errors users see."""

from __future__ import annotations

import pytest

from piman.config import parse_config
from piman.config.matchers import Matcher, Selector, parse_expr, parse_matchers
from piman.errors import ConfigError, RuleError
from piman.monitor.alerting.rules import Rule, default_rules, fingerprint


@pytest.mark.parametrize(
    ("text", "selector", "op", "number"),
    [
        ("up == 0", Selector("up"), "==", 0.0),
        ("up==0", Selector("up"), "==", 0.0),
        ("temperature_celsius >= 80", Selector("temperature_celsius"), ">=", 80.0),
        ("memory_percent>90.5", Selector("memory_percent"), ">", 90.5),
        ("x < -1e3", Selector("x"), "<", -1000.0),
        ("node_load1 <= .5", Selector("node_load1"), "<=", 0.5),
        ("throttled != 0", Selector("throttled"), "!=", 0.0),
        (
            'rpi_throttle_condition{condition="under_voltage",scope="now"} == 1',
            Selector(
                "rpi_throttle_condition",
                (Matcher("condition", "=", "under_voltage"), Matcher("scope", "=", "now")),
            ),
            "==",
            1.0,
        ),
        (
            "node_filesystem_avail_bytes{mountpoint='/', fstype!~\"tmpfs|ramfs\"} < 1e9",
            Selector(
                "node_filesystem_avail_bytes",
                (Matcher("mountpoint", "=", "/"), Matcher("fstype", "!~", "tmpfs|ramfs")),
            ),
            "<",
            1e9,
        ),
    ],
)
def test_expr_parses(text: str, selector: Selector, op: str, number: float) -> None:
    assert parse_expr(text) == (selector, op, number)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "empty expression"),
        ("up", "is not <metric> <op> <number>"),
        ("up = 0", "is not <metric> <op> <number>"),
        ("up === 0", "is not <metric> <op> <number>"),
        ("up == 0x10", "is not a number"),
        ("up == zero", "'zero' in 'up == zero' is not a number"),
        ("9up == 0", "is not <metric> <op> <number>"),
        ("up{job=} == 0", "is not a label matcher"),
        ('up{job=~"("} == 0', "is not a valid regex"),
        ("rate(x[5m]) > 1", "is not <metric> <op> <number>"),
    ],
)
def test_bad_expr_says_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(RuleError, match=None) as info:
        parse_expr(text)
    assert says in str(info.value)
    assert "\n" not in str(info.value)


def test_matchers_all_operators_and_quotes() -> None:
    ms = parse_matchers('alertname=NodeDown node=~"rack1-.*" severity!="info", job!~\'x|y\'')
    labels = {"alertname": "NodeDown", "node": "rack1-02", "severity": "critical", "job": "z"}
    assert all(m.match(labels) for m in ms)
    assert not ms[1].match({"node": "rack2-01"})
    # Regexes are anchored, as in Prometheus.
    assert not Matcher("node", "=~", "rack1").match({"node": "rack1-02"})
    # An absent label reads as "".
    assert Matcher("x", "=", "").match({})
    assert str(Matcher("a", "=", 'q"x')) == 'a="q\\"x"'


def test_rule_labels_test_and_fingerprint_order_independent() -> None:
    rule = Rule.parse("HotSoC", "temperature_celsius >= 80", 120, {"severity": "warning"})
    assert rule.test(80)
    assert not rule.test(79.9)
    assert rule.expr == "temperature_celsius >= 80"
    assert fingerprint({"a": "1", "b": "2"}) == fingerprint({"b": "2", "a": "1"})
    assert fingerprint({"a": "1"}) != fingerprint({"a": "2"})
    assert len(fingerprint({})) == 16


def test_defaults_and_seed_thresholds() -> None:
    rules = {r.name: r for r in default_rules()}
    assert set(rules) == {
        "NodeDown",
        "HotSoC",
        "UnderVoltage",
        "RootDiskFull",
        "HighMemory",
        "HighCpu",
    }
    assert rules["NodeDown"].expr == "up == 0"
    assert rules["NodeDown"].for_ == 60
    assert rules["NodeDown"].labels["severity"] == "critical"
    assert rules["HighCpu"].expr == "cpu_percent >= 95"
    assert rules["HighCpu"].for_ == 300
    assert rules["HotSoC"].threshold == 80
    assert rules["RootDiskFull"].threshold == 90
    assert rules["HighMemory"].threshold == 90
    assert str(rules["UnderVoltage"].selector) == (
        'rpi_throttle_condition{condition="under_voltage",scope="now"}'
    )
    seeded = {
        r.name: r
        for r in default_rules(
            {"cpu": 80, "memory_threshold": "70", "disk": 85, "temperature": 75, "timeout": "2m"}
        )
    }
    assert seeded["HighCpu"].threshold == 80
    assert seeded["HighMemory"].threshold == 70
    assert seeded["RootDiskFull"].threshold == 85
    assert seeded["HotSoC"].threshold == 75
    assert seeded["NodeDown"].for_ == 120
    with pytest.raises(RuleError, match=r"monitoring\.config\.cpu"):
        default_rules({"cpu": "lots"})


def test_config_check_reports_the_bad_rule_in_one_line() -> None:
    text = """
manager: {address: 127.0.0.1}
monitoring:
  rules:
    - {alert: NodeDown, expr: up == 0, for: 1m}
    - {alert: Hot, expr: "temperature_celsius => 80"}
    - {alert: "bad name", expr: up == 0}
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, "piman.yaml")
    lines = str(info.value).splitlines()
    assert lines == [
        "piman.yaml: monitoring.rules[1].expr: 'temperature_celsius => 80' is not <metric> <op> "
        "<number> (op one of > >= < <= == !=; e.g. up == 0)",
        "piman.yaml: monitoring.rules[2].alert: 'bad name' is not an alert name (letters, digits, "
        "_ and :)",
    ]


def test_good_rules_load() -> None:
    config = parse_config(
        "manager: {address: 127.0.0.1}\nmonitoring:\n  rules:\n"
        "    - {alert: HotSoC, expr: temperature_celsius >= 80, for: 2m,"
        " annotations: {summary: '{{ node }} is hot'}}\n",
        "piman.yaml",
    )
    assert config.monitoring is not None
    rule = Rule.of(config.monitoring.rules[0])
    assert rule.for_ == 120
    assert rule.annotations["summary"] == "{{ node }} is hot"
