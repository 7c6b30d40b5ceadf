"""Regex matchers (silences, rule selectors) run on RE2, as Alertmanager's, with bounded sizes.

A silence is written by any operator and evaluated on the manager's event loop at every tick and
every page load; with Python's backtracking engine ``alertname=~"(?:.*){40}X"`` froze the manager
(exponential time on an 8-letter alert name). RE2 matches in time linear in the label's length,
and its syntax is Alertmanager's (Go's ``regexp``): Perl-only constructs are refused when the
silence or rule is made, POSIX classes and Unicode classes mean what they mean there.
"""

from __future__ import annotations

import pytest

from piman.config import parse_config
from piman.config.matchers import (
    MAX_MATCHERS,
    MAX_MATCHERS_TEXT,
    MAX_REGEX,
    Matcher,
    matches,
    parse_matchers,
)
from piman.errors import ConfigError, RuleError
from piman.monitor.alerting.silences import MAX_COMMENT, Silence, make_silence

T0 = 1_800_000_000.0


# A hang here is the bug: the per-test timeout turns it into a failure instead of a stuck run.
@pytest.mark.timeout(30)
def test_a_catastrophic_silence_regex_does_not_freeze_the_manager() -> None:
    record = make_silence(['alertname=~"(?:.*){40}X"'], now=T0, duration=3600)
    silence = Silence.of(record)
    labels = {"alertname": "HighTemperature", "node": "rack1-02" * 100}
    assert not silence.mutes(labels, T0 + 1)
    assert silence.mutes({"alertname": "HighTemperatureX"}, T0 + 1)
    # The same pattern in a rule's selector, tried against a long scraped label value.
    (matcher,) = parse_matchers('node=~"(?:.*){40}X"')
    assert not matcher.match({"node": "n" * 10_000})


@pytest.mark.timeout(30)
def test_nested_quantifiers_match_a_long_label_quickly() -> None:
    (matcher,) = parse_matchers('node=~"(a+)+b"')
    assert not matcher.match({"node": "a" * 5000})
    assert matcher.match({"node": "a" * 5000 + "b"})


@pytest.mark.parametrize(
    ("regex", "says"),
    [
        (r"(rack)\1", "invalid escape sequence"),  # backreference: Perl, not RE2 / Go
        ("(?=rack)rack1", "invalid perl operator"),  # lookahead
        ("(?<!x)rack1", "invalid perl operator"),  # lookbehind
        ("rack1++", "bad repetition operator"),  # possessive
        ("a{1001}", "invalid repetition size"),
        ("(", "missing )"),
    ],
)
def test_perl_only_syntax_is_refused_in_one_line(regex: str, says: str) -> None:
    quoted = regex.replace("\\", "\\\\")  # a backslash is escaped in quotes, as in PromQL
    with pytest.raises(RuleError) as info:
        parse_matchers(f'node=~"{quoted}"')
    message = str(info.value)
    assert says in message
    assert "is not a valid regex" in message
    assert "\n" not in message
    assert "b'" not in message  # RE2's message decoded, not a bytes repr


def test_re2_syntax_means_what_it_means_in_alertmanager() -> None:
    # POSIX classes, Unicode classes and \z are RE2 (and Go) syntax.
    (posix,) = parse_matchers('node=~"[[:alpha:]]+-[[:digit:]]+"')
    assert posix.match({"node": "rack-12"})
    assert not posix.match({"node": "rack-1x"})
    (letters,) = parse_matchers(r'node=~"\\pL+"')
    assert letters.match({"node": "étagère"})
    assert not letters.match({"node": "rack1"})
    # Fully anchored, as Alertmanager's ^(?:…)$; no multi-line surprises with $.
    (anchored,) = parse_matchers('node=~"rack1|rack2"')
    assert anchored.match({"node": "rack2"})
    assert not anchored.match({"node": "rack12"})
    assert not Matcher("node", "=~", "rack1$").match({"node": "rack1\n"})
    assert Matcher("node", "!~", "rack.*").match({"node": "lab-1"})
    # Case-insensitive flag and named groups are fine.
    assert Matcher("alertname", "=~", "(?i)nodedown").match({"alertname": "NodeDown"})
    assert Matcher("node", "=~", "(?P<rack>rack[0-9])-.*").match({"node": "rack1-02"})


def test_a_regex_too_big_for_the_engine_is_refused_not_compiled_forever() -> None:
    with pytest.raises(RuleError, match="is not a valid regex"):
        parse_matchers(r'node=~"\\pL{1000}"')


def test_matcher_sizes_are_bounded() -> None:
    long_regex = "a" * (MAX_REGEX + 1)
    with pytest.raises(RuleError, match=f"longer than {MAX_REGEX} characters"):
        Matcher("node", "=~", long_regex)
    many = ",".join(f'l{i}="v"' for i in range(MAX_MATCHERS + 1))
    with pytest.raises(RuleError, match=f"more than {MAX_MATCHERS} matchers"):
        parse_matchers(many)
    with pytest.raises(RuleError, match=f"longer than {MAX_MATCHERS_TEXT} characters"):
        parse_matchers('node="' + "x" * MAX_MATCHERS_TEXT + '"')
    with pytest.raises(RuleError, match=f"longer than {MAX_MATCHERS_TEXT} characters"):
        make_silence(['node="' + "x" * MAX_MATCHERS_TEXT + '"'], now=T0, duration=60)
    with pytest.raises(ValueError, match=f"comment is longer than {MAX_COMMENT} characters"):
        make_silence(["node=n1"], now=T0, duration=60, comment="x" * (MAX_COMMENT + 1))
    # A long alternation of node names, as an operator writes for a rack, still fits.
    rack = "|".join(f"rack{r}-{i:02d}" for r in range(8) for i in range(48))
    (matcher,) = parse_matchers(f'node=~"{rack}"')
    assert matcher.match({"node": "rack7-47"})


def test_text_that_is_not_unicode_is_refused_and_never_crashes_a_match() -> None:
    # JSON lets an API client send a lone surrogate ("\\ud800"): one clear line, not a 500.
    for text in ('node=~"\ud800"', 'node="\ud800"'):
        with pytest.raises(RuleError, match="not valid Unicode text"):
            parse_matchers(text)
    (matcher,) = parse_matchers('node=~"a.*"')
    assert matcher.match({"node": "a\udcff"})


def test_matchers_compare_by_what_they_say() -> None:
    assert parse_matchers('node=~"rack.*"') == (Matcher("node", "=~", "rack.*"),)
    assert matches(parse_matchers('a="1",b=~"x|y"'), {"a": "1", "b": "y"})


def test_a_rule_with_a_perl_only_regex_is_a_config_error_in_one_line() -> None:
    text = """
manager: {address: 127.0.0.1}
monitoring:
  rules:
    - {alert: Hot, expr: 'temperature_celsius{node=~"(?=rack)rack1.*"} > 80'}
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, "piman.yaml")
    (line,) = str(info.value).splitlines()
    assert line.startswith("piman.yaml: monitoring.rules[0].expr: ")
    assert "is not a valid regex" in line
