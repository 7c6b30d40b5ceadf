"""The self-healing ladder, pure: views of the nodes and the time in, actions out.

Theory of operation
-------------------
Each node a policy covers (:class:`NodeView`, built by the service from the alerts, the store
and the config) climbs a ladder while it is down and falls back to the bottom as soon as it is
not::

    ok ──down──▶ down ──down_for──▶ cycling 1..N ──cycle_wait each──▶ reinstalling
                                                                   ──reinstall_wait──▶ broken

- ``down`` (since ``t``): nothing is done until the node has been down for the policy's
  ``down_for``. Then, when a healing slot is free, the first rung: a power cycle
  (:class:`Cycle`), or the reinstall when ``cycles`` is 0, or quarantine.
- ``cycling`` (``n`` of ``N``): after each cycle the node has ``cycle_wait`` to come back; then
  the next cycle, and after the last one the reinstall (:class:`Reinstall`) when the policy
  has ``reinstall: true`` and the node may be reinstalled (it has an environment, and no active
  reservation forbids it: :attr:`NodeView.no_reinstall` says why not), else quarantine.
- ``reinstalling``: the reinstall has ``reinstall_wait``; still down then (or the reinstall
  could not start, :meth:`Healer.reinstall_failed`): ``broken`` (:class:`Quarantine`).
- ``broken``: left alone until an operator takes the node out of ``broken`` in the store; then
  it is back at ``ok`` (:class:`Released`).

A node that is up again at any step is ``ok`` (:class:`Recovered`); one the service says to
leave alone (powered off on purpose, deploying for someone else) is forgotten silently.

**Slots.** At most ``max_concurrent`` nodes are ``cycling`` or ``reinstalling`` at once, over
every policy. A node keeps its slot from its first cycle to ``broken`` or recovery; the nodes
waiting for one are served oldest-down first.

**Mass failures.** When more than ``max_fraction`` of a policy's group, or of the group's nodes
on one switch, is down at once (and at least :data:`MASS_MINIMUM` nodes), that is a switch or
uplink failure, not a set of sick Pis: the ladder of every node of that scope stops where it is
(no cycle, reinstall or quarantine) and :class:`Hold` is returned once, :class:`Unhold` once it
is over.

Every move of a node's step is in :data:`TRANSITIONS`; :meth:`Healer.tick` never makes another.

**Restarts.** The service writes every step to the audit log; :func:`replay` reads those lines
back into ladders (:meth:`Healer.resume`), so a manager restarted mid-heal goes on where it was
instead of starting each ladder over.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from piman.config.healing import HealingPolicy, HealingSettings

__all__ = [
    "MASS_MINIMUM",
    "TRANSITIONS",
    "Action",
    "Cycle",
    "Entry",
    "Healer",
    "Hold",
    "NodeView",
    "Noticed",
    "Quarantine",
    "Recovered",
    "Reinstall",
    "Released",
    "Step",
    "Unhold",
    "replay",
]

MASS_MINIMUM = 2  # a single node down is never a mass failure


class Step(StrEnum):
    OK = "ok"
    DOWN = "down"
    CYCLING = "cycling"
    REINSTALLING = "reinstalling"
    BROKEN = "broken"


S = Step
TRANSITIONS: dict[Step, frozenset[Step]] = {
    S.OK: frozenset({S.DOWN, S.BROKEN}),
    S.DOWN: frozenset({S.OK, S.CYCLING, S.REINSTALLING, S.BROKEN}),
    S.CYCLING: frozenset({S.OK, S.CYCLING, S.REINSTALLING, S.BROKEN}),
    S.REINSTALLING: frozenset({S.OK, S.BROKEN}),
    S.BROKEN: frozenset({S.OK}),
}
del S

HEALING = frozenset({Step.CYCLING, Step.REINSTALLING})  # the steps that hold a slot


@dataclass(frozen=True, slots=True)
class NodeView:
    """One node under a policy, as the service sees it now."""

    name: str
    policy: str
    switch: str | None = None
    down: bool = False
    broken: bool = False  # its lifecycle state in the store is ``broken``
    leave_alone: str | None = None  # why the policy must not touch it now (powered off …)
    no_reinstall: str | None = None  # why it may not be reinstalled (None: it may)


@dataclass(slots=True)
class Entry:
    """Where a node stands on the ladder."""

    policy: str
    step: Step
    since: float  # when it entered this step
    down_since: float
    cycles: int = 0  # power cycles done


# Actions -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Noticed:
    node: str
    policy: str


@dataclass(frozen=True, slots=True)
class Cycle:
    node: str
    n: int
    of: int


@dataclass(frozen=True, slots=True)
class Reinstall:
    node: str


@dataclass(frozen=True, slots=True)
class Quarantine:
    node: str
    reason: str


@dataclass(frozen=True, slots=True)
class Recovered:
    node: str
    step: Step  # where it was
    down_for: float  # seconds it had been down


@dataclass(frozen=True, slots=True)
class Released:
    node: str  # no longer broken in the store


@dataclass(frozen=True, slots=True)
class Hold:
    policy: str
    scope: str  # ``group`` or ``switch:<name>``
    down: int
    total: int
    nodes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Unhold:
    policy: str
    scope: str


Action = Noticed | Cycle | Reinstall | Quarantine | Recovered | Released | Hold | Unhold


class Healer:
    """The ladders of every node and the guards (module doc). Not thread-safe; one service."""

    def __init__(self, settings: HealingSettings) -> None:
        self.settings = settings
        self.policies: dict[str, HealingPolicy] = {p.name: p for p in settings.policies}
        self.entries: dict[str, Entry] = {}
        self.held: dict[tuple[str, str], Hold] = {}

    def resume(self, entries: dict[str, Entry]) -> None:
        """Ladders read back from the audit log (:func:`replay`), before the first tick."""
        for node, entry in entries.items():
            self.entries.setdefault(node, entry)

    def healing(self) -> list[str]:
        """The nodes that hold a slot now (cycling or reinstalling)."""
        return [n for n, e in self.entries.items() if e.step in HEALING]

    def step(self, node: str) -> Step:
        entry = self.entries.get(node)
        return entry.step if entry is not None else Step.OK

    def _move(self, entry: Entry, step: Step, now: float) -> None:
        if step not in TRANSITIONS[entry.step]:  # a bug here, not bad input
            raise AssertionError(f"healing: {entry.step} → {step} is not in TRANSITIONS")
        entry.step = step
        entry.since = now

    # -- one look at the fleet ------------------------------------------------------------

    def tick(self, views: Iterable[NodeView], now: float) -> list[Action]:
        """Advance every ladder to ``now``; what to do, in order."""
        actions: list[Action] = []
        views = [v for v in views if v.policy in self.policies]
        seen = {v.name for v in views}
        for name in [n for n in self.entries if n not in seen]:
            del self.entries[name]  # no longer under a policy
        for view in views:
            actions += self._observe(view, now)
        held_nodes, guard_actions = self._guard(views)
        actions += guard_actions
        actions += self._climb({v.name: v for v in views}, held_nodes, now)
        return actions

    def _observe(self, view: NodeView, now: float) -> list[Action]:
        entry = self.entries.get(view.name)
        if entry is not None:
            entry.policy = view.policy  # a resumed ladder, or a policy renamed
        if view.broken:
            if entry is None:
                self.entries[view.name] = Entry(view.policy, Step.BROKEN, now, now)
            elif entry.step is not Step.BROKEN:
                self._move(entry, Step.BROKEN, now)  # quarantined by someone else
            return []
        if entry is not None and entry.step is Step.BROKEN:
            del self.entries[view.name]
            return [Released(view.name)]
        if view.leave_alone is not None:
            if entry is not None and entry.step is not Step.REINSTALLING:
                del self.entries[view.name]
            return []
        if not view.down:
            if entry is None:
                return []
            del self.entries[view.name]
            return [Recovered(view.name, entry.step, now - entry.down_since)]
        if entry is None:
            self.entries[view.name] = Entry(view.policy, Step.DOWN, now, now)
            return [Noticed(view.name, view.policy)]
        return []

    def _guard(self, views: Sequence[NodeView]) -> tuple[set[str], list[Action]]:
        """The scopes with too many nodes down: their nodes, and Hold/Unhold for changes."""
        limit = self.settings.max_fraction
        scopes: dict[tuple[str, str], list[NodeView]] = {}
        for v in views:
            if v.broken:
                continue
            scopes.setdefault((v.policy, "group"), []).append(v)
            if v.switch is not None:
                scopes.setdefault((v.policy, f"switch:{v.switch}"), []).append(v)
        held: set[str] = set()
        actions: list[Action] = []
        now_held: dict[tuple[str, str], Hold] = {}
        for key, members in scopes.items():
            down = [v.name for v in members if v.down and v.leave_alone is None]
            if len(down) >= MASS_MINIMUM and len(down) > limit * len(members):
                hold = Hold(key[0], key[1], len(down), len(members), tuple(down))
                now_held[key] = hold
                held.update(v.name for v in members)
                if key not in self.held:
                    actions.append(hold)
        actions += [Unhold(*key) for key in self.held if key not in now_held]
        self.held = now_held
        return held, actions

    def _climb(self, views: dict[str, NodeView], held: set[str], now: float) -> list[Action]:
        actions: list[Action] = []
        busy = len(self.healing())
        # Those holding a slot first (their next rung needs none), then the oldest down.
        order = sorted(
            ((n, e) for n, e in self.entries.items() if n in views and n not in held),
            key=lambda item: (item[1].step not in HEALING, item[1].down_since),
        )
        for node, entry in order:
            policy = self.policies[entry.policy]
            view = views[node]
            if entry.step is Step.DOWN:
                if now - entry.down_since < policy.down_for:
                    continue
                rung = self._next_rung(node, entry, policy, view, now, take_slot=busy)
                if entry.step in HEALING:
                    busy += 1
                actions += rung
            elif entry.step is Step.CYCLING:
                if now - entry.since < policy.cycle_wait:
                    continue
                actions += self._next_rung(node, entry, policy, view, now, take_slot=None)
                if entry.step not in HEALING:
                    busy -= 1
            elif entry.step is Step.REINSTALLING:
                if now - entry.since < policy.reinstall_wait:
                    continue
                self._move(entry, Step.BROKEN, now)
                busy -= 1
                minutes = policy.reinstall_wait / 60
                actions.append(Quarantine(node, f"still down {minutes:g} min after its reinstall"))
        return actions

    def _next_rung(
        self,
        node: str,
        entry: Entry,
        policy: HealingPolicy,
        view: NodeView,
        now: float,
        *,
        take_slot: int | None,
    ) -> list[Action]:
        """The rung after the current one. ``take_slot``: the slots in use, for a node that
        needs a free one to start (None: it holds one already)."""
        full = take_slot is not None and take_slot >= self.settings.max_concurrent
        if entry.cycles < policy.cycles:
            if full:
                return []
            entry.cycles += 1
            self._move(entry, Step.CYCLING, now)
            return [Cycle(node, entry.cycles, policy.cycles)]
        done = f"down after {entry.cycles} power cycle{'s' if entry.cycles != 1 else ''}"
        if not policy.reinstall:
            self._move(entry, Step.BROKEN, now)
            return [Quarantine(node, f"{done}; the policy does not reinstall")]
        if view.no_reinstall is not None:
            self._move(entry, Step.BROKEN, now)
            return [Quarantine(node, f"{done}; not reinstalled: {view.no_reinstall}")]
        if full:
            return []
        self._move(entry, Step.REINSTALLING, now)
        return [Reinstall(node)]

    def reinstall_failed(self, node: str, why: str, now: float) -> list[Action]:
        """The reinstall of ``node`` could not start: quarantine it now."""
        entry = self.entries.get(node)
        if entry is None or entry.step is not Step.REINSTALLING:
            return []
        self._move(entry, Step.BROKEN, now)
        return [Quarantine(node, f"the reinstall could not start: {why}")]


def replay(events: Iterable[tuple[str, str, float]]) -> dict[str, Entry]:
    """Ladders from the audit log's healing lines ``(node, action, at)``, oldest first: where
    each node that was being healed stood (``healing.down``, ``.cycle``, ``.reinstall``
    climb; ``.recovered``, ``.released``, ``.quarantine`` end a ladder). Policies are left
    empty: the next :meth:`Healer.tick` sets them from the views."""
    out: dict[str, Entry] = {}
    for node, action, at in events:
        entry = out.get(node)
        if action == "healing.down":
            out[node] = Entry("", Step.DOWN, at, at)
        elif entry is None:
            continue
        elif action == "healing.cycle":
            entry.step, entry.since, entry.cycles = Step.CYCLING, at, entry.cycles + 1
        elif action == "healing.reinstall":
            entry.step, entry.since = Step.REINSTALLING, at
        elif action in ("healing.recovered", "healing.released", "healing.quarantine"):
            del out[node]
    return out
