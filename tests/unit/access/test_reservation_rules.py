"""The reservation rules as tables: states, overlap and buffer, choosing nodes, the next free slot,
limits, extending, timers and what each means when due, unused release, node paths."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from piman.access.reservations import (
    TRANSITIONS,
    Candidate,
    IllegalReservationTransition,
    Verdict,
    check_limits,
    check_selection,
    check_transition,
    choose,
    extended_end,
    extension_timers,
    is_unused,
    next_free,
    overlaps,
    path_to,
    timers_for,
    verdict,
    warning_text,
)
from piman.config.reservations import LimitSettings, ReservationSettings, owner_mail_url
from piman.errors import LimitExceeded, NotFoundError, ReservationConflict
from piman.fleet.lifecycle import NodeState
from piman.fleet.reservations import (
    NodeSelection,
    ReservationRecord,
    ReservationState,
    TimerKind,
)

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
H = 3600.0
BUFFER = 900.0


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def booking(
    ident: int,
    owner: str,
    nodes: tuple[str, ...],
    start: float,
    end: float,
    state: str = "scheduled",
    *,
    extensions: int = 0,
    used: float | None = None,
    started: float | None = None,
) -> ReservationRecord:
    return ReservationRecord(
        id=ident,
        owner=owner,
        nodes=nodes,
        start_at=at(start),
        end_at=at(end),
        state=state,
        environment=None,
        ssh_keys=(),
        extensions=extensions,
        created_by=owner,
        created_at=T0,
        started_at=at(started) if started is not None else None,
        used_at=at(used) if used is not None else None,
    )


FLEET = [
    Candidate("rack1-01", "ready", "pi4", "rack1", frozenset({"camera"})),
    Candidate("rack1-02", "ready", "pi4", "rack1"),
    Candidate("rack1-03", "deployed", "pi3", "rack1"),
    Candidate("rack2-01", "ready", "pi4", "rack2", frozenset({"camera", "gpio"})),
    Candidate("rack2-02", "broken", "pi4", "rack2"),
    Candidate("rack2-03", "new", "pi4", "rack2"),
]


# States --------------------------------------------------------------------------------------

ALLOWED = {
    ("scheduled", "active"),
    ("scheduled", "cancelled"),
    ("active", "ending"),
    ("ending", "released"),
}


@pytest.mark.parametrize("current", list(ReservationState))
@pytest.mark.parametrize("target", list(ReservationState))
def test_the_transition_table_allows_exactly_the_documented_moves(
    current: ReservationState, target: ReservationState
) -> None:
    if (current.value, target.value) in ALLOWED:
        assert check_transition(current.value, target) is target
    else:
        with pytest.raises(IllegalReservationTransition, match=f"from {current} to {target}"):
            check_transition(current.value, target)
    assert {(a.value, b.value) for a, bs in TRANSITIONS.items() for b in bs} == ALLOWED


# Overlap and buffer --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "buffer", "clash"),
    [
        ((0, 2), (2, 4), 0, False),  # back to back, no buffer
        ((0, 2), (2, 4), BUFFER, True),  # the next one starts inside the release buffer
        ((0, 2), (2.25, 4), BUFFER, False),  # exactly the buffer after
        ((0, 2), (2.24, 4), BUFFER, True),
        ((2.25, 4), (0, 2), BUFFER, False),  # symmetric
        ((0, 4), (1, 2), 0, True),  # inside
        ((1, 2), (0, 4), 0, True),
        ((5, 6), (0, 2), BUFFER, False),
    ],
)
def test_overlap_counts_the_release_buffer(
    a: tuple[float, float], b: tuple[float, float], buffer: float, clash: bool
) -> None:
    assert overlaps(at(a[0]), at(a[1]), at(b[0]), at(b[1]), buffer) is clash


# Choosing nodes ------------------------------------------------------------------------------

ALICE = booking(7, "alice", ("rack1-01",), 0, 2, "active")
BOB = booking(8, "bob", ("rack1-02", "rack2-01"), 1, 3)
DONE = booking(9, "carol", ("rack1-02",), -5, -1, "released")  # over: blocks nothing
LIVE = [ALICE, BOB, DONE]


@pytest.mark.parametrize(
    ("selection", "start", "end", "nodes"),
    [
        (NodeSelection(names=("rack1-03",)), 0, 2, ("rack1-03",)),  # free
        (NodeSelection(names=("rack1-01",)), 2.25, 3, ("rack1-01",)),  # after alice + buffer
        (NodeSelection(names=("rack1-02",)), -4, -2, ("rack1-02",)),  # released ones block nothing
        (NodeSelection(count=1, model="pi4"), 3.5, 4, ("rack1-01",)),  # inventory order
        (NodeSelection(count=2, model="pi4"), 3.5, 4, ("rack1-01", "rack1-02")),
        (NodeSelection(count=1, model="pi4"), 0, 0.5, ("rack1-02",)),  # rack1-01 is alice's
        (NodeSelection(count=1, tags=("camera", "gpio")), 4, 5, ("rack2-01",)),
        (NodeSelection(count=1, switch="rack1"), 0, 2, ("rack1-03",)),
        (NodeSelection(model="pi3"), 0, 1, ("rack1-03",)),  # a filter without count: one
    ],
)
def test_choose_gives_free_nodes(
    selection: NodeSelection, start: float, end: float, nodes: tuple[str, ...]
) -> None:
    assert choose(selection, FLEET, LIVE, at(start), at(end), BUFFER) == nodes


def test_a_named_node_taken_then_names_the_holder_and_the_next_free_slot() -> None:
    with pytest.raises(ReservationConflict) as caught:
        choose(NodeSelection(names=("rack1-01", "rack1-03")), FLEET, LIVE, at(1), at(3), BUFFER)
    err = caught.value
    assert (err.holder, err.reservation, err.next_free) == ("alice", 7, at(2.25))
    assert str(err) == (
        "rack1-01 is reserved by alice from 2026-12-06 12:00 UTC until 2026-12-06 14:00 UTC "
        "(reservation 7, then 15 min to release); the next free slot for rack1-01, rack1-03 "
        "starts 2026-12-06 14:15 UTC"
    )


def test_a_filter_with_too_few_free_nodes_says_which_and_when() -> None:
    with pytest.raises(ReservationConflict) as caught:
        choose(NodeSelection(count=2, model="pi4"), FLEET, LIVE, at(1), at(2), BUFFER)
    err = caught.value
    # alice's rack1-01 frees first (14:00 + 15 min), bob's two only at 15:15.
    assert err.holder == "alice"
    assert err.next_free == at(3.25)
    assert str(err).startswith("only 0 of the 3 matching nodes are free then; rack1-01 is ")
    assert str(err).endswith(
        "the next free slot for 2 nodes (model pi4) starts 2026-12-06 15:15 UTC "
        "(rack1-01, rack1-02)"
    )


@pytest.mark.parametrize(
    ("selection", "error", "says"),
    [
        (NodeSelection(names=("nope",)), NotFoundError, "no node named 'nope'"),
        (NodeSelection(names=("rack2-02",)), LimitExceeded, "rack2-02 is broken"),
        (NodeSelection(names=("rack2-03",)), LimitExceeded, "rack2-03 is new"),
        (NodeSelection(count=3, tags=("camera",)), LimitExceeded, "only 2 reservable nodes"),
        (NodeSelection(count=1, model="pi5"), LimitExceeded, "only 0 reservable nodes match"),
        (NodeSelection(names=("rack1-01",), count=1), ValueError, "not both"),
        (NodeSelection(names=("rack1-01", "rack1-01")), ValueError, "named twice"),
        (NodeSelection(count=0), ValueError, "at least one"),
    ],
)
def test_choose_refuses_bad_requests_whatever_the_time(
    selection: NodeSelection, error: type[Exception], says: str
) -> None:
    with pytest.raises(error, match=says):
        choose(selection, FLEET, [], at(0), at(1), BUFFER)


@pytest.mark.parametrize(
    ("selection", "after", "hours", "slot"),
    [
        (NodeSelection(names=("rack1-03",)), 0, 1, (0, ("rack1-03",))),
        (NodeSelection(names=("rack1-01",)), 0, 1, (2.25, ("rack1-01",))),
        # rack1-02 is free before bob's start at 1 for 2 h minus the buffer: 1.9 h is too long.
        (NodeSelection(names=("rack1-02",)), -1, 1.9, (3.25, ("rack1-02",))),
        (NodeSelection(names=("rack1-02",)), -1, 1.75, (-1, ("rack1-02",))),
        (NodeSelection(count=3, model="pi4"), 0, 1, (3.25, ("rack1-01", "rack1-02", "rack2-01"))),
        (NodeSelection(count=4, model="pi4"), 0, 1, None),  # never: only three can be reserved
    ],
)
def test_next_free_is_the_earliest_fit(
    selection: NodeSelection,
    after: float,
    hours: float,
    slot: tuple[float, tuple[str, ...]] | None,
) -> None:
    got = next_free(selection, FLEET, LIVE, at(after), hours * H, BUFFER)
    assert (None if got is None else (got.start, got.nodes)) == (
        None if slot is None else (at(slot[0]), slot[1])
    )


# Limits --------------------------------------------------------------------------------------

LIMITS = LimitSettings(max_nodes=3, max_duration=4 * H, max_extensions=2, max_total=6 * H,
                       max_ahead=24 * H)  # fmt: skip
MINE = [
    booking(1, "dora", ("a", "b"), 0, 2, "active"),
    booking(2, "dora", ("c",), 5, 6),
    booking(3, "dora", ("d", "e"), -3, -1, "released"),
]


@pytest.mark.parametrize(
    ("count", "start", "end", "says"),
    [
        (1, 0, 2, None),  # 2 held + 1 = 3
        (2, 0, 2, "2 nodes (2 held then already) is more than the 3 one user may hold at once"),
        (3, 2.5, 4.5, None),  # overlaps nothing live
        (2, 4, 5.5, None),  # overlaps reservation 2: 1 + 2
        (3, 4, 5.5, "3 nodes (1 held then already)"),
        (4, 10, 11, "4 nodes is more than the 3"),
        (1, 0, 5, "5 h is longer than the 4 h a reservation may last"),
        (1, 25, 26, "it starts in 25 h: reservations start at most 1 d ahead"),
    ],
)
def test_limits(count: int, start: float, end: float, says: str | None) -> None:
    if says is None:
        check_limits(LIMITS, MINE, count, at(start), at(end), T0)
    else:
        with pytest.raises(LimitExceeded, match=says.replace("(", r"\(").replace(")", r"\)")):
            check_limits(LIMITS, MINE, count, at(start), at(end), T0)


def test_no_limit_when_null_and_per_user_overrides() -> None:
    free = LimitSettings(max_nodes=None, max_duration=None, max_extensions=None, max_ahead=None)
    check_limits(free, MINE, 100, at(0), at(1000), T0)
    settings = ReservationSettings.model_validate(
        {"limits": {"max_nodes": 2}, "users": {"prof": {"max_nodes": 20, "max_ahead": None}}}
    )
    assert settings.limits_for("student").max_nodes == 2
    prof = settings.limits_for("prof")
    assert (prof.max_nodes, prof.max_ahead, prof.max_duration) == (20, None, 7 * 86400.0)


# Extending -----------------------------------------------------------------------------------

NEXT = booking(20, "erin", ("b",), 4, 5)


@pytest.mark.parametrize(
    ("r", "by", "limits", "end", "error", "says"),
    [
        (booking(1, "dora", ("a", "b"), 0, 2, "active"), H, LIMITS, 3, None, None),
        # up to the next reservation of b minus the buffer
        (booking(1, "dora", ("a", "b"), 0, 2, "active"), 1.75 * H, LIMITS, 3.75, None, None),
        (booking(1, "dora", ("a", "b"), 0, 2, "active"), 2 * H, LIMITS, None,
         ReservationConflict, "b is reserved by erin from 2026-12-06 16:00 UTC "
         r"\(reservation 20\): reservation 1 can run until 2026-12-06 15:45 UTC at most"),
        (booking(1, "dora", ("a",), 0, 2, "active", extensions=2), H, LIMITS, None,
         LimitExceeded, "extended 2 times: the limit is 2"),
        (booking(1, "dora", ("a",), 0, 2, "active", extensions=2), H, None, 3, None, None),
        (booking(1, "dora", ("a",), 0, 5, "active"), 2 * H, LIMITS, None,
         LimitExceeded, r"7 h in all is longer than the 6 h .* can still grow by 1 h\)"),
        (booking(1, "dora", ("a",), 0, 2, "scheduled"), H, LIMITS, 3, None, None),
        (booking(1, "dora", ("a",), 0, 2, "released"), H, LIMITS, None, ValueError, "released"),
        (booking(1, "dora", ("a",), 0, 2, "active"), 0, LIMITS, None, ValueError, "more than 0"),
    ],
)  # fmt: skip
def test_extend(
    r: ReservationRecord,
    by: float,
    limits: LimitSettings | None,
    end: float | None,
    error: type[Exception] | None,
    says: str | None,
) -> None:
    if error is None:
        assert extended_end(r, by, [r, NEXT], BUFFER, limits) == at(end or 0)
    else:
        with pytest.raises(error, match=says):
            extended_end(r, by, [r, NEXT], BUFFER, limits)


# Timers --------------------------------------------------------------------------------------

SETTINGS = ReservationSettings.model_validate({"warnings": ["10m", "1h"], "unused_after": "30m"})


@pytest.mark.parametrize(
    ("start", "end", "timers"),
    [
        (0, 2, [("start", 0), ("unused", 0.5), ("warn", 1), ("warn", 11 / 6), ("end", 2)]),
        # 40 min: the 1 h warning would come before the start; unused at 30 min still fits
        (0, 2 / 3, [("start", 0), ("unused", 0.5), ("warn", 0.5), ("end", 2 / 3)]),
        (0, 0.25, [("start", 0), ("warn", 1 / 12), ("end", 0.25)]),
    ],
)
def test_timers_for_a_new_reservation(
    start: float, end: float, timers: list[tuple[str, float]]
) -> None:
    made = timers_for(at(start), at(end), SETTINGS)
    got = [(t.kind.value, round((t.due_at - T0).total_seconds())) for t in made]
    want = [(k, round(h * H)) for k, h in timers]
    assert sorted(got, key=lambda x: (x[1], x[0])) == sorted(want, key=lambda x: (x[1], x[0]))
    assert [t.lead for t in made if t.kind is TimerKind.WARN] in ([3600.0, 600.0], [600.0])


def test_an_extension_makes_warnings_for_the_new_end_but_not_past_ones() -> None:
    r = booking(1, "dora", ("a",), 0, 2, "active")
    made = extension_timers(r, at(2.5), SETTINGS, now=at(1.75))
    assert [(t.kind.value, t.due_at, t.lead) for t in made] == [
        ("warn", at(2.5) - timedelta(minutes=10), 600.0),  # the 1 h one would be at 1.5: past
        ("end", at(2.5), 0.0),
    ]


# (kind, state, now in hours; the reservation runs 0 → 2) → verdict
VERDICTS = [
    ("start", "scheduled", 0, Verdict.START),
    ("start", "scheduled", 1.9, Verdict.START),  # late, but there is time left: start
    ("start", "scheduled", 2, Verdict.MISS),  # the manager was down the whole time
    ("end", "scheduled", 2.5, Verdict.MISS),
    ("warn", "scheduled", 1, Verdict.SKIP),
    ("start", "cancelled", 0, Verdict.SKIP),
    ("start", "active", 0.1, Verdict.SKIP),  # started already (replayed after a crash)
    ("warn", "active", 1, Verdict.WARN),
    ("warn", "active", 1.99, Verdict.WARN),
    ("warn", "active", 2, Verdict.SKIP),  # past the end: no warning, the end comes
    ("unused", "active", 0.5, Verdict.CHECK_USE),
    ("end", "active", 2, Verdict.END),
    ("end", "active", 1.5, Verdict.SKIP),  # extended meanwhile: a newer end timer exists
    ("end", "ending", 2.2, Verdict.END),  # a release interrupted by a crash goes on
    ("finish", "ending", 2.2, Verdict.FINISH),
    ("warn", "ending", 1.9, Verdict.SKIP),  # released early
    ("unused", "ending", 1, Verdict.SKIP),
    ("end", "released", 2, Verdict.SKIP),
    ("finish", "released", 3, Verdict.SKIP),
]


@pytest.mark.parametrize(("kind", "state", "now", "expected"), VERDICTS)
def test_what_a_due_timer_means(kind: str, state: str, now: float, expected: Verdict) -> None:
    assert verdict(kind, booking(1, "dora", ("a",), 0, 2, state), at(now)) is expected


def test_an_unused_check_after_use_is_skipped() -> None:
    used = booking(1, "dora", ("a",), 0, 2, "active", used=0.2)
    assert verdict("unused", used, at(0.5)) is Verdict.SKIP


@pytest.mark.parametrize(
    ("used", "started", "activity", "unused"),
    [
        (None, 0, None, True),
        (None, 0, -0.5, True),  # a login before the start does not count
        (None, 0, 0, True),  # nor the call that booked it (it came first)
        (None, 0, 0.1, False),
        (None, 0.2, 0.1, True),  # started late (manager down): activity before that is old
        (0.3, 0, None, False),
    ],
)
def test_unused(used: float | None, started: float, activity: float | None, unused: bool) -> None:
    r = booking(1, "dora", ("a",), 0, 2, "active", used=used, started=started)
    assert is_unused(r, at(activity) if activity is not None else None) is unused


# Nodes and messages --------------------------------------------------------------------------

S = NodeState


@pytest.mark.parametrize(
    ("current", "target", "path"),
    [
        (S.READY, S.ALLOCATED, [S.ALLOCATED]),
        (S.ALLOCATED, S.ALLOCATED, []),
        (S.DEPLOYED, S.ALLOCATED, [S.RELEASING, S.READY, S.ALLOCATED]),
        (S.ALLOCATED, S.READY, [S.RELEASING, S.READY]),
        (S.DEPLOYED, S.READY, [S.RELEASING, S.READY]),
        (S.FAILED_DEPLOYMENT, S.READY, [S.READY]),
        (S.RELEASING, S.ALLOCATED, [S.READY, S.ALLOCATED]),
        (S.BROKEN, S.READY, None),  # an operator's decision, never the reservation's
        (S.LOST, S.ALLOCATED, None),
        (S.NEW, S.READY, None),
        (S.DEPLOYING, S.READY, None),  # the deploy engine owns it
    ],
)
def test_node_paths(current: NodeState, target: NodeState, path: list[NodeState] | None) -> None:
    assert path_to(current.value, target) == path


def test_the_warning_says_what_ends_when_and_how_to_keep_it() -> None:
    r = booking(12, "dora", ("rack1-01", "rack1-02"), 0, 2, "active")
    title, body = warning_text(r, 600.0, at(2) - timedelta(minutes=10), "power_off", "http://pm")
    assert title == "piman: reservation 12 ends in 10 min"
    assert "your reservation 12 of rack1-01, rack1-02 ends at 2026-12-06 14:00 UTC." in body
    assert "the nodes are powered off" in body
    assert "piman extend 12 --by 1h" in body
    assert "late" not in body
    _, late = warning_text(r, 3600.0, at(1.5), "redeploy", None)
    assert "late: the manager was down" in late
    assert "reinstalled" in late


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ({"warnings": [0]}, "more than 0 s before the end"),
        ({"unused_after": 0}, "never release an unused one"),
        ({"release": "wipe"}, "'power_off', 'redeploy' or 'none'"),
        ({"notify": ["slack://a/b/c"]}, "a slack:// URL cannot reach an owner's address"),
        ({"limits": {"max_nodes": 0}}, "greater than or equal to 1"),
        ({"limits": {"max_total": "0s"}}, "or null for no limit"),
        ({"buffer": "soon"}, "is not a duration"),
    ],
)
def test_bad_settings_say_what_is_expected(bad: dict[str, object], says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        ReservationSettings.model_validate(bad)


def test_selection_defaults_and_settings() -> None:
    assert check_selection(NodeSelection(model="pi4")).count == 1
    assert ReservationSettings.model_validate({"warnings": ["10m", "1h", "10m"]}).warnings == [
        3600.0,
        600.0,
    ]
    mine = ReservationSettings.model_validate({"notify": ["mailtos://u:p@smtp?from=a@b"]})
    assert owner_mail_url(mine, ["mailto://x"]) == "mailtos://u:p@smtp?from=a@b"
    assert owner_mail_url(ReservationSettings(), ["slack://t", "mailto://x"]) == "mailto://x"
    assert owner_mail_url(ReservationSettings(), ["slack://t"]) is None
