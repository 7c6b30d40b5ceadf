"""The netboot capability, built for the manager: the DHCP and TFTP servers that are on."""

from __future__ import annotations

from piman.config.types import parse_host_port
from piman.context import AppContext, Built, NetbootHandle, Service
from piman.errors import ConfigError, ConfigProblem
from piman.netboot.boottree import BootTree, check_boot_trees
from piman.netboot.dhcp.policy import PolicySettings
from piman.netboot.dhcp.server import DhcpServer
from piman.netboot.tftp.server import TftpServer

__all__ = ["Netboot", "build"]


class Netboot:
    """The :class:`~piman.context.NetbootHandle`: the servers that run (None when off)."""

    def __init__(self, dhcp: DhcpServer | None, tftp: TftpServer | None) -> None:
        self.dhcp = dhcp
        self.tftp = tftp

    def addresses(self) -> dict[str, tuple[str, int]]:
        out: dict[str, tuple[str, int]] = {}
        if self.dhcp is not None and self.dhcp.bound is not None:
            out["dhcp"] = self.dhcp.bound
        if self.tftp is not None and self.tftp.address is not None:
            out["tftp"] = self.tftp.address
        return out

    @property
    def services(self) -> tuple[Service, ...]:
        return tuple(s for s in (self.dhcp, self.tftp) if s is not None)


def _is_loopback(host: str) -> bool:
    """Servers are pinned to the provisioning interface unless told to listen on loopback."""
    return host.startswith("127.") or host in {"localhost", "::1"}


def _dhcp(ctx: AppContext) -> DhcpServer | None:
    config = ctx.config
    if config.dhcp is None or not config.dhcp.enabled:
        return None
    if config.dhcp.mode == "authoritative" and not (config.manager.interface or config.dhcp.listen):
        raise ConfigError(
            [
                ConfigProblem(
                    "config",
                    "manager.interface",
                    "authoritative DHCP needs the provisioning interface (manager.interface) or"
                    " an explicit dhcp.listen; without either it would answer on every network"
                    " this machine is on",
                )
            ]
        )
    listen = parse_host_port(config.dhcp.listen) if config.dhcp.listen else ("0.0.0.0", 67)
    return DhcpServer(
        PolicySettings.from_config(config),
        journal_path=config.manager.data_dir / "dhcp" / "leases.journal",
        listen=listen,
        interface=None if _is_loopback(listen[0]) else config.manager.interface,
        sightings=ctx.inventory,
        metrics=ctx.metrics,
    )


def _tftp(ctx: AppContext) -> TftpServer | None:
    config = ctx.config
    if config.tftp is None or not config.tftp.enabled:
        return None
    check_boot_trees(config)  # logs a warning per file too large for the Pi firmware
    listen = parse_host_port(config.tftp.listen) if config.tftp.listen else ("0.0.0.0", 69)
    return TftpServer(
        BootTree(config, ctx.store.nodes, sightings=ctx.inventory, deploy=ctx.deploy),
        config.tftp,
        listen=listen,
        interface=None if _is_loopback(listen[0]) else config.manager.interface,
        registry=ctx.metrics,
    )


def build(ctx: AppContext) -> Built[NetbootHandle] | None:
    """DHCP and TFTP as the configuration says; None when both are off."""
    netboot = Netboot(_dhcp(ctx), _tftp(ctx))
    if netboot.dhcp is None and netboot.tftp is None:
        return None
    return Built(netboot, netboot.services)
