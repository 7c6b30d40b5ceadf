"""What the configuration fuzzing (tests/fuzz/test_codecs.py) found, kept as plain tests."""

from __future__ import annotations

import pytest

from piman.config import parse_config
from piman.errors import ConfigError


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "piman.yaml")
    return [str(p) for p in info.value.problems]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\x1f", "piman.yaml: character 1: not valid YAML: character #x001f is not allowed"),
        (
            "manager: {address: 198.18.0.1}\n# \x07\n",
            "piman.yaml: character 34: not valid YAML: character #x0007 is not allowed",
        ),
    ],
)
def test_a_control_character_is_one_line_naming_it_and_where(text: str, expected: str) -> None:
    # YAML's reader refused it with a two-line message ('\n  in "<unicode string>", …').
    assert _problems(text) == [expected]


@pytest.mark.parametrize("value", ["false", "no", "on", "0", "3232235521"])
def test_a_network_that_is_a_boolean_or_a_number_is_refused_at_the_field(value: str) -> None:
    # YAML's no/yes became 0.0.0.0/32 through bool's int (a DeprecationWarning, an error here).
    assert _problems(f"manager: {{address: 198.18.0.1, network: {value}}}") == [
        f"piman.yaml: manager.network: {value_repr(value)} is not an IPv4 network "
        "(expected e.g. 198.18.0.0/24)"
    ]


def value_repr(value: str) -> str:
    return {"false": "False", "no": "False", "on": "True"}.get(value, value)
