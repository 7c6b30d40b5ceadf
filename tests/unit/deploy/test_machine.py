"""The deployment transition table, walked: every row of the module's table, retries, the end."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from piman.config.deploy import STEPS
from piman.deploy.machine import (
    FINAL,
    AgentUp,
    Cancel,
    Event,
    Finish,
    Hello,
    LocalBoot,
    Log,
    NewToken,
    Position,
    PowerCycle,
    PowerDone,
    PowerFailed,
    PowerManual,
    PowerOff,
    PowerOn,
    Progress,
    Result,
    SetBoot,
    SetNodeState,
    Settings,
    Start,
    State,
    Timeout,
    advance,
)

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
SETTINGS = Settings(timeouts={s: 60.0 for s in STEPS}, retries=2)
S = State


def kinds(actions: list[object]) -> list[type]:
    return [type(a) for a in actions if not isinstance(a, Log)]


# (state, event, next state, the actions' kinds without the logs)
TABLE = [
    (S.NEW, Start(), S.POWER_OFF, [SetNodeState, NewToken, SetBoot, PowerOff]),
    (S.POWER_OFF, PowerDone(), S.NETBOOT_INSTALLER, [PowerOn]),
    (S.POWER_OFF, PowerManual("power-cycle rack1-07 now"), S.HELLO, []),
    (S.NETBOOT_INSTALLER, PowerDone(), S.HELLO, []),
    (S.NETBOOT_INSTALLER, PowerManual("power-cycle rack1-07 now"), S.HELLO, []),
    (S.HELLO, Hello(), S.WRITE_IMAGE, []),
    (S.WRITE_IMAGE, Hello(), S.WRITE_IMAGE, []),
    (S.POWER_OFF, Hello(), S.WRITE_IMAGE, []),  # greeted before the power report
    (S.NETBOOT_INSTALLER, Hello(), S.WRITE_IMAGE, []),
    (S.VERIFY, Hello(), S.WRITE_IMAGE, []),  # the installer started over
    (S.CUSTOMISE, Hello(), S.WRITE_IMAGE, []),
    (S.WRITE_IMAGE, Progress("write_image"), S.WRITE_IMAGE, []),
    (S.WRITE_IMAGE, Progress("verify"), S.VERIFY, []),
    (S.WRITE_IMAGE, Progress("customise"), S.CUSTOMISE, []),
    (S.VERIFY, Progress("customise"), S.CUSTOMISE, []),
    (S.VERIFY, Progress("write_image"), S.VERIFY, []),  # late: ignored
    (S.WRITE_IMAGE, Result(True), S.BOOT_LOCAL, [SetBoot]),
    (S.VERIFY, Result(True), S.BOOT_LOCAL, [SetBoot]),
    (S.CUSTOMISE, Result(True), S.BOOT_LOCAL, [SetBoot]),
    (S.CUSTOMISE, Result(False, "no space", "customise"), S.HELLO,
     [NewToken, SetBoot, PowerCycle]),
    (S.BOOT_LOCAL, LocalBoot(), S.AGENT_UP, []),
    (S.AGENT_UP, AgentUp(), S.DEPLOYED, [SetNodeState, Finish]),
    (S.BOOT_LOCAL, AgentUp(), S.DEPLOYED, [SetNodeState, Finish]),  # booted from its card
    (S.HELLO, PowerFailed("switch unreachable"), S.HELLO, [NewToken, SetBoot, PowerCycle]),
    (S.BOOT_LOCAL, PowerFailed("switch unreachable"), S.BOOT_LOCAL, [PowerCycle]),
    # Events a state does not expect change nothing.
    (S.HELLO, AgentUp(), S.HELLO, []),
    (S.AGENT_UP, Hello(), S.AGENT_UP, []),
    (S.POWER_OFF, Progress("verify"), S.POWER_OFF, []),
]  # fmt: skip


@pytest.mark.parametrize(("state", "event", "after", "actions"), TABLE)
def test_table(state: State, event: Event, after: State, actions: list[type]) -> None:
    pos = Position(state, 0, T0 + timedelta(seconds=60))
    new, done = advance(pos, event, T0, SETTINGS)
    assert new.state is after
    assert kinds(done) == actions


def test_every_state_walks_to_deployed_in_order() -> None:
    pos, now = Position(S.NEW), T0
    seen = []
    for event in (Start(), PowerDone(), PowerDone(), Hello(), Progress("verify"),
                  Progress("customise"), Result(True), LocalBoot(), AgentUp()):  # fmt: skip
        pos, actions = advance(pos, event, now, SETTINGS)
        seen.append(pos.state.value)
        now += timedelta(seconds=5)
    assert seen == [
        "power_off", "netboot_installer", "hello", "write_image", "verify", "customise",
        "boot_local", "agent_up", "deployed",
    ]  # fmt: skip
    assert actions[-1] == Finish("ok")
    assert pos.deadline is None
    assert [s for s in STEPS if s not in seen] == []  # every configured step is a state


def test_each_waiting_state_gets_its_own_deadline() -> None:
    settings = Settings(timeouts={s: float(i + 1) * 10 for i, s in enumerate(STEPS)}, retries=0)
    pos, _ = advance(Position(S.NEW), Start(), T0, settings)
    assert pos.deadline == T0 + timedelta(seconds=10)  # power_off
    pos, _ = advance(pos, PowerDone(), T0, settings)
    assert pos.deadline == T0 + timedelta(seconds=20)  # netboot_installer


def test_progress_moves_the_deadline() -> None:
    pos = Position(S.WRITE_IMAGE, 0, T0 + timedelta(seconds=60))
    later = T0 + timedelta(seconds=50)
    pos, _ = advance(pos, Progress("write_image"), later, SETTINGS)
    assert pos.deadline == later + timedelta(seconds=60)


def test_a_timeout_before_the_deadline_does_nothing() -> None:
    pos = Position(S.WRITE_IMAGE, 0, T0 + timedelta(seconds=60))
    assert advance(pos, Timeout(), T0 + timedelta(seconds=59), SETTINGS) == (pos, [])


def test_timeouts_power_cycle_and_resume_then_fail_when_the_budget_is_spent() -> None:
    pos = Position(S.WRITE_IMAGE, 0, T0)
    pos, actions = advance(pos, Timeout(), T0, SETTINGS)
    assert (pos.state, pos.attempt) == (S.HELLO, 1)
    assert kinds(actions) == [NewToken, SetBoot, PowerCycle]
    assert "retry 1 of 2" in next(a.message for a in actions if isinstance(a, Log))
    pos, _ = advance(pos, Hello(), T0, SETTINGS)
    assert (pos.state, pos.attempt) == (S.WRITE_IMAGE, 1)  # the budget belongs to the step
    pos, _ = advance(pos, Timeout(), pos.deadline or T0, SETTINGS)
    assert pos.attempt == 2
    pos, actions = advance(pos, Timeout(), pos.deadline or T0, SETTINGS)
    assert pos.state is S.FAILED
    assert kinds(actions) == [SetBoot, SetNodeState, Finish]
    finish = actions[-1]
    assert isinstance(finish, Finish)
    assert finish.result == "failed"
    assert "no progress in hello" in finish.reason
    assert SetNodeState("failed_deployment") in actions
    assert SetBoot("local") in actions


def test_a_failed_result_carries_the_installers_reason() -> None:
    settings = Settings(timeouts=SETTINGS.timeouts, retries=0)
    pos, actions = advance(
        Position(S.VERIFY, 0, T0), Result(False, "range 3 reads back different", "verify"), T0,
        settings,
    )  # fmt: skip
    assert pos.state is S.FAILED
    assert "installer failed in verify: range 3 reads back different" in actions[-1].reason  # type: ignore[union-attr]


def test_a_node_without_an_agent_is_deployed_when_it_boots_its_files() -> None:
    settings = Settings(timeouts=SETTINGS.timeouts, retries=2, expect_agent=False)
    pos, actions = advance(Position(S.BOOT_LOCAL, 0, T0), LocalBoot(), T0, settings)
    assert pos.state is S.DEPLOYED
    assert Finish("ok") in actions


@pytest.mark.parametrize("state", [s for s in State if s not in FINAL and s is not S.NEW])
def test_cancel_ends_every_unfinished_state(state: State) -> None:
    pos, actions = advance(Position(state, 0, T0), Cancel("ann"), T0, SETTINGS)
    assert pos.state is S.CANCELLED
    assert actions[-1] == Finish("cancelled", f"cancelled by ann during {state.value}")
    assert SetBoot("local") in actions


@pytest.mark.parametrize("state", sorted(FINAL))
def test_finished_deployments_ignore_everything(state: State) -> None:
    for event in (Start(), Timeout(), Cancel("x"), PowerFailed("x"), Hello(), AgentUp()):
        assert advance(Position(state), event, T0, SETTINGS) == (Position(state), [])
