"""Reservations: the rules, pure (no I/O; the time is always passed in).

Theory of operation
-------------------
A reservation hands nodes to one owner from ``start_at`` to ``end_at``. Its states and the only
moves between them (:data:`TRANSITIONS`; :func:`check_transition` is the gate)::

    scheduled ──start──▶ active ──end, release, unused──▶ ending ──released──▶ released
        │                                                   (power off / redeploy / nothing)
        └──release before the start, or missed──▶ cancelled

**Booking.** Two live reservations (scheduled, active, ending) never share a node at once, and
``buffer`` (PiSeduce's 15 min for the release) lies between one's end and the next one's start on
the same node: :func:`conflict` finds the first reservation in the way, :func:`next_free` the
earliest start at which the same request fits (the candidates are the request's own start and
each end plus the buffer of a reservation in the way: only there can a refusal turn into a fit),
:func:`choose` the nodes (those named, or the first ``count`` free nodes that match a filter,
in the inventory's order). A refusal is a :class:`~piman.errors.ReservationConflict` that names
the holder, their reservation, and the next free slot.

**Limits** (:func:`check_limits`, :func:`extended_end`) bind role ``user``; operators and admins
are trusted. Nodes held at once count every live reservation of the owner that overlaps the new
one (conservative: two that do not overlap each other both count).

**Timers.** A reservation carries its timers (:func:`timers_for`): ``start``; one ``warn`` per
configured lead that falls after the start; ``unused`` when ``unused_after`` falls before the
end; ``end``. The service runs each due timer once and asks :func:`verdict` what it means *now*
(a manager that was down replays what it missed, in due order): a start whose end has passed is
a miss (the reservation is cancelled, the nodes never handed out), a warning after the end is
skipped, an end resumes an ``ending`` reservation (a release interrupted by a crash goes on).
Extending makes new ``warn`` and ``end`` timers (:func:`extension_timers`) for the new end.

**Nodes.** At the start a node walks its lifecycle to ``allocated``, at the end back to
``ready`` (:func:`path_to`: the shortest legal path in :data:`piman.fleet.lifecycle.TRANSITIONS`
that does not pass through a failure or a deployment); a node with no such path (broken, lost,
deploying) is left as it is.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from piman.config.reservations import LimitSettings, ReservationSettings
from piman.errors import LimitExceeded, NotFoundError, ReservationConflict
from piman.fleet.lifecycle import TRANSITIONS as NODE_TRANSITIONS
from piman.fleet.lifecycle import NodeState
from piman.fleet.reservations import (
    FreeSlot,
    NodeSelection,
    ReservationRecord,
    ReservationState,
    TimerDraft,
    TimerKind,
)

__all__ = [
    "LATE_AFTER",
    "NOT_RESERVABLE",
    "TRANSITIONS",
    "Candidate",
    "IllegalReservationTransition",
    "Verdict",
    "check_limits",
    "check_selection",
    "check_ssh_key",
    "check_transition",
    "choose",
    "conflict",
    "extended_end",
    "extension_timers",
    "is_unused",
    "next_free",
    "overlaps",
    "path_to",
    "timers_for",
    "verdict",
    "warning_text",
    "when",
]

S = ReservationState
TRANSITIONS: Mapping[ReservationState, frozenset[ReservationState]] = {
    S.SCHEDULED: frozenset({S.ACTIVE, S.CANCELLED}),
    S.ACTIVE: frozenset({S.ENDING}),
    S.ENDING: frozenset({S.RELEASED}),
    S.RELEASED: frozenset(),
    S.CANCELLED: frozenset(),
}
del S

NOT_RESERVABLE = frozenset({NodeState.NEW, NodeState.BROKEN, NodeState.LOST})
# States a node never passes through on its way to allocated or ready.
_NOT_VIA = frozenset(
    {
        NodeState.NEW,
        NodeState.BROKEN,
        NodeState.LOST,
        NodeState.DEPLOYING,
        NodeState.FAILED_DEPLOYMENT,
    }
)
LATE_AFTER = 60.0  # seconds: a warning sent later than this after its time says it is late


class IllegalReservationTransition(ValueError):
    """A move the reservation states do not allow."""

    def __init__(self, current: ReservationState, target: ReservationState) -> None:
        allowed = ", ".join(sorted(TRANSITIONS[current])) or "none"
        super().__init__(f"a reservation cannot go from {current} to {target} (allowed: {allowed})")


def check_transition(current: str, target: ReservationState) -> ReservationState:
    """``target`` if ``current → target`` is allowed, else IllegalReservationTransition."""
    now = ReservationState(current)
    if target not in TRANSITIONS[now]:
        raise IllegalReservationTransition(now, target)
    return target


def when(at: datetime) -> str:
    """A time for messages: ``2026-12-06 14:15 UTC``."""
    return at.strftime("%Y-%m-%d %H:%M UTC")


# Booking -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Candidate:
    """A node as booking sees it (from the store and the configuration)."""

    name: str
    state: str
    model: str | None = None
    switch: str | None = None
    tags: frozenset[str] = field(default_factory=frozenset)

    @property
    def reservable(self) -> bool:
        return self.state not in NOT_RESERVABLE

    def matches(self, selection: NodeSelection) -> bool:
        if selection.model is not None and (self.model or "") != selection.model:
            return False
        if selection.switch is not None and self.switch != selection.switch:
            return False
        return set(selection.tags) <= self.tags


def check_selection(selection: NodeSelection) -> NodeSelection:
    """The selection, with ``count`` 1 when a filter gives none; ValueError when it names nodes
    and gives a filter too, or asks for fewer than one node."""
    if selection.names:
        if selection.count is not None or selection.model or selection.switch or selection.tags:
            raise ValueError("name nodes, or give --count with filters, not both")
        if len(set(selection.names)) != len(selection.names):
            raise ValueError("a node is named twice")
        return selection
    if selection.count is not None and selection.count < 1:
        raise ValueError("ask for at least one node")
    if selection.count is None:
        return NodeSelection(
            count=1, model=selection.model, switch=selection.switch, tags=selection.tags
        )
    return selection


def overlaps(
    a_start: datetime, a_end: datetime, b_start: datetime, b_end: datetime, buffer: float
) -> bool:
    """Whether two bookings of one node clash: they overlap, or one starts within ``buffer``
    after the other ends."""
    gap = timedelta(seconds=buffer)
    return a_start < b_end + gap and b_start < a_end + gap


def conflict(
    node: str,
    start: datetime,
    end: datetime,
    live: Sequence[ReservationRecord],
    buffer: float,
) -> ReservationRecord | None:
    """The live reservation of ``node`` in the way of ``[start, end)``, the earliest first."""
    found = [
        r
        for r in live
        if r.live and node in r.nodes and overlaps(start, end, r.start_at, r.end_at, buffer)
    ]
    return min(found, key=lambda r: (r.start_at, r.id), default=None)


def _pick(
    selection: NodeSelection,
    nodes: Sequence[Candidate],
    live: Sequence[ReservationRecord],
    start: datetime,
    end: datetime,
    buffer: float,
) -> tuple[str, ...] | None:
    if selection.names:
        free = all(conflict(n, start, end, live, buffer) is None for n in selection.names)
        return selection.names if free else None
    count = selection.count or 1
    free_nodes = [
        n.name
        for n in nodes
        if n.reservable
        and n.matches(selection)
        and conflict(n.name, start, end, live, buffer) is None
    ]
    return tuple(free_nodes[:count]) if len(free_nodes) >= count else None


def next_free(
    selection: NodeSelection,
    nodes: Sequence[Candidate],
    live: Sequence[ReservationRecord],
    after: datetime,
    duration: float,
    buffer: float,
) -> FreeSlot | None:
    """The earliest start at or after ``after`` at which the request fits for ``duration``
    seconds, with the nodes it would get; None when it never fits (too few nodes match)."""
    selection = check_selection(selection)
    span = timedelta(seconds=duration)
    gap = timedelta(seconds=buffer)
    times = {after} | {r.end_at + gap for r in live if r.live and r.end_at + gap > after}
    for start in sorted(times):
        picked = _pick(selection, nodes, live, start, start + span, buffer)
        if picked is not None:
            return FreeSlot(start, picked)
    return None


def choose(
    selection: NodeSelection,
    nodes: Sequence[Candidate],
    live: Sequence[ReservationRecord],
    start: datetime,
    end: datetime,
    buffer: float,
) -> tuple[str, ...]:
    """The nodes a request gets for ``[start, end)``.

    NotFoundError for a name the inventory lacks; LimitExceeded when a named node cannot be
    reserved (new, broken, lost) or fewer nodes match the filter than asked for, whatever the
    time; ReservationConflict (holder, next free slot) when the nodes are taken then.
    """
    selection = check_selection(selection)
    by_name = {n.name: n for n in nodes}
    if selection.names:
        for name in selection.names:
            node = by_name.get(name)
            if node is None:
                raise NotFoundError(f"no node named {name!r}")
            if not node.reservable:
                raise LimitExceeded(f"node {name} is {node.state}: it cannot be reserved")
        wanted = [by_name[n] for n in selection.names]
    else:
        wanted = [n for n in nodes if n.reservable and n.matches(selection)]
        count = selection.count or 1
        if len(wanted) < count:
            raise LimitExceeded(
                f"asked for {selection.describe()}, but only {len(wanted)} reservable "
                f"node{'s' if len(wanted) != 1 else ''} match"
            )
    picked = _pick(selection, nodes, live, start, end, buffer)
    if picked is not None:
        return picked
    blockers = [b for n in wanted if (b := conflict(n.name, start, end, live, buffer)) is not None]
    blocker = min(blockers, key=lambda r: (r.end_at, r.id))
    busy = sorted({n.name for n in wanted} & set(blocker.nodes))
    slot = next_free(selection, nodes, live, start, (end - start).total_seconds(), buffer)
    message = (
        f"{', '.join(busy)} {'is' if len(busy) == 1 else 'are'} reserved by {blocker.owner} "
        f"from {when(blocker.start_at)} until {when(blocker.end_at)} "
        f"(reservation {blocker.id}, then {int(buffer // 60)} min to release)"
    )
    if not selection.names:
        free = len(wanted) - len(blockers)
        message = f"only {free} of the {len(wanted)} matching nodes are free then; " + message
    if slot is not None:
        message += f"; the next free slot for {selection.describe()} starts {when(slot.start)}"
        if not selection.names:
            message += f" ({', '.join(slot.nodes)})"
    raise ReservationConflict(
        message,
        holder=blocker.owner,
        reservation=blocker.id,
        next_free=slot.start if slot is not None else None,
    )


_SSH_KEY = re.compile(
    r"(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp(256|384|521)"
    r"|sk-(ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com) [A-Za-z0-9+/]+={0,3}( [^\r\n]*)?"
)
MAX_KEY = 16384


def check_ssh_key(key: str) -> str:
    """An OpenSSH public key line (``ssh-ed25519 AAAA… comment``), stripped; ValueError."""
    line = key.strip()
    if len(line) > MAX_KEY or not _SSH_KEY.fullmatch(line):
        shown = line[:30] + ("…" if len(line) > 30 else "")
        raise ValueError(f"{shown!r} is not an SSH public key (expected e.g. ssh-ed25519 AAAA…)")
    return line


# Limits --------------------------------------------------------------------------------------


def _hours(seconds: float) -> str:
    if seconds % 86400 == 0:
        return f"{int(seconds // 86400)} d"
    if seconds % 3600 == 0:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 60)} min"


def check_limits(
    limits: LimitSettings,
    owned: Sequence[ReservationRecord],
    count: int,
    start: datetime,
    end: datetime,
    now: datetime,
) -> None:
    """LimitExceeded unless a new reservation of ``count`` nodes over ``[start, end)`` fits the
    owner's limits, ``owned`` being the owner's reservations (any state)."""
    duration = (end - start).total_seconds()
    if limits.max_duration is not None and duration > limits.max_duration:
        raise LimitExceeded(
            f"{_hours(duration)} is longer than the {_hours(limits.max_duration)} a "
            "reservation may last"
        )
    ahead = (start - now).total_seconds()
    if limits.max_ahead is not None and ahead > limits.max_ahead:
        raise LimitExceeded(
            f"it starts in {_hours(ahead)}: reservations start at most "
            f"{_hours(limits.max_ahead)} ahead"
        )
    if limits.max_nodes is not None:
        held = sum(
            len(r.nodes) for r in owned if r.live and overlaps(start, end, r.start_at, r.end_at, 0)
        )
        if held + count > limits.max_nodes:
            already = f" ({held} held then already)" if held else ""
            raise LimitExceeded(
                f"{count} node{'s' if count != 1 else ''}{already} is more than the "
                f"{limits.max_nodes} one user may hold at once"
            )


def extended_end(
    r: ReservationRecord,
    by: float,
    live: Sequence[ReservationRecord],
    buffer: float,
    limits: LimitSettings | None,
) -> datetime:
    """The end of ``r`` moved ``by`` seconds later.

    ValueError when it is over or ``by`` is not positive; LimitExceeded past the limits (None:
    unlimited); ReservationConflict naming the next reservation of one of its nodes, and until
    when it can go.
    """
    if r.state not in (ReservationState.SCHEDULED, ReservationState.ACTIVE):
        raise ValueError(f"reservation {r.id} is {r.state}: only a scheduled or active one extends")
    if by <= 0:
        raise ValueError("extend by more than 0 s")
    new_end = r.end_at + timedelta(seconds=by)
    if limits is not None:
        if limits.max_extensions is not None and r.extensions >= limits.max_extensions:
            raise LimitExceeded(
                f"reservation {r.id} was extended {r.extensions} time"
                f"{'s' if r.extensions != 1 else ''}: the limit is {limits.max_extensions}"
            )
        total = (new_end - r.start_at).total_seconds()
        cap = limits.max_total
        if cap is not None and total > cap:
            room = max(0.0, cap - r.duration)
            raise LimitExceeded(
                f"{_hours(total)} in all is longer than the {_hours(cap)} a reservation may "
                f"reach with extensions (it can still grow by {_hours(room)})"
            )
    others = [o for o in live if o.id != r.id and o.live]
    blockers = [
        b
        for node in r.nodes
        if (b := conflict(node, r.end_at, new_end, others, buffer)) is not None
    ]
    if blockers:
        blocker = min(blockers, key=lambda o: (o.start_at, o.id))
        latest = blocker.start_at - timedelta(seconds=buffer)
        node = next(n for n in r.nodes if n in blocker.nodes)
        message = (
            f"{node} is reserved by {blocker.owner} from {when(blocker.start_at)} "
            f"(reservation {blocker.id})"
        )
        if latest > r.end_at:
            message += f": reservation {r.id} can run until {when(latest)} at most"
        else:
            message += f": reservation {r.id} cannot run longer"
        raise ReservationConflict(message, holder=blocker.owner, reservation=blocker.id)
    return new_end


# Timers --------------------------------------------------------------------------------------


def _warnings(
    start: datetime, end: datetime, settings: ReservationSettings, after: datetime
) -> list[TimerDraft]:
    out = []
    for lead in settings.warnings:
        due = end - timedelta(seconds=lead)
        if due > start and due > after:
            out.append(TimerDraft(TimerKind.WARN, due, lead))
    return out


def timers_for(
    start: datetime, end: datetime, settings: ReservationSettings
) -> tuple[TimerDraft, ...]:
    """The timers of a new reservation over ``[start, end)``, in due order."""
    timers = [TimerDraft(TimerKind.START, start)]
    timers += _warnings(start, end, settings, start)
    if settings.unused_after is not None:
        due = start + timedelta(seconds=settings.unused_after)
        if due < end:
            timers.append(TimerDraft(TimerKind.UNUSED, due))
    timers.append(TimerDraft(TimerKind.END, end))
    return tuple(sorted(timers, key=lambda t: t.due_at))


def extension_timers(
    r: ReservationRecord, new_end: datetime, settings: ReservationSettings, now: datetime
) -> tuple[TimerDraft, ...]:
    """The warnings and end of ``r`` extended to ``new_end`` (warnings already past at ``now``
    are not made)."""
    timers = _warnings(r.start_at, new_end, settings, now)
    return (*timers, TimerDraft(TimerKind.END, new_end))


class Verdict(StrEnum):
    """What a due timer means now."""

    START = "start"  # hand the nodes out
    MISS = "miss"  # never started and its end has passed: cancel it
    WARN = "warn"
    CHECK_USE = "check_use"  # release it unless the owner used it
    END = "end"  # release it (or go on releasing it)
    FINISH = "finish"  # see whether the release's deployments are over
    SKIP = "skip"  # nothing to do any more (cancelled, released, extended, past)


def verdict(kind: str, r: ReservationRecord, now: datetime) -> Verdict:
    """The timer table (module doc): what a ``kind`` timer of ``r`` due by ``now`` does."""
    state = ReservationState(r.state)
    k = TimerKind(kind)
    if state is ReservationState.SCHEDULED:
        if k in (TimerKind.START, TimerKind.END):
            return Verdict.START if now < r.end_at else Verdict.MISS
        return Verdict.SKIP
    if state is ReservationState.ACTIVE:
        if k is TimerKind.WARN:
            return Verdict.WARN if now < r.end_at else Verdict.SKIP
        if k is TimerKind.UNUSED:
            return Verdict.CHECK_USE if r.used_at is None and now < r.end_at else Verdict.SKIP
        if k is TimerKind.END:
            return Verdict.END if now >= r.end_at else Verdict.SKIP
        return Verdict.SKIP
    if state is ReservationState.ENDING:
        if k is TimerKind.END:
            return Verdict.END
        return Verdict.FINISH if k is TimerKind.FINISH else Verdict.SKIP
    return Verdict.SKIP


def is_unused(r: ReservationRecord, activity: datetime | None) -> bool:
    """Nobody used ``r`` since it started: no use recorded, no activity of the owner (login,
    API call, deployment of its nodes) after its start (the call that booked it came before)."""
    if r.used_at is not None:
        return False
    since = r.started_at or r.start_at
    return activity is None or activity <= since


def warning_text(
    r: ReservationRecord, lead: float, now: datetime, release: str, url: str | None
) -> tuple[str, str]:
    """The title and body of the mail that warns ``r``'s owner of its end."""
    left = max(0.0, (r.end_at - now).total_seconds())
    title = f"piman: reservation {r.id} ends in {_hours(max(60.0, round(left / 60) * 60))}"
    action = {
        "power_off": "the nodes are powered off",
        "redeploy": "the nodes are reinstalled (their disks are wiped)",
        "none": "the nodes go back to the pool",
    }[release]
    lines = [
        f"Hello {r.owner},",
        "",
        f"your reservation {r.id} of {', '.join(r.nodes)} ends at {when(r.end_at)}.",
        f"Then {action}: save what you need before.",
        f"To keep them longer: piman extend {r.id} --by 1h",
    ]
    if url:
        lines.append(f"Web: {url.rstrip('/')}/")
    if now - timedelta(seconds=LATE_AFTER) > r.end_at - timedelta(seconds=lead):
        lines.append("(late: the manager was down when this warning was due)")
    return title, "\n".join(lines)


# Nodes ---------------------------------------------------------------------------------------


def path_to(current: str, target: NodeState) -> list[NodeState] | None:
    """The states a node goes through from ``current`` to ``target`` (excluding ``current``):
    the shortest legal path avoiding failures and deployments; ``[]`` when it is there, None
    when there is no such path (or it is a failure or deploying itself)."""
    start = NodeState(current)
    if start is target:
        return []
    if start in _NOT_VIA - {NodeState.FAILED_DEPLOYMENT}:
        return None
    seen = {start: [start]}
    queue = deque([start])
    while queue:
        state = queue.popleft()
        for nxt in sorted(NODE_TRANSITIONS[state]):
            if nxt in seen or (nxt in _NOT_VIA and nxt is not target):
                continue
            seen[nxt] = [*seen[state], nxt]
            if nxt is target:
                return seen[nxt][1:]
            queue.append(nxt)
    return None
