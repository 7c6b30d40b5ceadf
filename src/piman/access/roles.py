"""Roles and what each may do: the whole access matrix, as data (pure).

======================  =====  ====  ========  =====
action                  admin  user  operator  viewer
======================  =====  ====  ========  =====
``read`` (fleet, API)   yes    own*  yes       yes
``power``, ``deploy``   yes    own*  yes       no
``reserve``             yes    yes   yes       no
``silence``             yes    no    yes       no
``admin`` (accounts)    yes    no    no        no
``self`` (own tokens)   yes    yes   yes       yes
======================  =====  ====  ========  =====

``*`` A ``user`` reads, powers and deploys only the nodes they hold: those of their *active*
reservations (:mod:`piman.access.reservations_service` answers ``holds``). Every signed-in
principal sees the fleet's availability (who holds what, until when) so that they can reserve;
operators and admins see, extend and end any reservation.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

__all__ = ["ACTIONS", "MATRIX", "Action", "Role", "allows", "may_act_on", "parse_role"]


class Role(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    USER = "user"
    VIEWER = "viewer"


class Action(StrEnum):
    READ = "read"
    POWER = "power"
    DEPLOY = "deploy"
    RESERVE = "reserve"
    SILENCE = "silence"
    ADMIN = "admin"
    SELF = "self"


ACTIONS = tuple(Action)

MATRIX: Mapping[Role, frozenset[Action]] = {
    Role.ADMIN: frozenset(Action),
    Role.OPERATOR: frozenset(
        {Action.READ, Action.POWER, Action.DEPLOY, Action.RESERVE, Action.SILENCE, Action.SELF}
    ),
    Role.USER: frozenset({Action.RESERVE, Action.SELF}),
    Role.VIEWER: frozenset({Action.READ, Action.SELF}),
}

# What a user may do on a node they hold (an active reservation of theirs).
_ON_HELD: frozenset[Action] = frozenset({Action.READ, Action.POWER, Action.DEPLOY})


def parse_role(value: str) -> Role:
    """The role named ``value``; ValueError that lists the roles."""
    try:
        return Role(value.strip().lower())
    except ValueError:
        names = ", ".join(r.value for r in Role)
        raise ValueError(f"{value!r} is not a role (expected one of {names})") from None


def allows(role: str, action: Action) -> bool:
    """True when ``role`` may do ``action`` on anything (fleet-wide)."""
    try:
        return action in MATRIX[Role(role)]
    except ValueError:
        return False  # a role this version does not know grants nothing


def may_act_on(role: str, action: Action, *, holds: bool) -> bool:
    """True when ``role`` may do ``action`` on one node, ``holds`` saying whether the principal
    holds that node (an active reservation of theirs)."""
    if allows(role, action):
        return True
    return role == Role.USER and holds and action in _ON_HELD
