"""The self-healing ladder (piman.inventory.healing), driven through Healer.tick as tables of
(time, what is down) → actions."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from piman.config.healing import HealingPolicy, HealingSettings
from piman.inventory.healing import (
    TRANSITIONS,
    Action,
    Cycle,
    Healer,
    Hold,
    NodeView,
    Noticed,
    Quarantine,
    Recovered,
    Reinstall,
    Released,
    Step,
    Unhold,
    replay,
)

MIN = 60.0


def healer(
    *,
    cycles: int = 2,
    reinstall: bool = True,
    max_concurrent: int = 2,
    max_fraction: float = 0.5,
) -> Healer:
    policy = HealingPolicy(
        name="racks",
        down_for=5 * MIN,
        cycles=cycles,
        cycle_wait=3 * MIN,
        reinstall=reinstall,
        reinstall_wait=30 * MIN,
    )
    return Healer(
        HealingSettings(max_concurrent=max_concurrent, max_fraction=max_fraction, policies=[policy])
    )


def views(down: Sequence[str], *, nodes: Sequence[str] = ("a",), **extra: object) -> list[NodeView]:
    """Every node of ``nodes`` on switch rack1 (``x…`` nodes on rack2), down when named."""
    out = []
    for name in nodes:
        switch = "rack2" if name.startswith("x") else "rack1"
        fields = {"switch": switch, "down": name in down, **extra.get(name, {})}  # type: ignore[dict-item]
        out.append(NodeView(name, "racks", **fields))  # type: ignore[arg-type]
    return out


def walk(
    h: Healer, table: Sequence[tuple[float, Sequence[str], list[Action]]], **kw: object
) -> None:
    for at, down, expected in table:
        assert h.tick(views(down, **kw), at) == expected, f"at {at / MIN:g} min"  # type: ignore[arg-type]


def test_every_step_has_a_row_and_broken_only_leaves_to_ok() -> None:
    assert set(TRANSITIONS) == set(Step)
    assert TRANSITIONS[Step.BROKEN] == {Step.OK}
    assert all(Step.OK in TRANSITIONS[s] for s in Step if s is not Step.OK)


def test_the_whole_ladder_cycles_twice_then_reinstalls_then_quarantines() -> None:
    h = healer()
    walk(
        h,
        [
            (0, ["a"], [Noticed("a", "racks")]),
            (4 * MIN, ["a"], []),  # not down long enough
            (5 * MIN, ["a"], [Cycle("a", 1, 2)]),
            (7 * MIN, ["a"], []),  # waiting for the cycle
            (8 * MIN, ["a"], [Cycle("a", 2, 2)]),
            (11 * MIN, ["a"], [Reinstall("a")]),
            (40 * MIN, ["a"], []),
            (41 * MIN, ["a"], [Quarantine("a", "still down 30 min after its reinstall")]),
        ],
    )
    assert h.step("a") is Step.BROKEN


@pytest.mark.parametrize(
    ("up_at", "step"),
    [
        (3 * MIN, Step.DOWN),
        (6 * MIN, Step.CYCLING),  # after the first cycle
        (9 * MIN, Step.CYCLING),  # after the second
        (20 * MIN, Step.REINSTALLING),
    ],
)
def test_a_node_up_again_at_any_step_is_ok_and_starts_from_the_bottom(
    up_at: float, step: Step
) -> None:
    h = healer()
    for t in range(0, int(up_at), 30):
        h.tick(views(["a"]), float(t))
    assert h.step("a") is step
    assert h.tick(views([]), up_at) == [Recovered("a", step, up_at)]
    assert h.step("a") is Step.OK
    # Down again: the ladder starts over (down_for again, then cycle 1).
    assert h.tick(views(["a"]), up_at + MIN) == [Noticed("a", "racks")]
    assert h.tick(views(["a"]), up_at + 6 * MIN) == [Cycle("a", 1, 2)]


@pytest.mark.parametrize(
    ("cycles", "reinstall", "no_reinstall", "last"),
    [
        (
            1,
            False,
            None,
            Quarantine("a", "down after 1 power cycle; the policy does not reinstall"),
        ),
        (
            1,
            True,
            "alice holds it (active reservation)",
            Quarantine(
                "a",
                "down after 1 power cycle; not reinstalled: alice holds it (active reservation)",
            ),
        ),
        (1, True, None, Reinstall("a")),
        (0, True, None, Reinstall("a")),
        (
            0,
            False,
            None,
            Quarantine("a", "down after 0 power cycles; the policy does not reinstall"),
        ),
    ],
)
def test_after_the_cycles_a_reinstall_or_quarantine_as_policy_and_node_allow(
    cycles: int, reinstall: bool, no_reinstall: str | None, last: Action
) -> None:
    h = healer(cycles=cycles, reinstall=reinstall)
    extra = {"a": {"no_reinstall": no_reinstall}}
    h.tick(views(["a"], **extra), 0)
    at = 5 * MIN
    if cycles:
        assert h.tick(views(["a"], **extra), at) == [Cycle("a", 1, 1)]
        at += 3 * MIN
    assert h.tick(views(["a"], **extra), at) == [last]


def test_a_reinstall_that_cannot_start_quarantines_at_once() -> None:
    h = healer(cycles=0)
    h.tick(views(["a"]), 0)
    assert h.tick(views(["a"]), 5 * MIN) == [Reinstall("a")]
    assert h.reinstall_failed("a", "no environment", 5 * MIN) == [
        Quarantine("a", "the reinstall could not start: no environment")
    ]
    assert h.step("a") is Step.BROKEN
    assert h.reinstall_failed("a", "again", 6 * MIN) == []


def test_a_broken_node_made_ready_by_an_operator_is_released_and_watched_again() -> None:
    h = healer(cycles=0, reinstall=False)
    h.tick(views(["a"]), 0)
    assert h.tick(views(["a"]), 5 * MIN)[0] == Quarantine(
        "a", "down after 0 power cycles; the policy does not reinstall"
    )
    # The service now sees it broken in the store (and no longer scraped: not down).
    assert h.tick(views([], a={"broken": True}), 6 * MIN) == []
    assert h.tick(views([], a={"broken": True}), 60 * MIN) == []
    assert h.tick(views([]), 61 * MIN) == [Released("a")]
    assert h.tick(views(["a"]), 62 * MIN) == [Noticed("a", "racks")]


def test_a_node_left_alone_is_forgotten_without_a_word() -> None:
    h = healer()
    h.tick(views(["a"]), 0)
    assert h.tick(views(["a"], a={"leave_alone": "powered off"}), 10 * MIN) == []
    assert h.step("a") is Step.OK
    assert h.tick(views(["a"]), 11 * MIN) == [Noticed("a", "racks")]


def test_one_node_heals_at_a_time_with_max_concurrent_1_oldest_first() -> None:
    h = healer(max_concurrent=1, cycles=1, reinstall=False)
    nodes = tuple("abcdefgh")  # 3 of 8 down: no mass failure
    walk(
        h,
        [
            (0, ["b"], [Noticed("b", "racks")]),
            (MIN, ["a", "b", "c"], [Noticed("a", "racks"), Noticed("c", "racks")]),
            (6 * MIN, ["a", "b", "c"], [Cycle("b", 1, 1)]),  # b was down first
            (7 * MIN, ["a", "b", "c"], []),  # a and c wait for the slot
            # b's cycle did not help: quarantined, its slot goes to a (a before c: same time,
            # first seen first).
            (
                9 * MIN,
                ["a", "b", "c"],
                [
                    Quarantine("b", "down after 1 power cycle; the policy does not reinstall"),
                    Cycle("a", 1, 1),
                ],
            ),
        ],
        nodes=nodes,
    )
    # a is back; b is broken in the store now: c gets the slot.
    later = views(["c"], nodes=nodes, b={"broken": True})
    assert h.tick(later, 10 * MIN) == [Recovered("a", Step.CYCLING, 9 * MIN), Cycle("c", 1, 1)]
    assert h.healing() == ["c"]


def test_max_concurrent_2_heals_two_and_keeps_the_slot_through_the_ladder() -> None:
    h = healer(max_concurrent=2, cycles=1)
    nodes = tuple("abcdefgh")
    walk(
        h,
        [
            (0, ["a", "b", "c"], [Noticed(n, "racks") for n in "abc"]),
            (5 * MIN, ["a", "b", "c"], [Cycle("a", 1, 1), Cycle("b", 1, 1)]),
            (8 * MIN, ["a", "b", "c"], [Reinstall("a"), Reinstall("b")]),  # c still waits
        ],
        nodes=nodes,
    )
    assert sorted(h.healing()) == ["a", "b"]


def test_a_whole_switch_down_is_held_not_healed_and_said_once() -> None:
    h = healer(max_fraction=0.5)
    nodes = ("a", "b", "c", "d", "x1", "x2", "x3", "x4")
    rack1 = ["a", "b", "c", "d"]
    hold = Hold("racks", "switch:rack1", 4, 4, ("a", "b", "c", "d"))
    walk(
        h,
        [
            # 4 of 8 is not more than half the group, but all of rack1 is down.
            (0, rack1, [*(Noticed(n, "racks") for n in rack1), hold]),
            (10 * MIN, rack1, []),  # nothing cycled, nothing said again
            (60 * MIN, rack1, []),
            # The switch is back: everyone recovers, the hold ends.
            (
                61 * MIN,
                [],
                [
                    *(Recovered(n, Step.DOWN, 61 * MIN) for n in rack1),
                    Unhold("racks", "switch:rack1"),
                ],
            ),
        ],
        nodes=nodes,
    )


def test_more_than_the_fraction_of_the_group_down_holds_the_group() -> None:
    h = healer(max_fraction=0.25)
    nodes = ("a", "b", "x1", "x2", "x3", "x4", "x5", "x6")  # a on rack1, x1..x2 on rack2
    down = ["a", "x1", "x2"]  # 3 of 8 > 25 %; rack2: 2 of 6 > 25 % too
    actions = h.tick(views(down, nodes=nodes), 0)
    holds = [a for a in actions if isinstance(a, Hold)]
    assert {(a.scope, a.down, a.total) for a in holds} == {("group", 3, 8), ("switch:rack2", 2, 6)}
    assert h.tick(views(down, nodes=nodes), 30 * MIN) == []
    # x2 comes back: 2 of 8 is not more than 25 %, but rack2 still is (2 of 6: x1, x3).
    actions = h.tick(views(["a", "x1", "x3"], nodes=nodes), 31 * MIN)
    assert Unhold("racks", "group") not in actions  # 3 of 8 still
    actions = h.tick(views(["a", "x1", "x3"], nodes=nodes), 32 * MIN)
    # a (rack1, alone) is healed once the group is no longer held; rack2's are not.
    actions = h.tick(views(["a", "x1"], nodes=nodes), 33 * MIN)
    assert Unhold("racks", "group") in actions
    assert Unhold("racks", "switch:rack2") in actions
    assert Cycle("a", 1, 2) in actions


def test_a_single_node_down_is_never_a_mass_failure() -> None:
    h = healer(max_fraction=0.1)
    walk(
        h,
        [(0, ["a"], [Noticed("a", "racks")]), (5 * MIN, ["a"], [Cycle("a", 1, 2)])],
        nodes=("a", "b"),
    )


def test_nodes_of_no_policy_are_ignored() -> None:
    h = healer()
    assert h.tick([NodeView("z", "other", down=True)], 0) == []
    assert h.step("z") is Step.OK


def test_replayed_audit_lines_resume_each_ladder_where_it_was() -> None:
    lines = [
        ("a", "healing.down", 0.0),
        ("b", "healing.down", 0.0),
        ("c", "healing.down", 0.0),
        ("a", "healing.cycle", 5 * MIN),
        ("b", "healing.cycle", 5 * MIN),
        ("b", "healing.recovered", 6 * MIN),  # b's ladder is over
        ("c", "healing.cycle", 5 * MIN),
        ("c", "healing.cycle", 8 * MIN),
        ("c", "healing.reinstall", 11 * MIN),
        ("d", "healing.cycle", 5 * MIN),  # no down line before: ignored
    ]
    entries = replay(lines)
    assert {n: (e.step, e.cycles, e.since) for n, e in entries.items()} == {
        "a": (Step.CYCLING, 1, 5 * MIN),
        "c": (Step.REINSTALLING, 2, 11 * MIN),
    }
    h = healer()
    h.resume(entries)
    nodes = ("a", "b", "c", "d", "e", "f", "g", "h")
    # Still down after the restart: a gets its second cycle when the first one's wait is over,
    # c is quarantined when its reinstall's is; b starts over.
    assert h.tick(views(["a", "b", "c"], nodes=nodes), 7 * MIN) == [Noticed("b", "racks")]
    assert h.tick(views(["a", "b", "c"], nodes=nodes), 8 * MIN) == [Cycle("a", 2, 2)]
    actions = h.tick(views(["a", "b", "c"], nodes=nodes), 41 * MIN)
    assert Quarantine("c", "still down 30 min after its reinstall") in actions
