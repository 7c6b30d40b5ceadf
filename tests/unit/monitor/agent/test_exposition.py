"""The exposition renderer: what a Prometheus parser reads back from it."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from piman.monitor.agent.exposition import CONTENT_TYPE, MetricFamily, format_value, render


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (1.0, "1"),
        (1441559552, "1441559552"),
        (0.25, "0.25"),
        (-3.5, "-3.5"),
        (1.8446744073709552e19, "1.8446744073709552e+19"),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
        (math.nan, "NaN"),
    ],
)
def test_values_are_written_as_go_would(value: float, text: str) -> None:
    assert format_value(value) == text


def test_prometheus_parser_reads_back_names_types_labels_and_values() -> None:
    cpu = MetricFamily("node_cpu_seconds_total", "counter", "Seconds the CPUs spent in each mode.")
    cpu.add(12.5, {"mode": "idle", "cpu": "0"})
    cpu.add(3, {"mode": "user", "cpu": "0"})
    info = MetricFamily("node_uname_info", "gauge", "Labeled system information.")
    info.add(1, {"nodename": 'pi "one"\\x\nend', "machine": "aarch64"})
    load = MetricFamily("node_load1", "gauge", "1m load average.")
    load.add(0.42)
    empty = MetricFamily("node_nothing", "gauge", "No samples: left out.")
    text = render([load, cpu, info, empty]).decode()

    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert set(families) == {"node_cpu_seconds", "node_uname_info", "node_load1"}
    assert families["node_cpu_seconds"].type == "counter"
    samples = {
        (s.labels["cpu"], s.labels["mode"]): s.value for s in families["node_cpu_seconds"].samples
    }
    assert samples == {("0", "idle"): 12.5, ("0", "user"): 3.0}
    (uname,) = families["node_uname_info"].samples
    assert uname.labels == {"nodename": 'pi "one"\\x\nend', "machine": "aarch64"}
    assert families["node_load1"].samples[0].value == pytest.approx(0.42)
    assert "node_nothing" not in text
    # labels are sorted by name and families by name, as node_exporter writes them
    assert '{cpu="0",mode="idle"}' in text
    assert (
        text.index("node_cpu_seconds_total") < text.index("node_load1") < text.index("node_uname")
    )


def test_content_type_is_the_classic_text_format() -> None:
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


@given(
    st.lists(
        st.tuples(
            st.text(max_size=20).filter(lambda s: "\r" not in s),
            st.floats(allow_nan=False, allow_infinity=True, width=64),
        ),
        min_size=1,
        max_size=5,
        unique_by=lambda t: t[0],
    )
)
def test_any_label_value_and_number_survive_a_prometheus_parser(
    samples: list[tuple[str, float]],
) -> None:
    fam = MetricFamily("node_fuzz", "gauge", 'help with \\ and "quotes"\nand a newline')
    for label, number in samples:
        fam.add(number, {"value": label})
    parsed = list(text_string_to_metric_families(render([fam]).decode()))
    assert len(parsed) == 1
    got = {s.labels["value"]: s.value for s in parsed[0].samples}
    assert got == dict(samples)
