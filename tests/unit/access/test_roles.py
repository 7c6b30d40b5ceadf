"""The access matrix, walked as a table: every role against every action."""

from __future__ import annotations

import pytest

from piman.access.roles import Action, Role, allows, may_act_on, parse_role

# What each role may do fleet-wide (the matrix; a user acts on held nodes only).
EXPECTED = {
    Role.ADMIN: {"read", "power", "deploy", "reserve", "silence", "admin", "self"},
    Role.OPERATOR: {"read", "power", "deploy", "reserve", "silence", "self"},
    Role.VIEWER: {"read", "self"},
    Role.USER: {"reserve", "self"},
}


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("action", list(Action))
def test_matrix(role: Role, action: Action) -> None:
    assert allows(role.value, action) is (action.value in EXPECTED[role])


def test_a_user_acts_only_on_nodes_they_hold() -> None:
    for action in (Action.READ, Action.POWER, Action.DEPLOY):
        assert may_act_on("user", action, holds=True)
        assert not may_act_on("user", action, holds=False)
    assert not may_act_on("user", Action.SILENCE, holds=True)
    assert not may_act_on("user", Action.ADMIN, holds=True)
    assert not may_act_on("viewer", Action.POWER, holds=True)  # holding is for users only
    assert may_act_on("operator", Action.POWER, holds=False)


def test_an_unknown_role_grants_nothing() -> None:
    assert not any(allows("root", a) for a in Action)
    assert not may_act_on("root", Action.READ, holds=True)


def test_role_names_parse_and_bad_ones_say_what_is_expected() -> None:
    assert parse_role(" Operator ") is Role.OPERATOR
    with pytest.raises(ValueError, match="expected one of admin, operator, user, viewer"):
        parse_role("superuser")
