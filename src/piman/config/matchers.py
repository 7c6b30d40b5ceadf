"""The alert expression language: label matchers, metric selectors and ``<selector> <op> <number>``.

Rules (``monitoring.rules``) and silences are written in it; the configuration is checked with
it at load time, the alert evaluator runs it. Pure: parsing and matching, nothing else.

- A matcher is ``name="value"`` (equal), ``name!="value"``, ``name=~"regex"`` or
  ``name!~"regex"``; regexes are fully anchored, as in Prometheus and Alertmanager. Quotes may be
  double, single or left out for simple values.
- A selector is a metric name with optional matchers in braces: ``up``,
  ``rpi_throttle_condition{condition="under_voltage",scope="now"}``.
- An expression is ``<selector> <op> <number>`` with op one of ``> >= < <= == !=``.

Every failure raises :class:`~piman.errors.RuleError` with one line that says what was expected.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from piman.errors import RuleError

__all__ = [
    "NAME_PATTERN",
    "Matcher",
    "Selector",
    "check_field",
    "matches",
    "parse_expr",
    "parse_matchers",
    "parse_selector",
]

NAME_PATTERN = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_EXPR_RE = re.compile(
    rf"^\s*(?P<name>{NAME_PATTERN})\s*(?P<matchers>\{{.*\}})?\s*(?P<op>>=|<=|==|!=|>|<)\s*"
    rf"(?P<number>\S+)\s*$",
    re.DOTALL,
)
_MATCHER_RE = re.compile(
    rf"\s*(?P<label>{_LABEL})\s*(?P<op>=~|!~|!=|=)\s*"
    r"(?:\"(?P<dq>(?:[^\"\\]|\\.)*)\"|'(?P<sq>(?:[^'\\]|\\.)*)'|(?P<bare>[^,\s\"'{}]+))\s*"
)


@dataclass(frozen=True, slots=True)
class Matcher:
    """``label op value`` with op ``=``, ``!=``, ``=~`` or ``!~`` (regexes fully anchored)."""

    label: str
    op: str
    value: str

    def __post_init__(self) -> None:
        if self.op not in ("=", "!=", "=~", "!~"):
            raise RuleError(f"{self.op!r} is not a matcher operator (expected = != =~ !~)")
        if self.op in ("=~", "!~"):
            try:
                re.compile(self.value)
            except re.error as err:
                raise RuleError(f"{self.value!r} is not a valid regex: {err}") from None

    def match(self, labels: Mapping[str, str]) -> bool:
        got = labels.get(self.label, "")
        if self.op == "=":
            return got == self.value
        if self.op == "!=":
            return got != self.value
        hit = re.fullmatch(self.value, got) is not None
        return hit if self.op == "=~" else not hit

    def __str__(self) -> str:
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"')
        return f'{self.label}{self.op}"{escaped}"'


def matches(matchers: Iterable[Matcher], labels: Mapping[str, str]) -> bool:
    """True when every matcher matches the label set."""
    return all(m.match(labels) for m in matchers)


def parse_matchers(text: str) -> tuple[Matcher, ...]:
    """``a="x", b!~"y.*"`` (braces, quotes and commas optional) → matchers; RuleError if bad."""
    body = text.strip()
    if body.startswith("{") and body.endswith("}"):
        body = body[1:-1]
    out: list[Matcher] = []
    pos = 0
    while pos < len(body):
        if body[pos] in ", \t\n":
            pos += 1
            continue
        m = _MATCHER_RE.match(body, pos)
        if m is None:
            rest = body[pos:].split(",")[0].strip()
            raise RuleError(f'{rest!r} is not a label matcher (expected e.g. node="rack1-02")')
        raw = m.group("dq") if m.group("dq") is not None else m.group("sq")
        value = m.group("bare") if raw is None else re.sub(r"\\(.)", r"\1", raw)
        out.append(Matcher(m.group("label"), m.group("op"), value))
        pos = m.end()
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Selector:
    """A metric name (or an /events field) and matchers on its labels."""

    metric: str
    matchers: tuple[Matcher, ...] = ()

    def __str__(self) -> str:
        if not self.matchers:
            return self.metric
        return self.metric + "{" + ",".join(str(m) for m in self.matchers) + "}"


def parse_selector(text: str) -> Selector:
    m = re.fullmatch(rf"\s*(?P<name>{NAME_PATTERN})\s*(?P<matchers>\{{.*\}})?\s*", text, re.DOTALL)
    if m is None:
        raise RuleError(f'{text!r} is not a metric selector (expected e.g. up{{job="agent"}})')
    return Selector(m.group("name"), parse_matchers(m.group("matchers") or ""))


def parse_expr(text: str) -> tuple[Selector, str, float]:
    """``'up == 0'`` → ``(Selector('up'), '==', 0.0)``; raises RuleError with one clear line."""
    if not isinstance(text, str) or not text.strip():
        raise RuleError("empty expression (expected <metric> <op> <number>, e.g. up == 0)")
    m = _EXPR_RE.match(text)
    if m is None:
        raise RuleError(
            f"{text!r} is not <metric> <op> <number> (op one of > >= < <= == !=; e.g. up == 0)"
        )
    selector = Selector(m.group("name"), parse_matchers(m.group("matchers") or ""))
    if not re.fullmatch(_NUMBER, m.group("number")):
        raise RuleError(f"{m.group('number')!r} in {text!r} is not a number")
    return selector, m.group("op"), float(m.group("number"))


def check_field(name: str, value: str) -> str:
    """Validate one field of a configured rule (``alert`` or ``expr``); RuleError if bad."""
    if name == "alert":
        if not isinstance(value, str) or not re.fullmatch(NAME_PATTERN, value):
            raise RuleError(f"{value!r} is not an alert name (letters, digits, _ and :)")
    elif name == "expr":
        parse_expr(value)
    return value
