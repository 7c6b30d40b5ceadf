"""The node lifecycle transition table (DESIGN.md §3)."""

from __future__ import annotations

import itertools

import pytest

from piman.fleet import TRANSITIONS, IllegalTransition, NodeState, check_transition

S = NodeState

HAPPY_PATH = [S.NEW, S.READY, S.ALLOCATED, S.DEPLOYING, S.DEPLOYED, S.RELEASING, S.READY]


def test_every_state_has_a_row() -> None:
    assert set(TRANSITIONS) == set(NodeState)


def test_the_maas_happy_path_is_allowed() -> None:
    for current, target in itertools.pairwise(HAPPY_PATH):
        assert check_transition(current, target) is target


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (S.NEW, S.DEPLOYED),
        (S.READY, S.DEPLOYED),
        (S.DEPLOYING, S.READY),
        (S.BROKEN, S.DEPLOYING),
        (S.RELEASING, S.ALLOCATED),
    ],
)
def test_shortcuts_are_refused_with_the_allowed_moves(
    current: NodeState, target: NodeState
) -> None:
    with pytest.raises(IllegalTransition) as info:
        check_transition(current, target)
    assert f"cannot go from {current} to {target}" in str(info.value)
    assert "allowed:" in str(info.value)


def test_failures_can_be_retried_or_quarantined() -> None:
    assert check_transition(S.DEPLOYING, S.FAILED_DEPLOYMENT) is S.FAILED_DEPLOYMENT
    assert check_transition(S.FAILED_DEPLOYMENT, S.DEPLOYING) is S.DEPLOYING
    assert check_transition(S.FAILED_DEPLOYMENT, S.BROKEN) is S.BROKEN
    assert check_transition(S.BROKEN, S.READY) is S.READY


def test_every_state_can_reach_ready_again() -> None:
    for start in NodeState:
        seen, frontier = {start}, [start]
        while frontier:
            for nxt in TRANSITIONS[frontier.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    frontier.append(nxt)
        assert S.READY in seen or start is S.READY, start
