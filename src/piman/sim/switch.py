"""Demo: virtual PoE switches: real SNMP agents on 127.0.0.1 whose ports power the virtual Pis.

Filled in by the power capability; until then it does nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from piman.sim.fleet import DemoFleet

__all__ = ["run_switches"]


async def run_switches(fleet: DemoFleet) -> None:
    """Run until cancelled (returns at once while there is nothing to simulate)."""
    return None
