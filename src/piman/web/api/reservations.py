"""``/api/v1/reservations`` and ``/api/v1/availability``: nodes handed to users for a time.

Who may do what is the reservations handle's decision (:class:`piman.context.ReservationsHandle`):
any signed-in principal sees the fleet's availability; role ``user`` books for themselves within
the configured limits and sees, extends and releases their own reservations; operators and
admins see and end any; viewers see. A refused booking is a 409 that names who holds the nodes
and when the same request would fit (``next_free``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from piman.config.types import parse_duration
from piman.context import ReservationsHandle
from piman.errors import LimitExceeded, ReservationConflict
from piman.fleet.reservations import (
    FreeSlot,
    NodeAvailability,
    NodeSelection,
    ReservationRecord,
    ReservationRequest,
    TimerRecord,
)
from piman.web.deps import get_ctx
from piman.web.security import Anyone

__all__ = ["AvailabilityOut", "ReservationIn", "ReservationOut", "router"]

router = APIRouter(tags=["reservations"])

MAX_SECONDS = 3650 * 86400.0
Name = Annotated[str, Field(min_length=1, max_length=64)]
Id = Annotated[int, PathParam(ge=1, le=2**31 - 1, description="The reservation's id")]


def _reservations(request: Request) -> ReservationsHandle:
    handle = get_ctx(request).reservations
    if handle is None:
        raise HTTPException(503, "reservations are off on this manager (reservations.enabled)")
    return handle


Reservations = Annotated[ReservationsHandle, Depends(_reservations)]


def _duration(value: str | float) -> float:
    seconds = parse_duration(value)
    if not 0 < seconds <= MAX_SECONDS:  # also NaN
        raise ValueError("must be more than 0 s and at most ten years")
    return seconds


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ValueError("give a time zone (e.g. 2026-12-06T14:00:00Z or +01:00)")
    return value


class ReservationIn(BaseModel):
    """Nodes by name (``nodes``), or ``count`` nodes matching ``model``, ``switch``, ``tags``."""

    model_config = ConfigDict(extra="forbid")

    nodes: list[Name] = Field(default_factory=list, max_length=4096)
    count: int | None = Field(None, ge=1, le=4096)
    model: str | None = Field(None, max_length=32)
    switch: str | None = Field(None, max_length=64)
    tags: list[Name] = Field(default_factory=list, max_length=32)
    duration: str | float = Field(description="Seconds, or a duration such as 2h or 90m")
    start: datetime | None = Field(None, description="When it starts (ISO 8601 with a zone); now")
    environment: str | None = Field(None, max_length=64, description="Deployed at the start")
    ssh_keys: list[Annotated[str, Field(max_length=16384)]] = Field(
        default_factory=list, max_length=16, description="The owner's public keys for it"
    )
    owner: str | None = Field(None, max_length=64, description="Operators and admins only")

    _check_duration = field_validator("duration")(_duration)
    _check_start = field_validator("start")(_aware)


class ExtendIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    by: str | float = Field(description="Seconds, or a duration such as 1h")

    _check_by = field_validator("by")(_duration)


class ReservationOut(BaseModel):
    id: int
    owner: str
    nodes: list[str]
    state: str
    start_at: datetime
    end_at: datetime
    environment: str | None
    ssh_keys: list[str]
    extensions: int
    created_by: str
    created_at: datetime
    started_at: datetime | None
    used_at: datetime | None
    ended_at: datetime | None
    reason: str | None
    deployments: list[int]

    @classmethod
    def of(cls, r: ReservationRecord) -> ReservationOut:
        return cls(
            id=r.id,
            owner=r.owner,
            nodes=list(r.nodes),
            state=r.state,
            start_at=r.start_at,
            end_at=r.end_at,
            environment=r.environment,
            ssh_keys=list(r.ssh_keys),
            extensions=r.extensions,
            created_by=r.created_by,
            created_at=r.created_at,
            started_at=r.started_at,
            used_at=r.used_at,
            ended_at=r.ended_at,
            reason=r.reason,
            deployments=list(r.deployments),
        )


class TimerOut(BaseModel):
    kind: str
    due_at: datetime
    lead: float
    done_at: datetime | None
    outcome: str | None

    @classmethod
    def of(cls, t: TimerRecord) -> TimerOut:
        return cls(kind=t.kind, due_at=t.due_at, lead=t.lead, done_at=t.done_at, outcome=t.outcome)


class ReservationDetailOut(ReservationOut):
    timers: list[TimerOut]


class BookingOut(BaseModel):
    reservation: int
    owner: str
    start_at: datetime
    end_at: datetime
    state: str


class AvailabilityOut(BaseModel):
    """A node, who holds it now, and its live reservations (soonest first)."""

    name: str
    model: str | None
    switch: str | None
    port: int | None
    tags: list[str]
    state: str
    reservable: bool
    held_by: str | None
    held_until: datetime | None
    bookings: list[BookingOut]

    @classmethod
    def of(cls, a: NodeAvailability, now: datetime) -> AvailabilityOut:
        holder = a.holder(now)
        return cls(
            name=a.name,
            model=a.model,
            switch=a.switch,
            port=a.port,
            tags=list(a.tags),
            state=a.state,
            reservable=a.reservable,
            held_by=holder.owner if holder else None,
            held_until=holder.end_at if holder else None,
            bookings=[
                BookingOut(
                    reservation=b.reservation,
                    owner=b.owner,
                    start_at=b.start_at,
                    end_at=b.end_at,
                    state=b.state,
                )
                for b in a.bookings
            ],
        )


class FreeSlotOut(BaseModel):
    start: datetime
    nodes: list[str]

    @classmethod
    def of(cls, slot: FreeSlot) -> FreeSlotOut:
        return cls(start=slot.start, nodes=list(slot.nodes))


class ConflictOut(BaseModel):
    """A booking or extension refused because the nodes are reserved then."""

    error: str = "conflict"
    detail: str
    holder: str | None
    reservation: int | None
    next_free: datetime | None


class ErrorOut(BaseModel):
    error: str
    detail: str


def _refused(err: ReservationConflict | LimitExceeded | ValueError) -> JSONResponse:
    if isinstance(err, ReservationConflict):
        body = ConflictOut(
            detail=str(err),
            holder=err.holder,
            reservation=err.reservation,
            next_free=err.next_free,
        )
        return JSONResponse(body.model_dump(mode="json"), status_code=409)
    error = "limit" if isinstance(err, LimitExceeded) else "bad_request"
    return JSONResponse({"error": error, "detail": str(err)}, status_code=422)


_REFUSALS: dict[int | str, dict[str, object]] = {
    403: {"model": ErrorOut, "description": "Not yours, or the role may not"},
    404: {"model": ErrorOut, "description": "No such reservation, node, user or environment"},
    409: {"model": ConflictOut, "description": "Reserved then: the holder and the next free slot"},
    422: {"model": ErrorOut, "description": "Beyond the limits, or a bad request"},
}


@router.get(
    "/reservations",
    response_model=list[ReservationOut],
    summary="Reservations, newest first (a user's own; everyone's for readers)",
    responses={403: _REFUSALS[403]},
)
async def list_reservations(
    principal: Anyone,
    reservations: Reservations,
    owner: Annotated[str | None, Query(max_length=64)] = None,
    live: bool | None = None,
) -> list[ReservationOut]:
    records = await reservations.reservations(principal=principal, owner=owner, live=live)
    return [ReservationOut.of(r) for r in records]


@router.post(
    "/reservations",
    response_model=ReservationOut,
    status_code=201,
    summary="Reserve nodes for a time (by name, or a count matching a filter)",
    responses=_REFUSALS,
)
async def create_reservation(
    body: ReservationIn, principal: Anyone, reservations: Reservations
) -> ReservationOut | JSONResponse:
    assert isinstance(body.duration, float)
    request = ReservationRequest(
        selection=NodeSelection(
            names=tuple(body.nodes),
            count=body.count,
            model=body.model,
            switch=body.switch,
            tags=tuple(body.tags),
        ),
        duration=body.duration,
        start=body.start,
        environment=body.environment,
        ssh_keys=tuple(body.ssh_keys),
        owner=body.owner,
    )
    try:
        record = await reservations.reserve(request, principal=principal)
    except (ReservationConflict, LimitExceeded, ValueError) as err:
        return _refused(err)
    return ReservationOut.of(record)


@router.get(
    "/reservations/{reservation_id}",
    response_model=ReservationDetailOut,
    summary="One reservation, with its timers (start, warnings, unused check, end)",
    responses={403: _REFUSALS[403], 404: _REFUSALS[404]},
)
async def get_reservation(
    reservation_id: Id, principal: Anyone, reservations: Reservations
) -> ReservationDetailOut:
    r = await reservations.reservation(reservation_id, principal=principal)
    timers = [TimerOut.of(t) for t in await reservations.timers(r.id)]
    return ReservationDetailOut(**ReservationOut.of(r).model_dump(), timers=timers)


@router.post(
    "/reservations/{reservation_id}/extend",
    response_model=ReservationOut,
    summary="Move a reservation's end later",
    responses=_REFUSALS,
)
async def extend_reservation(
    reservation_id: Id, body: ExtendIn, principal: Anyone, reservations: Reservations
) -> ReservationOut | JSONResponse:
    assert isinstance(body.by, float)
    try:
        record = await reservations.extend(reservation_id, body.by, principal=principal)
    except (ReservationConflict, LimitExceeded, ValueError) as err:
        return _refused(err)
    return ReservationOut.of(record)


@router.post(
    "/reservations/{reservation_id}/release",
    response_model=ReservationOut,
    summary="End a reservation now (cancel a scheduled one; release an active one)",
    responses={
        403: _REFUSALS[403],
        404: _REFUSALS[404],
        409: {"model": ErrorOut, "description": "It is over already"},
    },
)
async def release_reservation(
    reservation_id: Id, principal: Anyone, reservations: Reservations
) -> ReservationOut:
    return ReservationOut.of(await reservations.release(reservation_id, principal=principal))


@router.get(
    "/availability",
    response_model=list[AvailabilityOut],
    summary="Every node: who holds it now, its reservations (for anyone who may reserve)",
)
async def availability(_: Anyone, reservations: Reservations) -> list[AvailabilityOut]:
    now = datetime.now(UTC)
    return [AvailabilityOut.of(a, now) for a in await reservations.availability()]


@router.get(
    "/availability/next",
    response_model=FreeSlotOut | None,
    summary="When a request would fit first (null: never, too few nodes match)",
    responses={404: _REFUSALS[404], 422: _REFUSALS[422]},
)
async def next_free_slot(
    _: Anyone,
    reservations: Reservations,
    duration: Annotated[str, Query(description="Seconds, or a duration such as 2h")],
    nodes: Annotated[list[Name] | None, Query(max_length=4096)] = None,
    count: Annotated[int | None, Query(ge=1, le=4096)] = None,
    model: Annotated[str | None, Query(max_length=32)] = None,
    switch: Annotated[str | None, Query(max_length=64)] = None,
    tag: Annotated[list[Name] | None, Query(max_length=32)] = None,
    after: datetime | None = None,
) -> FreeSlotOut | JSONResponse | None:
    try:
        seconds = _duration(duration)
        _aware(after)
        selection = NodeSelection(
            names=tuple(nodes or ()), count=count, model=model, switch=switch,
            tags=tuple(tag or ()),
        )  # fmt: skip
        slot = await reservations.next_free(selection, seconds, after=after)
    except ValueError as err:
        return _refused(err)
    return FreeSlotOut.of(slot) if slot is not None else None
