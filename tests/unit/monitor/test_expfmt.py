"""The Prometheus text-format parser: tables, round trips, fuzzing, prometheus_client as judge."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from piman.monitor.collector.expfmt import (
    MalformedText,
    ParsedSample,
    format_sample,
    format_value,
    parse,
    parse_series,
    scan,
)

BODY = """\
# HELP node_load1 1m load average.
# TYPE node_load1 gauge
node_load1 0.25
# TYPE node_cpu_seconds_total counter
node_cpu_seconds_total{cpu="0",mode="idle"} 12345.67
node_cpu_seconds_total{mode="user",cpu="0"} 89
node_filesystem_avail_bytes{device="/dev/sda1",fstype="ext4",mountpoint="/"} 1.2e+10

weird{path="C:\\\\dir",quote="say \\"hi\\"",nl="a\\nb"} -Inf 1700000000000
brace{v="} 1"} NaN
spaced { a = "x" , b="y", } +Inf
"""


def test_parses_every_sample_line_of_a_body() -> None:
    samples = parse(BODY)
    assert [s.name for s in samples] == [
        "node_load1",
        "node_cpu_seconds_total",
        "node_cpu_seconds_total",
        "node_filesystem_avail_bytes",
        "weird",
        "brace",
        "spaced",
    ]
    assert samples[0] == ParsedSample("node_load1", (), 0.25, None)
    assert samples[1].labels == (("cpu", "0"), ("mode", "idle"))
    assert samples[2].labels == (("cpu", "0"), ("mode", "user"))
    assert samples[3].value == 1.2e10
    assert samples[4].labels == (("nl", "a\nb"), ("path", "C:\\dir"), ("quote", 'say "hi"'))
    assert samples[4].value == -math.inf
    assert samples[4].timestamp_ms == 1700000000000
    assert samples[5].labels == (("v", "} 1"),)
    assert math.isnan(samples[5].value)
    assert samples[6].labels == (("a", "x"), ("b", "y"))
    assert samples[6].value == math.inf


def test_scan_gives_the_series_text_verbatim_for_caching() -> None:
    assert scan('a{x="1"} 2\nb 3 17\n') == [('a{x="1"}', 2.0, None), ("b", 3.0, 17)]


@pytest.mark.parametrize(
    "line",
    [
        "metric",  # no value
        "metric 1 2 3",  # too many fields
        "metric one",
        "metric 1 soon",
        "metric infinity",  # Python's spelling, not Go's
        "metric 1_000",
        'metric{a="1" 2',  # unterminated label set
        "metric{a=1} 2",  # unquoted value
        'metric{a="1",a="2"} 2',  # duplicate label
        'metric{a="1" b="2"} 2',  # missing comma
        'metric{a="\\x"} 2',  # bad escape
        '9metric{a="1"} 2',  # bad name
        '{a="1"} 2',  # no name
    ],
)
def test_malformed_lines_raise_malformed_text(line: str) -> None:
    with pytest.raises(MalformedText):
        parse(line + "\n")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1.0, "1"),
        (-2.0, "-2"),
        (0.5, "0.5"),
        (1e20, "1e+20"),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
    ],
)
def test_values_are_formatted_as_the_format_spells_them(value: float, text: str) -> None:
    assert format_value(value) == text
    assert scan(f"m {text}\n")[0][1] == value


_names = st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,20}", fullmatch=True)
# Label names that start with "__" are reserved (the exposition format keeps them for internal
# use; prometheus_client's parser refuses them), so a valid exposition never carries one.
_label_names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,12}", fullmatch=True).filter(
    lambda name: not name.startswith("__")
)
_values = st.floats(allow_nan=False) | st.integers(-(2**53), 2**53).map(float)
_samples = st.builds(
    ParsedSample,
    _names,
    st.dictionaries(_label_names, st.text(max_size=20), max_size=5).map(
        lambda d: tuple(sorted(d.items()))
    ),
    _values,
    st.none() | st.integers(0, 2**45),
)


@given(st.lists(_samples, max_size=20))
@settings(max_examples=200, deadline=None)
def test_format_then_parse_round_trips(samples: list[ParsedSample]) -> None:
    text = "".join(format_sample(s.name, s.labels, s.value, s.timestamp_ms) + "\n" for s in samples)
    assert parse(text) == samples


@given(st.lists(_samples, min_size=1, max_size=10))
@settings(max_examples=100, deadline=None)
def test_agrees_with_prometheus_client_parser(samples: list[ParsedSample]) -> None:
    # One family per name, as a real exposition has; prometheus_client is the independent judge.
    seen: dict[str, ParsedSample] = {}
    for s in samples:
        seen.setdefault(s.name, s)
    text = "".join(format_sample(s.name, s.labels, s.value) + "\n" for s in seen.values())
    theirs = sorted(
        (smp.name, tuple(sorted(smp.labels.items())), smp.value)
        for fam in text_string_to_metric_families(text)
        for smp in fam.samples
    )
    ours = sorted((s.name, s.labels, s.value) for s in parse(text))
    assert ours == theirs


def _sample_lines(text: str) -> int:
    """Lines that must give one sample each: neither blank nor a comment."""
    return sum(1 for line in text.split("\n") if line.strip() and line.strip()[0] != "#")


def _comparable(samples: list[ParsedSample]) -> list[tuple[object, ...]]:
    return [
        (s.name, s.labels, "NaN" if math.isnan(s.value) else s.value, s.timestamp_ms)
        for s in samples
    ]


def _check_accepted(text: str) -> None:
    """Whatever parses gives one sample per sample line, and reads back the same once written
    out again; whatever does not raises MalformedText (and nothing else)."""
    try:
        samples = parse(text)
    except MalformedText:
        return
    assert len(samples) == _sample_lines(text)
    again = "".join(
        format_sample(s.name, s.labels, s.value, s.timestamp_ms) + "\n" for s in samples
    )
    assert _comparable(parse(again)) == _comparable(samples)


@given(st.text(max_size=200))
@settings(max_examples=500, deadline=None)
def test_garbage_raises_only_malformed_text(text: str) -> None:
    _check_accepted(text)


@given(st.text(alphabet='a{}=",\\ n1.#\t\ne-+', max_size=60))
@settings(max_examples=500, deadline=None)
def test_near_miss_garbage_raises_only_malformed_text(text: str) -> None:
    _check_accepted(text)


@given(st.lists(st.sampled_from(["", "   ", "\t", "# HELP m x", "#", "  # TYPE m gauge"])))
def test_blanks_and_comments_alone_are_no_samples(lines: list[str]) -> None:
    assert parse("\n".join(lines)) == []


def test_parse_series_sorts_labels() -> None:
    assert parse_series('m{b="2",a="1"}') == ("m", (("a", "1"), ("b", "2")))
