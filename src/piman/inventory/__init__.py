"""Inventory: what is on the network and where. ``sightings`` (what the netboot servers see),
``bridge`` (MAC → switch port from BRIDGE-MIB), ``service`` (what the manager builds)."""

from piman.inventory.sightings import Sighting, Sightings

__all__ = ["Sighting", "Sightings"]
