"""The SSH capability, built for the manager: one :class:`~piman.inventory.ssh.FleetSsh` as
``ctx.ssh`` (the ``/api/v1/ssh`` routes, the ``ssh-reboot`` power driver, agentless monitoring
and self-healing share it, and so its concurrency ceiling and known hosts). No service: it
connects only when asked."""

from __future__ import annotations

from piman.context import AppContext, Built, SshHandle
from piman.inventory.ssh import FleetSsh

__all__ = ["build"]


def build(ctx: AppContext) -> Built[SshHandle]:
    """The fleet's SSH client, over the manager's store (node names → addresses)."""
    return Built(FleetSsh(ctx.config, ctx.store))
