"""The listing renderer on its own: which columns give way, what is never cut, relative times."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from piman.cli import output
from piman.cli.output import Column, Output, fit, relative, render, to_text

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)

COLUMNS = (
    Column("name", "name", name=True),
    Column("state", "state", priority=1),
    Column("ip", "ip", priority=2),
    Column("seen", "seen", priority=3, time=True, missing="never"),
    Column("note", "note", priority=4, shrink=True),
    Column("serial", "serial", priority=5),
    Column("hostname", "hostname", wide=True),
)
ROWS: list[dict[str, Any]] = [
    {
        "name": "rack1-switch2-port48",
        "state": "failed_deployment",
        "ip": "198.18.0.148",
        "seen": (NOW - timedelta(seconds=12)).isoformat(),
        "note": "the installer said: no space left on device while writing",
        "serial": "10000000a3b4c5d6",
        "hostname": "lab-48",
    },
    {
        "name": "rack1-switch2-port47",
        "state": "ready",
        "ip": None,
        "seen": None,
        "note": "line one\nline two",
        "serial": "",
        "hostname": None,
    },
]


def table(width: int | None, *, wide: bool = False) -> list[str]:
    return render(ROWS, COLUMNS, width=width, now=NOW, title="2 nodes", wide=wide).lines()


def header_cells(lines: list[str]) -> list[str]:
    return [c.strip() for c in lines[1].split("│")]


@pytest.mark.parametrize("width", [30, 40, 60, 80, 100, 120, 200])
def test_no_line_is_wider_than_the_terminal_and_names_stay_whole(width: int) -> None:
    lines = table(width)
    assert all(len(line) <= width for line in lines), lines
    rows = lines[3:]
    assert [r.split(" │ ")[0].strip() for r in rows] == [
        "rack1-switch2-port48",
        "rack1-switch2-port47",
    ]


def test_the_least_useful_columns_give_way_first() -> None:
    seen = [header_cells(table(w)) for w in (20, 30, 45, 60, 200)]
    assert seen[0] == ["name"]
    assert seen[1] == ["name"]  # state (17) does not fit beside the name in 30
    assert seen[2] == ["name", "state"]
    assert seen[3] == ["name", "state", "ip"]
    assert seen[4] == ["name", "state", "ip", "seen", "note", "serial"]
    # a column shows only when every more useful one does, in its declared place
    for cells in seen:
        kept = [c.header for c in COLUMNS if c.header in cells]
        assert cells == kept
        priorities = sorted(c.priority for c in COLUMNS if c.header in cells and not c.name)
        assert priorities == list(range(1, len(priorities) + 1))


def test_a_name_wider_than_the_terminal_is_not_cut_and_not_wrapped() -> None:
    lines = table(10)
    assert lines[3] == "rack1-switch2-port48"
    assert "…" not in "".join(lines)


def test_only_shrinkable_columns_are_cut_and_with_an_ellipsis() -> None:
    lines = table(85)
    assert header_cells(lines) == ["name", "state", "ip", "seen", "note"]
    first = [c.strip() for c in lines[3].split("│")]
    assert first[:4] == ["rack1-switch2-port48", "failed_deployment", "198.18.0.148", "12 s ago"]
    assert first[4].endswith("…")
    assert "the installer said: no space left on device".startswith(first[4][:-1])
    assert len(lines[3]) == 85  # the spare width went to the note


def test_a_newline_in_a_cell_does_not_break_the_row() -> None:
    lines = table(200)
    assert len(lines) == 5
    assert "line one line two" in lines[4]


def test_missing_values_show_the_columns_placeholder() -> None:
    second = [c.strip() for c in table(200)[4].split("│")]
    assert second[2:4] == ["-", "never"]
    assert second[5] == "-"  # an empty serial


def test_wide_shows_every_column_whole() -> None:
    lines = table(80, wide=True)
    assert header_cells(lines) == [c.header for c in COLUMNS]
    assert "the installer said: no space left on device while writing" in lines[3]
    assert lines[3].endswith("lab-48")
    assert lines[0] == "2 nodes"


def test_with_no_width_to_fit_every_column_but_the_wide_only_ones_shows_whole() -> None:
    lines = table(None)
    assert header_cells(lines) == [c.header for c in COLUMNS if not c.wide]
    assert "the installer said: no space left on device while writing" in lines[3]
    assert lines[0] == "2 nodes"


def test_the_title_says_which_columns_wide_brings_back() -> None:
    assert table(60)[0] == "2 nodes (-o wide adds seen, note, serial)"
    assert table(30)[0] == "2 nodes (-o wide adds 5 more)"
    assert table(200)[0] == "2 nodes"  # hostname is wide-only: nothing was left out to fit


def test_right_aligned_columns_pad_on_the_left() -> None:
    cols = (Column("id", "id", name=True, right=True), Column("n", "n", priority=1, right=True))
    out = render([{"id": 7, "n": 1.5}, {"id": 1234, "n": 10.0}], cols, width=80, now=NOW)
    assert out.rows == ["   7 │ 1.5", "1234 │  10"]


def test_a_shrinkable_column_that_does_not_fit_whole_takes_what_is_left_and_is_the_last() -> None:
    cols = (
        Column("n", "n", name=True),
        Column("a", "a", priority=2, shrink=True),
        Column("b", "b", priority=1, shrink=True),
    )
    assert fit(cols, [4, 30, 30], 80) == [4, 30, 30]
    assert fit(cols, [4, 30, 30], 50) == [4, 10, 30]  # a: the 10 cells left
    assert fit(cols, [4, 30, 30], 46) == [4, None, 30]  # 6 left: less than SHRINK_MIN
    assert fit(cols, [4, 30, 30], 30) == [4, None, 23]  # b cut, and a never after it
    assert fit(cols, [4, 30, 30], 16) == [4, None, None]


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(0), "now"),
        (timedelta(milliseconds=400), "now"),
        (timedelta(seconds=12), "12 s ago"),
        (timedelta(seconds=59), "59 s ago"),
        (timedelta(seconds=60), "1 min ago"),
        (timedelta(minutes=3, seconds=20), "3 min ago"),
        (timedelta(minutes=59, seconds=40), "1 h ago"),
        (timedelta(hours=5), "5 h ago"),
        (timedelta(hours=47), "47 h ago"),
        (timedelta(days=3), "3 d ago"),
        (timedelta(days=400), "400 d ago"),
        (-timedelta(seconds=30), "in 30 s"),
        (-timedelta(hours=2) + timedelta(milliseconds=5), "in 2 h"),
        (-timedelta(days=90), "in 90 d"),
    ],
)
def test_relative_times(delta: timedelta, text: str) -> None:
    assert relative(NOW - delta, NOW) == text


@pytest.mark.parametrize(
    "value",
    [
        datetime(2025, 6, 1, 11, 57, tzinfo=UTC),
        "2025-06-01T11:57:00Z",
        "2025-06-01T11:57:00+00:00",
        "2025-06-01T13:57:00+02:00",
        "2025-06-01T11:57:00",  # no zone: UTC, as the store keeps it
        datetime(2025, 6, 1, 11, 57, tzinfo=UTC).timestamp(),  # POSIX seconds (alerts)
    ],
)
def test_a_time_column_reads_every_form_a_record_holds(value: Any) -> None:
    col = Column("seen", "seen", time=True)
    assert col.cell({"seen": value}, NOW) == "3 min ago"


def test_json_and_yaml_hold_the_same_records_with_absolute_times() -> None:
    records = [{**ROWS[0], "at": NOW, "labels": {"node": "rack1-switch2-port48"}}, ROWS[1]]
    as_json = json.loads(to_text(records, Output.JSON))
    assert as_json[0]["at"] == "2025-06-01T12:00:00+00:00"
    assert as_json[0]["seen"] == "2025-06-01T11:59:48+00:00"
    assert yaml.safe_load(to_text(records, Output.YAML)) == as_json
    assert list(as_json[0]) == list(records[0])  # keys in the record's order


def test_the_api_other_commands_build_on_stays_put() -> None:
    assert sorted(output.__all__) == [
        "Column", "JsonFlag", "Output", "OutputOption", "chosen", "emit", "fit", "print_data",
        "print_details", "print_table", "relative", "render", "terminal_width", "to_text",
    ]  # fmt: skip
