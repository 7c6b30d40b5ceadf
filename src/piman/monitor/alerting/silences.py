"""Silences: label matchers with a time window that mute matching alerts (as Alertmanager's)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from piman.config.matchers import Matcher, matches, parse_matchers
from piman.errors import RuleError
from piman.fleet.records import SilenceRecord

__all__ = ["MAX_COMMENT", "Silence", "make_silence"]

MAX_COMMENT = 1024  # characters


@dataclass(frozen=True, slots=True)
class Silence:
    id: str
    matchers: tuple[Matcher, ...]
    starts_at: float
    ends_at: float

    def mutes(self, labels: Mapping[str, str], now: float) -> bool:
        return self.starts_at <= now < self.ends_at and matches(self.matchers, labels)

    @classmethod
    def of(cls, record: SilenceRecord) -> Silence:
        return cls(record.id, parse_matchers(record.matchers), record.starts_at, record.ends_at)


def make_silence(
    matchers: str | Sequence[str],
    *,
    now: float,
    duration: float,
    created_by: str = "piman",
    comment: str = "",
    starts_at: float | None = None,
) -> SilenceRecord:
    """A new silence record; RuleError for bad matchers, ValueError for a bad duration or a
    comment longer than :data:`MAX_COMMENT` (matchers are bounded by ``parse_matchers``)."""
    text = matchers if isinstance(matchers, str) else ",".join(matchers)
    parsed = parse_matchers(text)
    if not parsed:
        raise RuleError("a silence needs at least one matcher, e.g. alertname=NodeDown")
    if duration <= 0:
        raise ValueError("a silence must last more than 0 s")
    if len(comment) > MAX_COMMENT:
        raise ValueError(f"a silence's comment is longer than {MAX_COMMENT} characters")
    try:
        comment.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("a silence's comment is not valid Unicode text") from None
    start = now if starts_at is None else starts_at
    return SilenceRecord(
        id=str(uuid.uuid4()),
        matchers=",".join(str(m) for m in parsed),
        starts_at=start,
        ends_at=start + duration,
        created_by=created_by,
        comment=comment,
    )
