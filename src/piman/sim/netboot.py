"""Demo: virtual Pis netbooting: DHCP and the TFTP request sequence of their model.

Filled in by the netboot capability; until then it does nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from piman.sim.fleet import DemoFleet

__all__ = ["run_netboot"]


async def run_netboot(fleet: DemoFleet) -> None:
    """Run until cancelled (returns at once while there is nothing to simulate)."""
    return None
