"""The alert expression language: label matchers, metric selectors and ``<selector> <op> <number>``.

Rules (``monitoring.rules``) and silences are written in it; the configuration is checked with
it at load time, the alert evaluator runs it. Pure: parsing and matching, nothing else.

- A matcher is ``name="value"`` (equal), ``name!="value"``, ``name=~"regex"`` or
  ``name!~"regex"``; regexes are fully anchored, as in Prometheus and Alertmanager. Quotes may be
  double, single or left out for simple values.
- Regexes are RE2, the syntax of Alertmanager and Prometheus (Go's ``regexp``), and run on RE2
  (PyPI ``google-re2``): matching takes time linear in the label's length whatever the pattern,
  so a silence written by any operator cannot stall the event loop that evaluates it at every
  tick and page load. Perl-only constructs (backreferences, lookaround, possessive repeats) are
  refused when the matcher is made. Sizes are bounded: :data:`MAX_REGEX` characters per regex,
  :data:`MAX_MATCHERS` matchers and :data:`MAX_MATCHERS_TEXT` characters per matcher list, and
  :data:`RE2_MAX_MEM` bytes of compiled program per regex (a bigger one is refused, quickly).
- A selector is a metric name with optional matchers in braces: ``up``,
  ``rpi_throttle_condition{condition="under_voltage",scope="now"}``.
- An expression is ``<selector> <op> <number>`` with op one of ``> >= < <= == !=``.

Every failure raises :class:`~piman.errors.RuleError` with one line that says what was expected.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import re2  # type: ignore[import-untyped]

from piman.errors import RuleError

__all__ = [
    "MAX_MATCHERS",
    "MAX_MATCHERS_TEXT",
    "MAX_REGEX",
    "NAME_PATTERN",
    "RE2_MAX_MEM",
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

MAX_REGEX = 4096  # characters of one regex (a rack's node names, alternated, fit)
MAX_MATCHERS = 64  # matchers in one silence or selector
MAX_MATCHERS_TEXT = 16384  # characters of one matcher list
RE2_MAX_MEM = 1 << 20  # bytes RE2 may use for one compiled regex; bigger ones are refused


def _re2_options() -> Any:
    options = re2.Options()
    options.max_mem = RE2_MAX_MEM
    options.log_errors = False  # errors are raised as RuleError, not written to stderr
    options.never_capture = True  # only "does it match" is asked: the DFA answers that
    return options


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@functools.lru_cache(maxsize=256)
def _compile(pattern: str) -> Any:
    """A compiled RE2 regex (cached: silences are parsed again at every tick); RuleError."""
    try:
        return re2.compile(pattern, _re2_options())
    except re2.error as err:
        reason = err.args[0] if err.args else "does not compile"
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise RuleError(f"{pattern!r} is not a valid regex: {reason}") from None


@dataclass(frozen=True, slots=True)
class Matcher:
    """``label op value`` with op ``=``, ``!=``, ``=~`` or ``!~`` (regexes fully anchored)."""

    label: str
    op: str
    value: str
    _regex: Any = field(default=None, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.op not in ("=", "!=", "=~", "!~"):
            raise RuleError(f"{self.op!r} is not a matcher operator (expected = != =~ !~)")
        if self.op in ("=~", "!~"):
            if len(self.value) > MAX_REGEX:
                raise RuleError(
                    f"the regex for {self.label!r} is longer than {MAX_REGEX} characters"
                )
            if not _is_utf8(self.value):
                raise RuleError("the regex is not valid Unicode text (a lone surrogate)")
            object.__setattr__(self, "_regex", _compile(self.value))

    def match(self, labels: Mapping[str, str]) -> bool:
        got = labels.get(self.label, "")
        if self.op == "=":
            return got == self.value
        if self.op == "!=":
            return got != self.value
        if not _is_utf8(got):  # RE2 reads UTF-8: a lone surrogate reads as U+FFFD
            got = got.encode("utf-8", "replace").decode("utf-8")
        hit = self._regex.fullmatch(got) is not None
        return hit if self.op == "=~" else not hit

    def __str__(self) -> str:
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"')
        return f'{self.label}{self.op}"{escaped}"'


def matches(matchers: Iterable[Matcher], labels: Mapping[str, str]) -> bool:
    """True when every matcher matches the label set."""
    return all(m.match(labels) for m in matchers)


def parse_matchers(text: str) -> tuple[Matcher, ...]:
    """``a="x", b!~"y.*"`` (braces, quotes and commas optional) → matchers; RuleError if bad.

    At most :data:`MAX_MATCHERS` matchers in at most :data:`MAX_MATCHERS_TEXT` characters.
    """
    if len(text) > MAX_MATCHERS_TEXT:
        raise RuleError(f"the matchers are longer than {MAX_MATCHERS_TEXT} characters")
    if not _is_utf8(text):
        raise RuleError("the matchers are not valid Unicode text (a lone surrogate)")
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
        if len(out) == MAX_MATCHERS:
            raise RuleError(f"more than {MAX_MATCHERS} matchers")
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
