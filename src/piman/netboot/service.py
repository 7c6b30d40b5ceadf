"""Builds DHCP and TFTP services for the manager from the configuration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from piman.manager import ManagerContext, Service

__all__ = ["Netboot", "build_services"]


@dataclass
class Netboot:
    """``ctx.netboot``: the netboot servers that run (None when off)."""

    dhcp: Any = None  # piman.netboot.dhcp.server.DhcpServer
    tftp: Any = None


def _is_loopback(host: str) -> bool:
    """Servers are pinned to the provisioning interface unless told to listen on loopback."""
    return host.startswith("127.") or host in {"localhost", "::1"}


def _dhcp(ctx: ManagerContext) -> list[Service]:
    config = ctx.config
    if config.dhcp is None or not config.dhcp.enabled:
        return []
    from piman.config.types import parse_host_port
    from piman.netboot.dhcp.policy import PolicySettings
    from piman.netboot.dhcp.server import DhcpServer

    listen = parse_host_port(config.dhcp.listen) if config.dhcp.listen else ("0.0.0.0", 67)
    server = DhcpServer(
        PolicySettings.from_config(config),
        journal_path=config.manager.data_dir / "dhcp" / "leases.journal",
        listen=listen,
        interface=None if _is_loopback(listen[0]) else config.manager.interface,
        store=ctx.store,
        metrics=ctx.metrics,
    )
    ctx.netboot.dhcp = server
    return [server]


def _tftp(ctx: ManagerContext) -> list[Service]:
    config = ctx.config
    if config.tftp is None or not config.tftp.enabled:
        return []
    from piman.config.types import parse_host_port
    from piman.netboot.boottree import BootTree, check_boot_trees
    from piman.netboot.tftp.server import TftpServer

    check_boot_trees(config)  # logs a warning per file too large for the Pi firmware
    listen = parse_host_port(config.tftp.listen) if config.tftp.listen else ("0.0.0.0", 69)
    server = TftpServer(
        BootTree(config, ctx.store),
        config.tftp,
        listen=listen,
        interface=None if _is_loopback(listen[0]) else config.manager.interface,
        registry=ctx.metrics,
    )
    ctx.netboot.tftp = server
    return [server]


def build_services(ctx: ManagerContext) -> list[Service]:
    """The services this capability runs under the given configuration."""
    if ctx.netboot is None:
        ctx.netboot = Netboot()
    services: list[Service] = []
    services.extend(_dhcp(ctx))
    services.extend(_tftp(ctx))
    return services
