"""The inventory capability, built for the manager: the sightings writer, always on."""

from __future__ import annotations

from piman.context import AppContext, Built, InventoryHandle
from piman.inventory.sightings import Sightings

__all__ = ["build"]


def build(ctx: AppContext) -> Built[InventoryHandle]:
    """One :class:`Sightings` for the DHCP and TFTP servers, and the service that writes it."""
    sightings = Sightings(ctx.store.nodes, registry=ctx.metrics)
    # Which MACs are nodes is known before any netboot server starts (unknown ones are only listed).
    return Built(sightings, (sightings,), startup=(sightings.load,))
