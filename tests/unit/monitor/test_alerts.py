"""The alert state machine (as a table) and Alertmanager-style grouping, with time passed in."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from piman.config.matchers import parse_matchers
from piman.fleet.metrics import Sample, Series
from piman.monitor.alerting.book import (
    AlertBook,
    AlertState,
    GroupSettings,
    render,
    replay_times,
    samples_at,
)
from piman.monitor.alerting.rules import Rule
from piman.monitor.alerting.silences import Silence


def sample(labels: Mapping[str, str], value: float) -> Sample:
    """A sample as the store hands it to a rule (its metric and time do not matter here)."""
    return Sample("cpu_percent", labels, 0.0, value)


def series(labels: Mapping[str, str], points: list[tuple[float, float]]) -> Series:
    return Series("cpu_percent", labels, points)


NODE = {"node": "rack1-02", "job": "piman_events", "instance": "rack1-02"}
RULE = Rule.parse(
    "HighCpu",
    "cpu_percent > 5",
    30,
    {"severity": "warning"},
    {"summary": "{{ node }} at {{ value }}"},
)

# (time, value or None for "series absent", expected state after the step or None for no alert)
TABLE: list[tuple[float, float | None, str | None]] = [
    (0, 1, None),
    (10, 6, "pending"),
    (20, 7, "pending"),
    (39, 8, "pending"),  # 29 s < for
    (40, 8, "firing"),  # held for 30 s
    (50, 9, "firing"),
    (60, 2, "resolved"),
    (70, 9, "pending"),  # a new episode, timer restarts
    (80, 1, None),  # pending that ends is dropped, never notified
    (90, 9, "pending"),
    (120, 9, "firing"),
    (130, None, "resolved"),  # the series vanished
]


def test_state_machine_table() -> None:
    book = AlertBook(GroupSettings())
    for t, value, expected in TABLE:
        samples = [] if value is None else [sample(NODE, value)]
        book.evaluate(RULE, samples, t)
        states = [a.state.value for a in book.alerts.values()]
        if expected == "resolved":
            assert states == ["resolved"], t
        elif expected is None:
            assert states == [], t
        else:
            assert states == [expected], t
        if expected == "firing":
            book.flush(t)  # keep the resolved one around until its notification
    history = book.take_changes().history
    assert [(h.state, h.at) for h in history] == [
        ("firing", 40.0),
        ("resolved", 60.0),
        ("firing", 120.0),
        ("resolved", 130.0),
    ]


def test_for_zero_fires_at_once_and_labels_annotations() -> None:
    book = AlertBook(GroupSettings())
    rule = Rule.parse(
        "NodeDown",
        "up == 0",
        0,
        {"severity": "critical"},
        {"summary": "{{ node }} is not answering ({{ $value }})"},
    )
    moves = book.evaluate(rule, [sample({"node": "n1", "__name__": "up"}, 0)], 100)
    assert [(m[1], m[2]) for m in moves] == [("inactive", "pending"), ("pending", "firing")]
    (alert,) = book.alerts.values()
    assert alert.labels == {"node": "n1", "alertname": "NodeDown", "severity": "critical"}
    assert alert.annotations == {"summary": "n1 is not answering (0)"}
    assert alert.fired_at == 100


def test_render_templates() -> None:
    assert render("{{node}} {{ $labels.node }} {{ value }} {{missing}}", {"node": "a"}, 81.5) == (
        "a a 81.5 "
    )


def _fire(book: AlertBook, node: str, t: float, rule: Rule = RULE) -> None:
    book.evaluate(rule, [sample({"node": node}, 9)], t - rule.for_)
    book.evaluate(rule, [sample({"node": node}, 9)], t)


def test_group_wait_interval_repeat_resolve() -> None:
    s = GroupSettings(
        group_by=("alertname",), group_wait=30, group_interval=300, repeat_interval=3600
    )
    book = AlertBook(s)
    _fire(book, "n1", 1000)
    assert book.flush(1000) == []  # group created, waits group_wait
    assert book.flush(1029) == []
    (first,) = book.flush(1030)
    assert [(a.labels["node"], a.status) for a in first.alerts] == [("n1", "firing")]
    assert first.group_labels == {"alertname": "HighCpu"}
    assert first.group_key == '{}:{alertname="HighCpu"}'
    assert first.key.count(":") == 2  # fingerprint:state:start for one alert

    # A second alert joins: notified at the next group_interval tick, with the whole group.
    book.evaluate(RULE, [sample({"node": "n1"}, 9), sample({"node": "n2"}, 9)], 1040)
    book.evaluate(RULE, [sample({"node": "n1"}, 9), sample({"node": "n2"}, 9)], 1070)
    assert book.flush(1070) == []
    (second,) = book.flush(1330)
    assert sorted(a.labels["node"] for a in second.alerts) == ["n1", "n2"]
    assert second.key != first.key

    # Nothing new: silent until repeat_interval since the last notification.
    assert book.flush(1630) == []
    book.evaluate(RULE, [sample({"node": "n1"}, 9), sample({"node": "n2"}, 9)], 4930)
    (repeat,) = book.flush(4930)
    assert repeat.repeat
    assert repeat.key not in (first.key, second.key)

    # n2 resolves: notified at the next tick, with n1 still firing; then n2 is forgotten.
    book.evaluate(RULE, [sample({"node": "n1"}, 9)], 5000)
    assert book.flush(5000) == []
    (resolved,) = book.flush(5230)
    assert {(a.labels["node"], a.status) for a in resolved.alerts} == {
        ("n1", "firing"),
        ("n2", "resolved"),
    }
    n2 = next(a for a in resolved.alerts if a.labels["node"] == "n2")
    assert n2.ends_at == 5000
    assert {a.labels["node"] for a in book.alerts.values()} == {"n1"}

    # n1 resolves too: a resolved-only notification, then the group is gone.
    book.evaluate(RULE, [], 5300)
    (last,) = book.flush(5530)
    assert last.status == "resolved"
    assert book.alerts == {}
    assert book.flush(5830) == []
    assert book.groups == {}


def test_group_by_node_and_silences() -> None:
    book = AlertBook(GroupSettings(group_by=("alertname", "node"), group_wait=0))
    silence = Silence("s1", parse_matchers('node="n2"'), 0, 2000)
    _fire(book, "n1", 1000)
    _fire(book, "n2", 1000)
    notes = book.flush(1000, [silence])
    assert [n.group_labels for n in notes] == [{"alertname": "HighCpu", "node": "n1"}]
    # The silence expires while n2 still fires: it is notified then.
    book.evaluate(RULE, [sample({"node": "n1"}, 9), sample({"node": "n2"}, 9)], 2000)
    notes = book.flush(2000, [silence])
    assert [n.group_labels["node"] for n in notes] == ["n2"]


def test_resolved_before_first_flush_is_still_notified_once() -> None:
    book = AlertBook(GroupSettings(group_wait=30))
    _fire(book, "n1", 1000)
    book.flush(1000)
    book.evaluate(RULE, [], 1010)
    (note,) = book.flush(1030)
    assert [a.status for a in note.alerts] == ["resolved"]
    assert book.flush(2000) == []


def test_take_changes_reports_rows_and_deletions() -> None:
    book = AlertBook(GroupSettings(group_wait=0))
    book.evaluate(RULE, [sample({"node": "n1"}, 9)], 0)
    c = book.take_changes()
    assert [r.state for r in c.alerts] == ["pending"]
    assert c.deleted_alerts == []
    book.evaluate(RULE, [], 10)
    c = book.take_changes()
    assert c.alerts == []
    assert len(c.deleted_alerts) == 1
    assert book.take_changes().deleted_alerts == []


@pytest.mark.parametrize(
    ("at", "expected"),
    [(5, []), (10, [1.0]), (15, [1.0]), (20, [2.0]), (100, [3.0]), (200, [])],
)
def test_samples_at_uses_newest_point_within_lookback(at: float, expected: list[float]) -> None:
    stored = [series({"node": "n"}, [(10, 1.0), (20, 2.0), (30, 3.0)])]
    assert [s.value for s in samples_at(stored, at, lookback=100)] == expected


def test_replay_times_one_per_step_inside_gap() -> None:
    stored = [
        series({"node": "a"}, [(100, 1), (115, 1), (130, 1), (145, 1), (400, 1)]),
        series({"node": "b"}, [(101, 1), (116, 1)]),
    ]
    assert replay_times(stored, 100, 400, 15) == [101, 116, 130, 145]


def test_state_enum_values() -> None:
    assert [s.value for s in AlertState] == ["pending", "firing", "resolved"]


def test_silence_does_not_repeat_what_was_sent_before_it() -> None:
    book = AlertBook(GroupSettings(group_wait=0, group_interval=10, repeat_interval=3600))
    _fire(book, "n1", 1000)
    assert len(book.flush(1000)) == 1
    silence = Silence("s", parse_matchers("node=n1"), 1005, 1100)
    for t in range(1010, 1200, 10):
        book.evaluate(RULE, [sample({"node": "n1"}, 9)], t)
        assert book.flush(t, [silence]) == [], t  # silenced, then already notified
    (repeat,) = book.flush(4600, [silence])
    assert repeat.repeat


def test_silenced_alert_that_resolves_is_forgotten_quietly() -> None:
    book = AlertBook(GroupSettings(group_wait=0))
    silence = Silence("s", parse_matchers("node=n1"), 0, 10_000)
    _fire(book, "n1", 1000)
    assert book.flush(1000, [silence]) == []
    book.evaluate(RULE, [], 1010)
    assert book.flush(1010, [silence]) == []
    assert book.alerts == {}
    assert book.flush(1020, [silence]) == []
    assert book.groups == {}


def test_rules_sharing_a_name_are_judged_together() -> None:
    warn = Rule.parse("HotSoC", "t >= 80", 0, {"severity": "warning"})
    crit = Rule.parse("HotSoC", "t >= 90", 0, {"severity": "critical"})
    book = AlertBook(GroupSettings())

    def step(value: float, t: float) -> list[str]:
        samples = [sample({"node": "n1"}, value)]
        book.evaluate_all([(warn, samples), (crit, samples)], t)
        return sorted(f"{a.labels['severity']}:{a.state.value}" for a in book.alerts.values())

    assert step(85, 0) == ["warning:firing"]
    assert step(95, 10) == ["critical:firing", "warning:firing"]  # no flapping between them
    assert step(95, 20) == ["critical:firing", "warning:firing"]
    assert step(85, 30) == ["critical:resolved", "warning:firing"]
