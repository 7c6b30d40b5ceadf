"""What each due reservation timer does: one method per :class:`~piman.access.reservations.Verdict`.

:class:`~piman.access.reservations_service.ReservationService` claims the due timers and asks
the pure rules what each means now; :class:`TimerSteps` carries it out (nodes walked to their
state, deployments started or cancelled, ports powered off, the owner's warning queued) and
answers with a :class:`Done`: the outcome, when to run again, the outbox row and the audit entry
that go with finishing the timer. The steps may run twice after a restart and are written so
that the second run changes nothing (module doc of the service).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from piman.access.reservations import is_unused, path_to, warning_text
from piman.config.models import Config
from piman.config.reservations import OWNER_MAIL_RECEIVER
from piman.context import DeployHandle, DeployOptions, PowerHandle
from piman.errors import ConflictError, NotFoundError, PimanError, StoreError
from piman.fleet.lifecycle import IllegalTransition, NodeState
from piman.fleet.ports import Repositories
from piman.fleet.reservations import (
    ReservationRecord,
    ReservationState,
    TimerDraft,
    TimerKind,
    TimerRecord,
)

__all__ = ["FINISH_POLL", "Done", "TimerSteps", "for_owner", "for_release"]

logger = logging.getLogger(__name__)

FINISH_POLL = 10.0  # seconds between looks at a redeploying release


class TimerSteps:
    """The work of each verdict, for :meth:`ReservationService.tick` (found by the verdict's
    value: ``start``, ``warn``, ``check_use``, ``end``, ``finish``, ``miss``, ``skip``)."""

    def __init__(
        self,
        config: Config,
        store: Repositories,
        *,
        power: PowerHandle | None,
        deploy: DeployHandle | None,
        clock: Callable[[], datetime],
        mail_url: str | None,
    ) -> None:
        self.config = config
        self.settings = config.reservations
        self.store = store
        self.repo = store.reservations
        self.power = power
        self.deploy = deploy
        self.clock = clock
        self.mail_url = mail_url

    async def skip(self, timer: TimerRecord, r: ReservationRecord) -> Done:
        return Done(f"skipped: the reservation is {r.state}")

    async def miss(self, timer: TimerRecord, r: ReservationRecord) -> Done:
        await self.repo.transition(
            r.id, r.state, ReservationState.CANCELLED, at=self.clock(),
            reason="missed: the manager was down until after its end",
        )  # fmt: skip
        return Done("missed", audit=("reservation.miss", "failed", "never started"))

    async def start(self, timer: TimerRecord, r: ReservationRecord) -> Done:
        notes = await self._settle(r.nodes, NodeState.ALLOCATED)
        deployments: list[int] = []
        if r.environment:
            try:
                deployments = await self._deploy(r, r.environment, r.ssh_keys, for_owner(r))
            except (PimanError, ValueError) as err:  # the owner can deploy by hand
                notes.append(f"deploying {r.environment} failed: {err}")
        await self.repo.transition(
            r.id, r.state, ReservationState.ACTIVE, at=self.clock(), deployments=deployments
        )
        detail = f"{', '.join(r.nodes)} to {r.owner}"
        if deployments:
            detail += (
                f"; deploying {r.environment} (deployments {', '.join(map(str, deployments))})"
            )
        if notes:
            detail += "; " + "; ".join(notes)
        return Done(f"started: {detail}", audit=("reservation.start", "ok", detail))

    async def warn(self, timer: TimerRecord, r: ReservationRecord) -> Done:
        lead = f"{int(timer.lead // 60)} min before the end"
        user = await self.store.users.get(r.owner)
        address = user.email if user is not None else None
        if address is None:
            why = f"not sent: {r.owner} has no e-mail address"
            return Done(why, audit=("reservation.warn", "skipped", f"{lead}: {why}"))
        if self.mail_url is None:
            why = "not sent: no mail channel (reservations.notify or monitoring.notify)"
            return Done(why, audit=("reservation.warn", "skipped", f"{lead}: {why}"))
        title, body = warning_text(
            r, timer.lead, self.clock(), self.settings.release, self.config.manager.external_url
        )
        key = f"reservation-{r.id}-warn-{int(timer.lead)}-{int(r.end_at.timestamp())}"
        payload: dict[str, Any] = {
            "kind": "reservation",
            "reservation": r.id,
            "to": address,
            "title": title,
            "body": body,
        }
        return Done(
            f"warned {address} ({lead})",
            outbox=(OWNER_MAIL_RECEIVER, key, payload),
            audit=("reservation.warn", "ok", f"{lead}, to {address}"),
        )

    async def check_use(self, timer: TimerRecord, r: ReservationRecord) -> Done:
        since = r.started_at or r.start_at
        activity = await self.repo.owner_activity(r.owner, r.nodes, since)
        if not is_unused(r, activity):
            await self.repo.mark_used(r.id, activity or self.clock())
            return Done("in use")
        after = int((self.settings.unused_after or 0) // 60)
        ending = await self.repo.transition(
            r.id, r.state, ReservationState.ENDING, at=self.clock(),
            reason=f"unused: no login, API call or deployment by {r.owner} in {after} min",
        )  # fmt: skip
        await self.audit(
            f"reservation#{r.id}", "reservation.unused", ending, "ok", f"nothing in {after} min"
        )
        return await self.end(timer, ending)

    async def end(self, timer: TimerRecord, r: ReservationRecord) -> Done:
        if r.state == ReservationState.ACTIVE:
            r = await self.repo.transition(
                r.id, r.state, ReservationState.ENDING, at=self.clock(), reason="ended",
                expect_end=r.end_at,
            )  # fmt: skip
        notes = await self._cancel_deployments(r)
        mode = self.settings.release
        if mode == "redeploy":
            env = self._release_environment()
            if env is not None and self.deploy is not None:
                try:
                    ids = await self._deploy(r, env, (), for_release(r))
                except (PimanError, ValueError) as err:
                    notes.append(f"redeploying {env} failed: {err}; powering off instead")
                    mode = "power_off"
                else:
                    await self.repo.transition(
                        r.id, r.state, r.state, at=self.clock(), deployments=ids
                    )
                    await self.repo.add_timer(
                        r.id,
                        TimerDraft(TimerKind.FINISH, self.clock() + timedelta(seconds=FINISH_POLL)),
                    )
                    detail = f"redeploying {env} on {', '.join(r.nodes)}"
                    if notes:
                        detail += "; " + "; ".join(notes)
                    return Done(detail, audit=("reservation.end", "ok", detail))
            else:
                notes.append("no environment to redeploy: powering off instead")
                mode = "power_off"
        if mode == "power_off":
            notes.extend(await self._power_off(r))
        return await self._released(r, notes)

    async def finish(self, timer: TimerRecord, r: ReservationRecord) -> Done:
        assert self.deploy is not None
        running = []
        for ident in r.deployments:
            record = await self.deploy.deployment(ident)
            if record.active:
                running.append(ident)
        if running:
            return Done(f"waiting for deployments {running}", again=FINISH_POLL)
        return await self._released(r, [])

    async def _released(self, r: ReservationRecord, notes: list[str]) -> Done:
        notes.extend(await self._settle(r.nodes, NodeState.READY, skip=r.id))
        await self.repo.transition(r.id, r.state, ReservationState.RELEASED, at=self.clock())
        detail = f"{', '.join(r.nodes)} back from {r.owner} ({self.settings.release})"
        if notes:
            detail += "; " + "; ".join(notes)
        return Done(f"released: {detail}", audit=("reservation.end", "ok", detail))

    # -- the nodes ----------------------------------------------------------------------------

    def _release_environment(self) -> str | None:
        deploy = self.config.deploy
        return self.settings.default_environment or (
            deploy.default_environment if deploy is not None else None
        )

    async def _deploy(
        self, r: ReservationRecord, env: str, keys: Sequence[str], actor: str
    ) -> list[int]:
        """Deploy ``env`` to the reservation's nodes; the deployments already running there
        (a replay after a crash) are taken as they are."""
        assert self.deploy is not None
        try:
            made = await self.deploy.start(
                list(r.nodes), env, actor=actor, options=DeployOptions(ssh_keys=tuple(keys))
            )
        except ConflictError:
            running = []
            for node in r.nodes:
                running += await self.deploy.deployments(node=node, active=True)
            return [d.id for d in running]
        return [d.id for d in made]

    async def _cancel_deployments(self, r: ReservationRecord) -> list[str]:
        if self.deploy is None:
            return []
        notes = []
        for node in r.nodes:
            for d in await self.deploy.deployments(node=node, active=True):
                if d.created_by == for_release(r):
                    continue  # the release's own (a replay)
                await self.deploy.cancel(d.id, actor=f"reservation#{r.id}")
                notes.append(f"deployment {d.id} on {node} cancelled")
        return notes

    async def _power_off(self, r: ReservationRecord) -> list[str]:
        if self.power is None:
            return ["no power driver: nodes left as they are"]
        wired = [
            n
            for n in r.nodes
            if (c := self.config.node(n)) is not None and c.switch and c.port is not None
        ]
        if not wired:
            return []
        targets = self.power.resolve(wired)
        results = await self.power.run("off", targets, actor=f"reservation#{r.id}")
        return [f"{o.target.label}: power off failed: {o.error}" for o in results if not o.ok]

    async def _settle(
        self, nodes: Sequence[str], target: NodeState, *, skip: int | None = None
    ) -> list[str]:
        """Walk each node to ``target`` (to ``allocated`` instead when another active
        reservation holds it); notes on the nodes left where they were."""
        holders: set[str] = set()
        if target is NodeState.READY:
            for other in await self.repo.live():
                if other.id != skip and other.state == ReservationState.ACTIVE:
                    holders.update(other.nodes)
        notes = []
        for name in nodes:
            want = NodeState.ALLOCATED if name in holders else target
            try:
                node = await self.store.nodes.get(name)
                path = path_to(node.state, want)
                if path is None:
                    notes.append(f"{name} left {node.state}")
                    continue
                for state in path:
                    await self.store.nodes.set_state(name, state)
            except (NotFoundError, IllegalTransition) as err:
                notes.append(f"{name}: {err}")
        return notes

    async def audit(
        self, actor: str, action: str, r: ReservationRecord, result: str, detail: str | None
    ) -> None:
        try:
            await self.store.audit.add(actor, action, f"reservation/{r.id}", result, detail)
        except StoreError as err:
            logger.warning("[reservation=%d] audit log not written: %s", r.id, err)


def for_owner(r: ReservationRecord) -> str:
    """How the audit log and the deployments name what the reservation does for its owner."""
    return f"reservation#{r.id} ({r.owner})"


def for_release(r: ReservationRecord) -> str:
    return f"reservation#{r.id} (release)"


class Done:
    """What running a timer came to: its outcome, and what goes with it."""

    __slots__ = ("again", "audit", "outbox", "outcome")

    def __init__(
        self,
        outcome: str,
        *,
        again: float | None = None,
        outbox: tuple[str, str, dict[str, Any]] | None = None,
        audit: tuple[str, str, str | None] | None = None,
    ) -> None:
        self.outcome = outcome
        self.again = again
        self.outbox = outbox
        self.audit = audit
