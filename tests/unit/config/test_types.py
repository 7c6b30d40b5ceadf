"""Durations as people write them in YAML, and as `piman config check --yaml` writes them back."""

from __future__ import annotations

import pytest

from piman.config.types import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds", "written"),
    [
        ("90", 90.0, "90s"),
        ("90s", 90.0, "90s"),
        ("1m30s", 90.0, "90s"),
        ("1h", 3600.0, "1h"),
        ("15d", 15 * 86400.0, "15d"),
        ("250ms", 0.25, "250ms"),
        ("0.5s", 0.5, "500ms"),
        ("100us", 100e-6, "100us"),
        ("100µs", 100e-6, "100us"),
        ("1ms500us", 0.0015, "1500us"),
    ],
)
def test_durations_parse_and_are_written_back_in_their_shortest_exact_form(
    text: str, seconds: float, written: str
) -> None:
    assert parse_duration(text) == pytest.approx(seconds)
    assert format_duration(parse_duration(text)) == written


def test_a_fraction_of_a_microsecond_is_written_in_seconds() -> None:
    assert format_duration(0.123456789) == "0.123457s"


@pytest.mark.parametrize("text", ["soon", "10 parsecs", "-5s", "1x", ""])
def test_nonsense_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)
