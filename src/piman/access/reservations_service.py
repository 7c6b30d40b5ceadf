"""The reservations service: the :class:`~piman.context.ReservationsHandle` and its timer loop.

Theory of operation
-------------------
**Booking** (:meth:`ReservationService.reserve`) checks who asks (role ``user`` books for
themselves within ``reservations.limits``; operators and admins for anyone, unlimited), turns the
request into a draft with the pure rules of :mod:`piman.access.reservations` *inside* the store's
booking transaction (the nodes it may take are locked, so two requests never get one node), and
writes the reservation with its timers. Every action goes to the audit log.

**Timers** are rows of the store, so they survive the manager: :meth:`ReservationService.tick`
claims the due ones (a lease; another manager sharing the database never takes the same), and
runs each once in due order, asking :func:`~piman.access.reservations.verdict` what it means
*now*. After a restart the loop simply finds what came due while it was down and replays it:

- ``start``: the nodes walk to ``allocated``; with an environment, its deployment starts with
  the owner's SSH keys (a replay finds the deployments already running and records those);
- ``warn``: a mail to the owner's address is queued in the alert outbox *in the transaction
  that marks the timer done* (the monitoring notifier delivers it, once, with an idempotency
  key); a warning due after the end is skipped;
- ``unused``: released when the owner showed no sign of use since the start (no login, no API
  call, no deployment of its nodes; see ``owner_activity``);
- ``end`` (or a release asked for): ``ending`` is written first, then the owner's unfinished
  deployments are cancelled and the nodes powered off, redeployed with the default environment,
  or left (``reservations.release``), walked back to ``ready``, and the reservation is
  ``released``. An interrupted release is found ``ending`` and goes on: nothing is skipped, and
  each step may run twice (powering off twice is harmless; a second deployment is refused and
  the running one recorded);
- ``finish`` (redeploy): every few seconds until the release's deployments are over.

A timer whose work fails unexpectedly is retried :data:`RETRY` seconds later. Booking, a release
and an extension wake the loop; a reservation that starts now, or a release, is processed before
the call returns (its own due timers, claimed like any other).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry, Counter

from piman.access.reservation_steps import FINISH_POLL, Done, TimerSteps
from piman.access.reservations import (
    Candidate,
    Verdict,
    check_limits,
    check_ssh_key,
    choose,
    extended_end,
    extension_timers,
    next_free,
    timers_for,
    verdict,
    when,
)
from piman.access.roles import Action, allows
from piman.config.models import Config
from piman.config.reservations import ReservationSettings, owner_mail_url
from piman.context import (
    AppContext,
    Built,
    DeployHandle,
    PowerHandle,
    Principal,
    ReservationsHandle,
)
from piman.errors import (
    ConfigError,
    ConfigProblem,
    ConflictError,
    Forbidden,
    NotFoundError,
    PimanError,
    StoreError,
)
from piman.fleet.ports import Repositories
from piman.fleet.reservations import (
    Booking,
    FreeSlot,
    NodeAvailability,
    NodeSelection,
    ReservationDraft,
    ReservationRecord,
    ReservationRequest,
    ReservationState,
    TimerDraft,
    TimerRecord,
)

__all__ = ["FINISH_POLL", "LEASE", "POLL", "RETRY", "ReservationService", "build"]

logger = logging.getLogger(__name__)

POLL = 5.0  # seconds between looks at the store when nothing is due sooner
LEASE = 300.0  # seconds a claimed timer stays this manager's
RETRY = 30.0  # seconds before a timer whose work failed runs again
START_SLACK = 60.0  # a start this far in the past is taken as now
HORIZON = timedelta(days=3660)  # nothing is booked, extended or looked up beyond this


def _now() -> datetime:
    return datetime.now(UTC)


class ReservationService:
    """The reservations handle and its timer loop (module doc)."""

    name = "reservations"

    def __init__(
        self,
        config: Config,
        store: Repositories,
        *,
        power: PowerHandle | None = None,
        deploy: DeployHandle | None = None,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], datetime] = _now,
        owner: str | None = None,
        poll: float = POLL,
    ) -> None:
        self.config = config
        self.settings: ReservationSettings = config.reservations
        self.store = store
        self.repo = store.reservations
        self.power = power
        self.deploy = deploy
        self.clock = clock
        self.owner = owner or f"{socket.gethostname()}:{config.manager.data_dir}"[:128]
        self.poll = poll
        notify = config.monitoring.notify if config.monitoring is not None else []
        self.mail_url = owner_mail_url(self.settings, notify)
        self.steps = TimerSteps(
            config, store, power=power, deploy=deploy, clock=clock, mail_url=self.mail_url
        )
        self._wake = asyncio.Event()
        self._ticking = asyncio.Lock()  # the loop and a request's own timers, one at a time
        self._timers = (
            Counter(
                "piman_reservation_timers",
                "Reservation timers run, by kind and what they did.",
                ["kind", "verdict"],
                registry=registry,
            )
            if registry is not None
            else None
        )

    # -- who may ------------------------------------------------------------------------------

    @staticmethod
    def _trusted(principal: Principal) -> bool:
        """Operators and admins: any reservation, no limits."""
        return allows(principal.role, Action.POWER)

    def _may_see(self, principal: Principal, r: ReservationRecord) -> bool:
        return r.owner == principal.user or allows(principal.role, Action.READ)

    def _may_change(self, principal: Principal, r: ReservationRecord) -> None:
        if r.owner == principal.user and allows(principal.role, Action.RESERVE):
            return
        if self._trusted(principal):
            return
        raise Forbidden(
            f"reservation {r.id} is {r.owner}'s: only they or an operator may change it"
        )

    # -- the handle ---------------------------------------------------------------------------

    async def _candidates(self) -> list[Candidate]:
        out = []
        nodes = {n.name: n for n in self.config.nodes}  # one look-up each, not a scan
        for node in await self.store.nodes.list():
            declared = nodes.get(node.name)
            tags = frozenset(declared.tags) if declared is not None else frozenset()
            out.append(Candidate(node.name, node.state, node.model, node.switch, tags))
        return out

    async def reserve(
        self, request: ReservationRequest, *, principal: Principal
    ) -> ReservationRecord:
        if not allows(principal.role, Action.RESERVE):
            raise Forbidden(f"role {principal.role} may not reserve nodes")
        if principal.via == "local" and request.owner is None:
            raise ValueError(
                "root on the manager machine is no user: say whose reservation it is (--owner)"
            )
        owner = request.owner or principal.user
        if owner != principal.user:
            if not self._trusted(principal):
                raise Forbidden("only operators and admins book nodes for someone else")
            if await self.store.users.get(owner) is None:
                raise NotFoundError(f"no user named {owner!r}")
        if request.duration <= 0:
            raise ValueError("a reservation lasts more than 0 s")
        now = self.clock()
        start = request.start or now
        if start < now - timedelta(seconds=START_SLACK):
            raise ValueError(f"the start {when(start)} is in the past")
        start = max(start, now)
        if start - now > HORIZON or request.duration > HORIZON.total_seconds():
            raise ValueError("that is more than ten years away")
        end = start + timedelta(seconds=request.duration)
        keys = tuple(check_ssh_key(k) for k in request.ssh_keys)
        if request.environment is not None:
            if self.deploy is None:
                raise ValueError("reinstalls are not configured on this manager (deploy:)")
            await self.deploy.environment(request.environment)  # NotFoundError
        candidates = await self._candidates()
        selection = request.selection
        lock = list(selection.names) or [c.name for c in candidates if c.matches(selection)]
        limits = None if self._trusted(principal) else self.settings.limits_for(owner)
        settings = self.settings

        def decide(live: list[ReservationRecord]) -> ReservationDraft:
            nodes = choose(selection, candidates, live, start, end, settings.buffer)
            if limits is not None:
                owned = [r for r in live if r.owner == owner]
                check_limits(limits, owned, len(nodes), start, end, now)
            return ReservationDraft(
                owner=owner,
                nodes=nodes,
                start_at=start,
                end_at=end,
                environment=request.environment,
                ssh_keys=keys,
                created_by=principal.actor,
                timers=timers_for(start, end, settings),
            )

        record = await self.repo.create(lock, decide, now=now)
        detail = (
            f"{owner}: {', '.join(record.nodes)} {when(record.start_at)} to {when(record.end_at)}"
        )
        if record.environment:
            detail += f", with {record.environment}"
        await self.steps.audit(principal.actor, "reservation.create", record, "ok", detail)
        logger.info("[reservation=%d] booked by %s: %s", record.id, principal.actor, detail)
        if record.start_at <= self.clock():
            await self._process(record.id)
        self._wake.set()
        return await self.repo.get(record.id)

    async def reservations(
        self, *, principal: Principal, owner: str | None = None, live: bool | None = None
    ) -> list[ReservationRecord]:
        if not allows(principal.role, Action.READ):
            if owner not in (None, principal.user):
                raise Forbidden("you see your own reservations only")
            owner = principal.user
        return await self.repo.list(owner=owner, live=live)

    async def reservation(self, reservation_id: int, *, principal: Principal) -> ReservationRecord:
        r = await self.repo.get(reservation_id)
        if not self._may_see(principal, r):
            raise Forbidden(f"reservation {reservation_id} is not yours")
        return r

    async def timers(self, reservation_id: int) -> list[TimerRecord]:
        return await self.repo.timers(reservation_id)

    async def extend(
        self, reservation_id: int, by: float, *, principal: Principal
    ) -> ReservationRecord:
        r = await self.repo.get(reservation_id)
        self._may_change(principal, r)
        if by > HORIZON.total_seconds() or r.end_at + timedelta(seconds=by) - r.start_at > HORIZON:
            raise ValueError("that is more than ten years away")
        limits = None if self._trusted(principal) else self.settings.limits_for(r.owner)
        settings = self.settings
        now = self.clock()

        def decide(
            current: ReservationRecord, live: list[ReservationRecord]
        ) -> tuple[datetime, Sequence[TimerDraft]]:
            new_end = extended_end(current, by, live, settings.buffer, limits)
            return new_end, extension_timers(current, new_end, settings, now)

        record = await self.repo.extend(reservation_id, decide, now=now)
        await self.repo.mark_used(reservation_id, now)
        await self.steps.audit(
            principal.actor, "reservation.extend", record, "ok", f"until {when(record.end_at)}"
        )
        self._wake.set()
        return record

    async def release(self, reservation_id: int, *, principal: Principal) -> ReservationRecord:
        r = await self.repo.get(reservation_id)
        self._may_change(principal, r)
        now = self.clock()
        if r.state == ReservationState.SCHEDULED:
            done = await self.repo.transition(
                r.id, r.state, ReservationState.CANCELLED, at=now,
                reason=f"cancelled by {principal.actor}",
            )  # fmt: skip
            await self.steps.audit(principal.actor, "reservation.cancel", done, "ok", None)
            return done
        if r.state == ReservationState.ACTIVE:
            ending = await self.repo.transition(
                r.id, r.state, ReservationState.ENDING, at=now,
                reason=f"released by {principal.actor}",
            )  # fmt: skip
            await self.repo.end_now(r.id, now)
            await self.steps.audit(principal.actor, "reservation.release", ending, "ok", None)
            await self._process(r.id)
            self._wake.set()
            return await self.repo.get(r.id)
        if r.state == ReservationState.ENDING:
            return r
        raise ConflictError(f"reservation {r.id} is {r.state} already")

    async def availability(self) -> list[NodeAvailability]:
        live = await self.repo.live()
        nodes = {n.name: n for n in self.config.nodes}
        out = []
        for c in await self._candidates():
            bookings = tuple(
                Booking(r.id, r.owner, r.start_at, r.end_at, r.state)
                for r in live
                if c.name in r.nodes
            )
            declared = nodes.get(c.name)
            out.append(
                NodeAvailability(
                    name=c.name,
                    model=c.model,
                    switch=c.switch,
                    port=declared.port if declared is not None else None,
                    tags=tuple(sorted(c.tags)),
                    state=c.state,
                    reservable=c.reservable,
                    bookings=bookings,
                )
            )
        return out

    async def next_free(
        self, selection: NodeSelection, duration: float, *, after: datetime | None = None
    ) -> FreeSlot | None:
        if duration <= 0:
            raise ValueError("a reservation lasts more than 0 s")
        now = self.clock()
        start = max(after or now, now)
        if start - now > HORIZON or duration > HORIZON.total_seconds():
            raise ValueError("that is more than ten years away")
        candidates = await self._candidates()
        known = {c.name for c in candidates}
        for name in selection.names:
            if name not in known:
                raise NotFoundError(f"no node named {name!r}")
        return next_free(
            selection, candidates, await self.repo.live(), start, duration, self.settings.buffer
        )

    async def holds(self, user: str, node: str) -> bool:
        mine = await self.repo.list(owner=user, live=True)
        return any(r.state == ReservationState.ACTIVE and node in r.nodes for r in mine)

    # -- the timer loop -----------------------------------------------------------------------

    async def serve(self) -> None:
        while True:
            try:
                await self.tick()
                delay = await self._delay()
            except StoreError as err:
                logger.warning("reservations: the store failed: %s", err)
                delay = self.poll
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            self._wake.clear()

    async def _delay(self) -> float:
        due = await self.repo.next_due(self.owner, self.clock())
        if due is None:
            return self.poll
        return min(self.poll, max(0.05, (due - self.clock()).total_seconds()))

    async def tick(self, reservation: int | None = None) -> int:
        """Run the due timers (of one reservation, or all); how many ran."""
        async with self._ticking:
            now = self.clock()
            claimed = await self.repo.claim_timers(
                self.owner, now=now, lease_until=now + timedelta(seconds=LEASE), limit=100
            )
            ran = 0
            for timer in claimed:
                if reservation is not None and timer.reservation != reservation:
                    continue  # ours now; the loop runs it next (its lease is ours)
                await self._run(timer)
                ran += 1
            return ran

    async def _process(self, reservation_id: int) -> None:
        """A reservation's due timers, now (a start now, a release)."""
        try:
            await self.tick(reservation_id)
        except StoreError as err:
            logger.warning("[reservation=%d] left to the loop: %s", reservation_id, err)

    async def _run(self, timer: TimerRecord) -> None:
        tag = f"[reservation={timer.reservation} timer={timer.kind}]"
        r = await self.repo.get(timer.reservation)
        try:
            now = self.clock()
            decided = verdict(timer.kind, r, now)
            step: Callable[[TimerRecord, ReservationRecord], Awaitable[Done]]
            step = getattr(self.steps, decided.value)
            done = await step(timer, r)
        except StoreError:
            raise
        except (PimanError, ValueError) as err:
            logger.warning("%s failed, retrying in %.0f s: %s", tag, RETRY, err)
            done = Done(f"failed: {err}", again=RETRY)
            decided = Verdict.SKIP
        except Exception as err:
            logger.exception("%s failed, retrying in %.0f s", tag, RETRY)
            done = Done(f"failed: {type(err).__name__}: {err}", again=RETRY)
            decided = Verdict.SKIP
        at = self.clock()
        again = at + timedelta(seconds=done.again) if done.again is not None else None
        kept = await self.repo.finish_timer(
            timer.id, self.owner, at=at, outcome=done.outcome, again_at=again, outbox=done.outbox
        )
        if not kept:
            logger.info("%s was finished elsewhere", tag)
            return
        if self._timers is not None:
            self._timers.labels(timer.kind, decided.value).inc()
        if done.audit is not None:
            action, result, detail = done.audit
            await self.steps.audit(f"reservation#{r.id}", action, r, result, detail)
        logger.info("%s %s", tag, done.outcome)


def build(ctx: AppContext) -> Built[ReservationsHandle] | None:
    """The service, unless ``reservations.enabled`` is false (then role ``user`` acts on
    nothing). Built after power and deploy, whose handles it uses."""
    settings = ctx.config.reservations
    if not settings.enabled:
        return None
    if settings.release == "redeploy":
        deploy = ctx.config.deploy
        env = settings.default_environment or (deploy.default_environment if deploy else None)
        if ctx.deploy is None or env is None:
            raise ConfigError(
                [
                    ConfigProblem(
                        "config",
                        "reservations.release",
                        "redeploy needs deploy: and an environment "
                        "(reservations.default_environment or deploy.default_environment)",
                    )
                ]
            )
    service = ReservationService(
        ctx.config, ctx.store, power=ctx.power, deploy=ctx.deploy, registry=ctx.metrics
    )
    return Built(service, (service,))
