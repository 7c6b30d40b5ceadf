"""``piman config check``: validate a configuration and show what it means."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
import yaml

from piman.cli.common import (
    EXIT_BAD_INPUT,
    HostsOption,
    console,
    err_console,
    report_config_error,
)
from piman.cli.output import Column, print_table
from piman.config import Config, load_config
from piman.errors import ConfigError

__all__ = ["register"]

config_app = typer.Typer(help="Check configuration files.", no_args_is_help=True)


@config_app.command("check")
def check(
    file: Annotated[Path, typer.Argument(help="The configuration file (piman or seed format).")],
    hosts: HostsOption = None,
    show_yaml: Annotated[
        bool, typer.Option("--yaml", help="Also print the equivalent piman-format YAML.")
    ] = False,
) -> None:
    """Validate FILE and print the normalised configuration; exit 2 with one line per problem.

    Accepts piman's format and the original piman's (private_number, server_address, switches
    with swtich_N_address and pi_addresses).

    Example: piman config check piman.yaml --hosts hosts.csv
    """
    try:
        config = load_config(file, hosts=hosts)
    except ConfigError as err:
        report_config_error(err)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    show(config)
    for warning in _warnings(config):
        err_console.print(f"warning: {warning}", soft_wrap=True, markup=False)
    if show_yaml:
        console.print(yaml.safe_dump(as_yaml(config), sort_keys=False), markup=False)


def _warnings(config: Config) -> list[str]:
    """What is valid but will not work as the user probably hopes (printed, exit stays 0)."""
    found = _fleet_warnings(config)
    if config.tftp is None or not config.tftp.enabled:
        return found
    from piman.netboot.boottree import check_boot_trees

    quiet = logging.getLogger("piman.netboot")
    quiet.addHandler(logging.NullHandler())  # the lines are printed below, not logged twice
    quiet.propagate = False
    try:
        return found + check_boot_trees(config)
    finally:
        quiet.propagate = True


def _fleet_warnings(config: Config) -> list[str]:
    """Agentless nodes and self-healing that cannot work as configured."""
    found = []
    healing = config.healing
    monitoring = config.monitoring is not None and config.monitoring.enabled
    if healing is not None and healing.enabled and healing.policies and not monitoring:
        found.append(
            "healing: is on but monitoring is off: no node is ever seen down (add `monitoring:`)"
        )
    if healing is not None and any(p.reinstall for p in healing.policies) and not config.deploy:
        found.append("healing: a policy reinstalls but there is no `deploy:` section")
    lost = [n.name for n in config.nodes if n.monitor == "ssh" and n.ip is None]
    if lost:
        found.append(
            f"nodes {', '.join(lost)}: monitor: ssh needs an `ip:` (until DHCP gives one, down)"
        )
    return found


def as_yaml(config: Config) -> dict[str, object]:
    """The configuration in piman's own format, defaults left out."""
    data = config.model_dump(mode="json", exclude_defaults=True, by_alias=True)
    return {k: v for k, v in data.items() if v not in (None, [], {})}


def _reservations(config: Config) -> str:
    """``on (release power_off, buffer 15m, …)`` or ``off``."""
    from piman.config.reservations import owner_mail_url
    from piman.config.types import format_duration as d

    r = config.reservations
    if not r.enabled:
        return "off"
    limits = r.limits
    caps = [
        f"{limits.max_nodes} nodes" if limits.max_nodes is not None else "any nodes",
        f"{d(limits.max_duration)} each" if limits.max_duration is not None else "any length",
        f"{limits.max_extensions} extensions" if limits.max_extensions is not None else "",
        f"{d(limits.max_total)} in all" if limits.max_total is not None else "",
        f"{d(limits.max_ahead)} ahead" if limits.max_ahead is not None else "",
    ]
    release: str = r.release
    if release == "redeploy":
        deploy = config.deploy
        env = r.default_environment or (deploy.default_environment if deploy else None)
        release += f" {env or '(no environment!)'}"
    notify = config.monitoring.notify if config.monitoring else []
    mail = owner_mail_url(r, notify)
    parts = [
        f"release {release}",
        f"buffer {d(r.buffer)}",
        "warnings " + (",".join(d(w) for w in r.warnings) or "none"),
        f"unused after {d(r.unused_after)}" if r.unused_after is not None else "never unused",
        "limits " + ", ".join(c for c in caps if c),
        f"mail {mail.split('://', 1)[0]}://…" if mail else "no mail channel",
    ]
    if r.users:
        parts.append(f"own limits for {', '.join(sorted(r.users))}")
    return f"on ({'; '.join(parts)})"


def _ssh(config: Config) -> str:
    ssh = config.ssh
    agentless = sum(1 for n in config.nodes if n.monitor == "ssh")
    text = (
        f"(user {ssh.user}, key {ssh.key_path(config.manager.data_dir)}, host keys {ssh.host_keys}"
    )
    return text + (f", {agentless} nodes watched over SSH)" if agentless else ")")


def _healing(config: Config) -> str:
    healing = config.healing
    if healing is None or not healing.enabled or not healing.policies:
        return "off"
    names = ", ".join(p.name for p in healing.policies)
    return f"on (policies {names}; {healing.max_concurrent} nodes at once)"


def show(config: Config) -> None:
    m = config.manager
    console.print(
        f"[bold]manager[/bold] {m.address}  network {m.effective_network}  "
        f"interface {m.interface or '-'}  http {m.http}  data {m.data_dir}"
    )
    dhcp = config.dhcp
    dhcp_text: str = "off" if dhcp is None or not dhcp.enabled else dhcp.mode
    if dhcp is not None and dhcp.enabled:
        dhcp_text += f" on {dhcp.listen or m.interface or 'every interface'}"
        reserved = sum(1 for n in config.nodes if n.mac and n.ip) + len(config.hosts)
        dhcp_text += f" (pool {dhcp.pool or 'none'}, {reserved} reserved)"
    tftp = config.tftp
    tftp_text = "off"
    if tftp is not None and tftp.enabled:
        tftp_text = f"on ({tftp.root or m.data_dir / 'boot'})"
    deploy = config.deploy
    deploy_text = "off"
    if deploy is not None and deploy.enabled:
        deploy_text = f"on (default environment {deploy.default_environment or '-'}"
        if deploy.seed_rootfs is not None:
            deploy_text += f", else {deploy.seed_rootfs}"
        deploy_text += ")"
    sections = [
        f"dhcp {dhcp_text}",
        f"tftp {tftp_text}",
        f"deploy {deploy_text}",
        f"monitoring {'on' if config.monitoring and config.monitoring.enabled else 'off'}",
    ]
    console.print("  ".join(sections), markup=False)
    console.print(f"reservations {_reservations(config)}", markup=False, soft_wrap=True)
    console.print(f"ssh {_ssh(config)}", markup=False, soft_wrap=True)
    console.print(f"healing {_healing(config)}", markup=False, soft_wrap=True)

    switches = [
        {
            "name": sw.name,
            "address": sw.address,
            "driver": sw.driver,
            "profile": sw.profile if sw.driver == "snmp-poe" else None,
            "uplink": sw.uplink_port,
            "nodes": sum(1 for n in config.nodes if n.switch in {sw.name, str(sw.address)}),
        }
        for sw in config.switches
    ]
    print_table(switches, SWITCH_COLUMNS, title=f"{len(switches)} switches")
    nodes = [n.model_dump() for n in config.nodes]
    print_table(nodes, NODE_COLUMNS, title=f"{len(nodes)} nodes")
    if config.hosts:
        hosts = [h.model_dump() for h in config.hosts]
        print_table(hosts, HOST_COLUMNS, title=f"{len(hosts)} other reservations")


SWITCH_COLUMNS = (
    Column("name", "name", name=True),
    Column("address", "address", priority=1),
    Column("driver", "driver", priority=2),
    Column("profile", "profile", priority=4),
    Column("uplink", "uplink", priority=5, right=True),
    Column("nodes", "nodes", priority=3, right=True),
)
NODE_COLUMNS = (
    Column("name", "name", name=True),
    Column("switch", "switch", priority=3),
    Column("port", "port", priority=3, right=True),
    Column("ip", "ip", priority=1),
    Column("mac", "mac", priority=2),
    Column("model", "model", priority=4),
    Column("serial", "serial", priority=5),
)
HOST_COLUMNS = (
    Column("mac", "mac", name=True),
    Column("ip", "ip", priority=1),
    Column("hostname", "hostname", priority=2),
)


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
