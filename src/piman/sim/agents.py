"""Demo: virtual Pis' agents: real `piman agent` apps on 127.0.0.1 with simulated load.

Filled in by the monitoring capability; until then it does nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from piman.sim.fleet import DemoFleet

__all__ = ["run_agents"]


async def run_agents(fleet: DemoFleet) -> None:
    """Run until cancelled (returns at once while there is nothing to simulate)."""
    return None
