"""Builds the scraper, alert evaluator and notifier for the manager from the configuration."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from piman.manager import ManagerContext, Service

__all__ = ["build_services"]


def build_services(ctx: ManagerContext) -> list[Service]:
    """The services this capability runs under the given configuration (none yet)."""
    return []
