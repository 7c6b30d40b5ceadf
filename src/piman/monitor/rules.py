"""Alert rules: the model, the ``expr`` parser, label matchers and the built-in defaults.

An ``expr`` is ``<selector> <op> <number>``:

- ``<selector>`` is a metric name with optional matchers (``up``,
  ``rpi_throttle_condition{condition="under_voltage",scope="now"}``) or a field of the agent's
  ``/events`` snapshot (:data:`EVENT_FIELDS`, e.g. ``memory_percent``);
- ``<op>`` is one of ``> >= < <= == !=``;
- ``<number>`` is a decimal number (``80``, ``0.5``, ``1e3``, ``-1``).

Matchers (in selectors and in silences) are ``name="value"`` (equal), ``name!="value"``,
``name=~"regex"`` and ``name!~"regex"`` (fully anchored, as in Prometheus).

The seed piman's ``monitoring.config`` thresholds map onto the defaults (:func:`default_rules`):

=====================================  ==========================================
``cpu`` / ``cpu_percent``              HighCpu threshold (percent, default 95)
``memory`` / ``memory_percent``        HighMemory threshold (percent, default 90)
``disk`` / ``disk_percent``            RootDiskFull threshold (percent, default 90)
``temperature`` / ``temp``             HotSoC threshold (°C, default 80)
``timeout``                            NodeDown ``for`` (seconds or ``1m``; default 1m)
=====================================  ==========================================

A ``*_threshold`` suffix is accepted too (``cpu_threshold: 90``).
"""

from __future__ import annotations

import hashlib
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from piman.config.types import parse_duration

__all__ = [
    "EVENT_FIELDS",
    "OPS",
    "Matcher",
    "Rule",
    "RuleError",
    "Selector",
    "check_field",
    "default_rules",
    "fingerprint",
    "matches",
    "parse_expr",
    "parse_matchers",
    "parse_selector",
]

EVENT_FIELDS = frozenset(
    {
        "cpu_percent",
        "memory_percent",
        "disk_percent",
        "temperature_celsius",
        "num_pids",
        "throttled",
    }
)

OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}


class RuleError(ValueError):
    """An alert rule or a matcher does not parse; the message says what was expected."""


_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_EXPR_RE = re.compile(
    rf"^\s*(?P<name>{_NAME})\s*(?P<matchers>\{{.*\}})?\s*(?P<op>>=|<=|==|!=|>|<)\s*"
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

    @property
    def is_event(self) -> bool:
        return self.metric in EVENT_FIELDS

    def __str__(self) -> str:
        if not self.matchers:
            return self.metric
        return self.metric + "{" + ",".join(str(m) for m in self.matchers) + "}"


def parse_selector(text: str) -> Selector:
    m = re.fullmatch(rf"\s*(?P<name>{_NAME})\s*(?P<matchers>\{{.*\}})?\s*", text, re.DOTALL)
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


def fingerprint(labels: Mapping[str, str]) -> str:
    """A stable 16-hex-digit id of a label set (order-independent), as Alertmanager shows one."""
    h = hashlib.sha256()
    for key in sorted(labels):
        h.update(key.encode())
        h.update(b"\xff")
        h.update(labels[key].encode())
        h.update(b"\xff")
    return h.hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Rule:
    """A parsed alert rule."""

    name: str
    selector: Selector
    op: str
    threshold: float
    for_: float = 0.0
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def expr(self) -> str:
        return f"{self.selector} {self.op} {self.threshold:g}"

    def test(self, value: float) -> bool:
        return OPS[self.op](value, self.threshold)

    @classmethod
    def parse(
        cls,
        name: str,
        expr: str,
        for_: float = 0.0,
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
    ) -> Rule:
        if not re.fullmatch(_NAME, name or ""):
            raise RuleError(f"{name!r} is not an alert name (letters, digits, _ and :)")
        selector, op, threshold = parse_expr(expr)
        return cls(name, selector, op, threshold, for_, dict(labels or {}), dict(annotations or {}))

    @classmethod
    def of(cls, settings: Any) -> Rule:
        """From a :class:`piman.config.monitoring.RuleSettings`."""
        return cls.parse(
            settings.alert, settings.expr, settings.for_, settings.labels, settings.annotations
        )


def check_field(name: str, value: str) -> str:
    """Validate one field of a configured rule (``alert`` or ``expr``); RuleError if bad."""
    if name == "alert":
        if not isinstance(value, str) or not re.fullmatch(_NAME, value):
            raise RuleError(f"{value!r} is not an alert name (letters, digits, _ and :)")
    elif name == "expr":
        parse_expr(value)
    return value


def _threshold(config: Mapping[str, Any], keys: tuple[str, ...], default: float) -> float:
    for key in keys:
        for spelled in (key, f"{key}_threshold"):
            if spelled in config and config[spelled] is not None:
                try:
                    return float(config[spelled])
                except (TypeError, ValueError):
                    raise RuleError(
                        f"monitoring.config.{spelled}: {config[spelled]!r} is not a number"
                    ) from None
    return default


def default_rules(config: Mapping[str, Any] | None = None) -> list[Rule]:
    """The built-in rules, with the seed's ``monitoring.config`` thresholds applied."""
    cfg = dict(config or {})
    timeout = 60.0
    if cfg.get("timeout") is not None:
        try:
            timeout = parse_duration(cfg["timeout"])
        except ValueError as err:
            raise RuleError(f"monitoring.config.timeout: {err}") from None
    cpu = _threshold(cfg, ("cpu", "cpu_percent"), 95.0)
    mem = _threshold(cfg, ("memory", "memory_percent", "mem"), 90.0)
    disk = _threshold(cfg, ("disk", "disk_percent"), 90.0)
    temp = _threshold(cfg, ("temperature", "temp", "temperature_celsius"), 80.0)
    crit, warn = {"severity": "critical"}, {"severity": "warning"}
    return [
        Rule.parse(
            "NodeDown", "up == 0", timeout, crit, {"summary": "{{ node }} is not answering"}
        ),
        Rule.parse(
            "HotSoC",
            f"temperature_celsius >= {temp:g}",
            120.0,
            warn,
            {"summary": "{{ node }} SoC at {{ value }} °C"},
        ),
        Rule.parse(
            "UnderVoltage",
            'rpi_throttle_condition{condition="under_voltage",scope="now"} == 1',
            0.0,
            crit,
            {"summary": "{{ node }} is under-voltage: check its power supply"},
        ),
        Rule.parse(
            "RootDiskFull",
            f"disk_percent >= {disk:g}",
            300.0,
            warn,
            {"summary": "{{ node }} root disk {{ value }} % full"},
        ),
        Rule.parse(
            "HighMemory",
            f"memory_percent >= {mem:g}",
            300.0,
            warn,
            {"summary": "{{ node }} memory {{ value }} % used"},
        ),
        Rule.parse(
            "HighCpu",
            f"cpu_percent >= {cpu:g}",
            300.0,
            warn,
            {"summary": "{{ node }} CPU {{ value }} % busy"},
        ),
    ]
