"""The installer's side of ``/boot/v1`` (docs/boot-protocol.md), the pure part: secrets, the plan.

The HTTP routes live in ``piman.web.api.boot``; the decisions (which token, which deployment,
which address) in :mod:`piman.deploy.service`. Here: making and hashing the one-time tokens and
sessions, and writing the plan an installer reads line by line.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from piman.deploy.bmap import BmapRange

__all__ = [
    "PLAN_VERSION",
    "STEPS",
    "Plan",
    "digest",
    "new_secret",
    "outside_head",
    "render_plan",
]

PLAN_VERSION = 1
STEPS = ("hello", "write_image", "verify", "customise")


def new_secret() -> str:
    """A one-time token or a session: 256 random bits, url-safe (fits a kernel command line)."""
    return secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    """What the store keeps of a token or a session: its SHA-256."""
    return hashlib.sha256(secret.encode()).hexdigest()


def outside_head(ranges: Sequence[BmapRange], head_blocks: int) -> list[BmapRange]:
    """The ranges an installer writes before the head, in plan order (what ``resume`` counts)."""
    return [r for r in ranges if r.first >= head_blocks]


@dataclass(frozen=True, slots=True)
class Plan:
    deployment: int
    session: str
    image_url: str
    image_bytes: int
    block_bytes: int
    head_blocks: int
    resume: int
    progress_every: int
    ranges: Sequence[BmapRange]


def render_plan(plan: Plan) -> str:
    """The plan as the installer reads it: one fact per line, ``end`` last."""
    if any(r.first < plan.head_blocks <= r.last for r in plan.ranges):
        raise ValueError("a range straddles the head: the bmap was made for another head size")
    lines = [
        f"piman-plan {PLAN_VERSION}",
        f"deployment {plan.deployment}",
        f"session {plan.session}",
        f"image {plan.image_url}",
        f"image_bytes {plan.image_bytes}",
        f"block_bytes {plan.block_bytes}",
        f"head_blocks {plan.head_blocks}",
        f"resume {plan.resume}",
        f"progress_every {plan.progress_every}",
    ]
    lines += [f"range {r.first} {r.last} {r.sha256}" for r in plan.ranges]
    lines.append("end")
    return "\n".join(lines) + "\n"
