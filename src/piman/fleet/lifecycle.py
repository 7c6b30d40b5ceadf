"""Node lifecycle states and the transitions between them (DESIGN.md §3).

Theory of operation: a node is ``new`` when first seen (discovered on the wire), ``ready`` once it
is declared in the configuration or accepted by an operator, ``allocated`` when a user reserves it,
``deploying`` while the deploy engine writes an image, ``deployed`` after, ``releasing`` on its way
back to ``ready``. ``failed_deployment``, ``broken`` and ``lost`` are the failure states. Every
allowed move is in :data:`TRANSITIONS`; :func:`check_transition` is the only gate.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["TRANSITIONS", "IllegalTransition", "NodeState", "PowerState", "check_transition"]


class NodeState(StrEnum):
    NEW = "new"
    READY = "ready"
    ALLOCATED = "allocated"
    DEPLOYING = "deploying"
    DEPLOYED = "deployed"
    RELEASING = "releasing"
    FAILED_DEPLOYMENT = "failed_deployment"
    BROKEN = "broken"
    LOST = "lost"


class PowerState(StrEnum):
    """What the manager last knew of a node's power."""

    ON = "on"
    OFF = "off"
    UNKNOWN = "unknown"


S = NodeState
TRANSITIONS: dict[NodeState, frozenset[NodeState]] = {
    S.NEW: frozenset({S.READY, S.BROKEN, S.LOST}),
    S.READY: frozenset({S.ALLOCATED, S.DEPLOYING, S.BROKEN, S.LOST}),
    S.ALLOCATED: frozenset({S.DEPLOYING, S.RELEASING, S.BROKEN, S.LOST}),
    S.DEPLOYING: frozenset({S.DEPLOYED, S.FAILED_DEPLOYMENT, S.BROKEN}),
    S.DEPLOYED: frozenset({S.DEPLOYING, S.RELEASING, S.BROKEN, S.LOST}),
    S.RELEASING: frozenset({S.READY, S.BROKEN}),
    S.FAILED_DEPLOYMENT: frozenset({S.DEPLOYING, S.READY, S.BROKEN}),
    S.BROKEN: frozenset({S.READY}),
    S.LOST: frozenset({S.READY, S.BROKEN, S.DEPLOYED}),
}
del S


class IllegalTransition(ValueError):
    """A move the lifecycle does not allow."""

    def __init__(self, current: NodeState, target: NodeState) -> None:
        allowed = ", ".join(sorted(TRANSITIONS[current])) or "none"
        super().__init__(f"cannot go from {current} to {target} (allowed: {allowed})")
        self.current = current
        self.target = target


def check_transition(current: NodeState, target: NodeState) -> NodeState:
    """Return ``target`` if ``current → target`` is allowed, else raise IllegalTransition."""
    if target not in TRANSITIONS[current]:
        raise IllegalTransition(current, target)
    return target
