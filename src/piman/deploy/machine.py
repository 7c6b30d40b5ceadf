"""A deployment's steps and every move between them: the transition table (pure).

Theory of operation. A deployment moves through the steps of DESIGN.md §3; each waiting step has
a timeout (``deploy.timeouts``) and the deployment a retry budget (``deploy.retries``) of power
cycles per step. The engine (:mod:`piman.deploy.engine`) feeds :func:`advance` the events it sees
(a power operation done, the installer's hello, progress and result, the node fetching its own
boot files, its agent answering, a deadline passed, a cancel) with ``now``; it gets back the
next :class:`Position` and the :class:`Action` s to carry out, in order, and persists both before
it acts. Nothing here reads a clock, the store or the network.

==================  ==================  =====================================================
state               event               next state and actions
==================  ==================  =====================================================
(new)               Start               power_off: node deploying, boot tree installer, power
                                        off
power_off           PowerDone           netboot_installer: power on
power_off           PowerManual         hello: tell the operator to power-cycle the node
netboot_installer   PowerDone           hello (waits for the installer's hello)
netboot_installer   PowerManual         hello: tell the operator
hello               Hello               write_image (also from power_off and
                                        netboot_installer: a fast installer may greet before
                                        the power report; and from verify/customise: the
                                        installer started over)
write_image         Progress(verify)    verify;  Progress(write_image) only moves the deadline
write_image,verify  Progress(customise) customise
write_image…custom  Result(ok)          boot_local: boot tree local
write_image…custom  Result(failed)      a retry (below), with the installer's reason
boot_local          LocalBoot           agent_up (deployed at once when no agent is expected)
agent_up            AgentUp             deployed: node deployed (also from boot_local: a
                                        node that boots from its card fetches nothing)
any waiting         PowerFailed         a retry (below)
any waiting         Timeout             a retry (below)
any (not final)     Cancel              cancelled: node failed_deployment, boot tree local
==================  ==================  =====================================================

A **retry** spends one of the step's ``retries``: a new one-time token and the installer's boot
tree (steps that need the installer), a power cycle (or the operator's instruction on a manual
switch), and back to waiting for the hello, so the installer resumes (the plan's ``resume``
skips the ranges it already synced). In ``boot_local`` and ``agent_up`` a retry power-cycles
the node and waits again. With no retry left: ``failed``, node ``failed_deployment``, the reason
kept. Events that a state does not expect are ignored (logged by the engine), never an error:
a late progress report after a timeout must not break a deployment.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

__all__ = [
    "FINAL",
    "INSTALLER_STEPS",
    "Action",
    "AgentUp",
    "Cancel",
    "Event",
    "Finish",
    "Hello",
    "LocalBoot",
    "Log",
    "NewToken",
    "Position",
    "PowerCycle",
    "PowerDone",
    "PowerFailed",
    "PowerManual",
    "PowerOff",
    "PowerOn",
    "Progress",
    "Result",
    "SetBoot",
    "SetNodeState",
    "Settings",
    "Start",
    "State",
    "Timeout",
    "advance",
]


class State(StrEnum):
    NEW = "new"
    POWER_OFF = "power_off"
    NETBOOT_INSTALLER = "netboot_installer"
    HELLO = "hello"
    WRITE_IMAGE = "write_image"
    VERIFY = "verify"
    CUSTOMISE = "customise"
    BOOT_LOCAL = "boot_local"
    AGENT_UP = "agent_up"
    DEPLOYED = "deployed"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL = frozenset({State.DEPLOYED, State.FAILED, State.CANCELLED})
INSTALLER_STEPS = frozenset(
    {State.POWER_OFF, State.NETBOOT_INSTALLER, State.HELLO, State.WRITE_IMAGE, State.VERIFY,
     State.CUSTOMISE}
)  # fmt: skip
_AFTER_INSTALLER = {State.WRITE_IMAGE, State.VERIFY, State.CUSTOMISE}


# Events ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    pass


@dataclass(frozen=True, slots=True)
class PowerDone:
    pass


@dataclass(frozen=True, slots=True)
class PowerManual:
    """The node's switch cannot be driven: a person has to act."""

    instruction: str


@dataclass(frozen=True, slots=True)
class PowerFailed:
    reason: str


@dataclass(frozen=True, slots=True)
class Hello:
    pass


@dataclass(frozen=True, slots=True)
class Progress:
    step: str  # write_image | verify | customise


@dataclass(frozen=True, slots=True)
class Result:
    ok: bool
    reason: str = ""
    step: str = ""


@dataclass(frozen=True, slots=True)
class LocalBoot:
    """The node fetched its own boot files after the installer finished."""


@dataclass(frozen=True, slots=True)
class AgentUp:
    pass


@dataclass(frozen=True, slots=True)
class Timeout:
    pass


@dataclass(frozen=True, slots=True)
class Cancel:
    by: str


Event = (
    Start | PowerDone | PowerManual | PowerFailed | Hello | Progress | Result | LocalBoot
    | AgentUp | Timeout | Cancel
)  # fmt: skip


# Actions -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PowerOff:
    pass


@dataclass(frozen=True, slots=True)
class PowerOn:
    pass


@dataclass(frozen=True, slots=True)
class PowerCycle:
    pass


@dataclass(frozen=True, slots=True)
class NewToken:
    """Issue a new one-time token for the installer's hello (the old one stops working)."""


@dataclass(frozen=True, slots=True)
class SetBoot:
    tree: str  # installer | local


@dataclass(frozen=True, slots=True)
class SetNodeState:
    state: str  # a fleet.lifecycle.NodeState value


@dataclass(frozen=True, slots=True)
class Log:
    message: str


@dataclass(frozen=True, slots=True)
class Finish:
    result: str  # ok | failed | cancelled
    reason: str = ""


Action = PowerOff | PowerOn | PowerCycle | NewToken | SetBoot | SetNodeState | Log | Finish


# Positions ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    timeouts: dict[str, float]  # step → seconds
    retries: int
    expect_agent: bool = True


@dataclass(frozen=True, slots=True)
class Position:
    """Where a deployment is: its state, the power cycles spent in it, when it times out."""

    state: State
    attempt: int = 0
    deadline: datetime | None = None


def _enter(state: State, now: datetime, settings: Settings, attempt: int = 0) -> Position:
    if state in FINAL:
        return Position(state, attempt, None)
    return Position(state, attempt, now + timedelta(seconds=settings.timeouts[state.value]))


def advance(
    pos: Position, event: Event, now: datetime, settings: Settings
) -> tuple[Position, list[Action]]:
    """The next position and the actions for ``event`` at ``now`` (see the module's table)."""
    state = pos.state
    if state in FINAL:
        return pos, []
    if isinstance(event, Cancel):
        return _enter(State.CANCELLED, now, settings), [
            SetBoot("local"),
            SetNodeState("failed_deployment"),
            Log(f"cancelled by {event.by} during {state.value}"),
            Finish("cancelled", f"cancelled by {event.by} during {state.value}"),
        ]
    if isinstance(event, Timeout):
        if pos.deadline is None or now < pos.deadline:
            return pos, []
        return _retry(pos, now, settings, f"no progress in {state.value} for "
                      f"{settings.timeouts[state.value]:.0f} s")  # fmt: skip
    if isinstance(event, PowerFailed):
        return _retry(pos, now, settings, f"power failed in {state.value}: {event.reason}")
    handler = _TABLE.get((state, type(event)))
    if handler is None:
        return pos, []
    return handler(pos, event, now, settings)


def _retry(
    pos: Position, now: datetime, settings: Settings, why: str
) -> tuple[Position, list[Action]]:
    if pos.attempt >= settings.retries:
        reason = f"{why}; no retry left ({settings.retries} per step)"
        return _enter(State.FAILED, now, settings), [
            SetBoot("local"),
            SetNodeState("failed_deployment"),
            Log(reason),
            Finish("failed", reason),
        ]
    attempt = pos.attempt + 1
    note = Log(f"{why}: power-cycling (retry {attempt} of {settings.retries})")
    if pos.state in INSTALLER_STEPS:
        return _enter(State.HELLO, now, settings, attempt), [
            note,
            NewToken(),
            SetBoot("installer"),
            PowerCycle(),
        ]
    return _enter(pos.state, now, settings, attempt), [note, PowerCycle()]


# The table: (state, event type) → handler. Every move lives here.


def _start(
    pos: Position, event: Event, now: datetime, settings: Settings
) -> tuple[Position, list[Action]]:
    return _enter(State.POWER_OFF, now, settings), [
        SetNodeState("deploying"),
        NewToken(),
        SetBoot("installer"),
        PowerOff(),
    ]


def _powered_off(
    pos: Position, event: Event, now: datetime, settings: Settings
) -> tuple[Position, list[Action]]:
    return _enter(State.NETBOOT_INSTALLER, now, settings, pos.attempt), [PowerOn()]


def _powered_on(
    pos: Position, event: Event, now: datetime, settings: Settings
) -> tuple[Position, list[Action]]:
    return _enter(State.HELLO, now, settings, pos.attempt), []


def _manual(
    pos: Position, event: Event, now: datetime, settings: Settings
) -> tuple[Position, list[Action]]:
    assert isinstance(event, PowerManual)
    return _enter(State.HELLO, now, settings, pos.attempt), [Log(event.instruction)]


def _hello(
    pos: Position, event: Event, now: datetime, settings: Settings
) -> tuple[Position, list[Action]]:
    return _enter(State.WRITE_IMAGE, now, settings, pos.attempt), [Log("installer said hello")]


def _progress(
    pos: Position, event: Event, now: datetime, settings: Settings
) -> tuple[Position, list[Action]]:
    assert isinstance(event, Progress)
    order = [State.WRITE_IMAGE, State.VERIFY, State.CUSTOMISE]
    try:
        target = State(event.step)
    except ValueError:
        return pos, []
    if target not in order or order.index(target) < order.index(pos.state):
        return pos, []  # a late report of an earlier step
    moved = target != pos.state
    return _enter(target, now, settings, pos.attempt), (
        [Log(f"installer: {target.value}")] if moved else []
    )


def _result(
    pos: Position, event: Event, now: datetime, settings: Settings
) -> tuple[Position, list[Action]]:
    assert isinstance(event, Result)
    if not event.ok:
        where = event.step or pos.state.value
        return _retry(pos, now, settings, f"installer failed in {where}: {event.reason}")
    return _enter(State.BOOT_LOCAL, now, settings), [
        SetBoot("local"),
        Log("image written, verified and customised; the node boots its own files"),
    ]


def _local_boot(
    pos: Position, event: Event, now: datetime, settings: Settings
) -> tuple[Position, list[Action]]:
    if not settings.expect_agent:
        return _done(now, settings, "the node booted its own files")
    return _enter(State.AGENT_UP, now, settings), [Log("the node booted its own files")]


def _agent_up(
    pos: Position, event: Event, now: datetime, settings: Settings
) -> tuple[Position, list[Action]]:
    return _done(now, settings, "the node's agent answers")


def _done(now: datetime, settings: Settings, why: str) -> tuple[Position, list[Action]]:
    return _enter(State.DEPLOYED, now, settings), [
        SetNodeState("deployed"),
        Log(f"deployed: {why}"),
        Finish("ok"),
    ]


_TABLE = {
    (State.NEW, Start): _start,
    (State.POWER_OFF, PowerDone): _powered_off,
    (State.POWER_OFF, PowerManual): _manual,
    (State.NETBOOT_INSTALLER, PowerDone): _powered_on,
    (State.NETBOOT_INSTALLER, PowerManual): _manual,
    (State.POWER_OFF, Hello): _hello,  # greeted before the power report came back
    (State.NETBOOT_INSTALLER, Hello): _hello,
    (State.HELLO, Hello): _hello,
    (State.WRITE_IMAGE, Hello): _hello,  # the installer started over (its node restarted)
    (State.VERIFY, Hello): _hello,
    (State.CUSTOMISE, Hello): _hello,
    (State.WRITE_IMAGE, Progress): _progress,
    (State.VERIFY, Progress): _progress,
    (State.CUSTOMISE, Progress): _progress,
    (State.WRITE_IMAGE, Result): _result,
    (State.VERIFY, Result): _result,
    (State.CUSTOMISE, Result): _result,
    (State.BOOT_LOCAL, LocalBoot): _local_boot,
    (State.BOOT_LOCAL, AgentUp): _agent_up,
    (State.AGENT_UP, AgentUp): _agent_up,
}
