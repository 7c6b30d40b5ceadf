"""``piman restart`` (the seed's command) and ``piman power on|off|cycle|status|map``.

Both work from the configuration alone, with no manager running: they switch ports themselves
and write the audit log and power states into the store. ``--overlay`` (or ``$PIMAN_OVERLAY``)
lays a partial piman-format YAML over the configuration — how a seed-format file gets SNMP
settings such as ``snmp.host``/``port`` or a ``data_dir``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from piman.cli.client import CaFileOption, ManagerClient, TokenOption, UrlOption, connect
from piman.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    ConfigOption,
    console,
    err_console,
    fail,
    load,
    local_actor,
)
from piman.cli.output import Column, Output, OutputOption, emit
from piman.config.models import Config
from piman.errors import NotFoundError, PimanError, StoreError
from piman.fleet.power import PowerAction, PowerResult, PowerTarget
from piman.power.controller import PowerController

__all__ = ["register"]

OverlayOption = Annotated[
    Path | None,
    typer.Option(
        "--overlay",
        help="A partial piman YAML laid over the config (default: $PIMAN_OVERLAY), e.g. to give "
        "seed-format switches snmp.host/port/community.",
        show_default=False,
    ),
]
PROGRESS_MIN = 4  # show a progress bar from this many targets on

power_app = typer.Typer(
    help="Switch nodes on and off through their switch ports; show and map ports.",
    no_args_is_help=True,
)


def _config(config: Path | None, overlay: Path | None) -> Config:
    return load(config, overlay=overlay)


def _describe(o: PowerResult) -> str:
    if o.reading is None:
        return o.action if o.action != "cycle" else "cycled"
    parts = [o.reading.admin.value]
    if o.reading.detection is not None:
        parts.append(o.reading.detection)
    if o.reading.watts is not None:
        parts.append(f"{o.reading.watts:g} W")
    return ", ".join(parts)


async def _run(
    cfg: Config, action: PowerAction, resolve: Callable[[PowerController], list[PowerTarget]]
) -> list[PowerResult]:
    from piman.store import Store, reconcile

    store: Store | None = Store(cfg.database_url)
    try:
        assert store is not None
        await store.open()
        await reconcile(store, cfg)
    except StoreError as err:
        err_console.print(f"warning: no audit log ({err})", markup=False, soft_wrap=True)
        store = None
    progress = Progress(
        TextColumn(f"power {action}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
    )
    task = progress.add_task("", total=None)

    def advance(o: PowerResult) -> None:
        progress.update(task, advance=1, description=o.target.label)

    from piman.inventory.ssh import FleetSsh
    from piman.power.registry import default_registry

    registry = default_registry(ssh=FleetSsh(cfg, store))  # for ssh-reboot switches
    controller = PowerController(
        cfg, store=store, registry=registry, actor=local_actor(), on_outcome=advance
    )
    try:
        try:
            targets = resolve(controller)
        except NotFoundError as err:
            fail(str(err), EXIT_BAD_INPUT)
        progress.update(task, total=len(targets))
        if len(targets) >= PROGRESS_MIN:
            progress.start()
        try:
            return await controller.run(action, targets, actor=local_actor())
        finally:
            progress.stop()
    finally:
        await controller.close()
        if store is not None:
            await store.close()


def _report(
    outcomes: Sequence[PowerResult], action: PowerAction, output: Output = Output.TABLE
) -> None:
    if action == "status":
        from piman.web.api.power import PowerOut

        rows = [PowerOut.of(o.target.node, o).model_dump(mode="json") for o in outcomes]
        emit(output, rows, PORT_COLUMNS, title=f"{len(rows)} ports")
    else:
        for o in outcomes:
            if o.ok:
                console.print(f"{o.target.label} ({o.target.where}): {_describe(o)}", markup=False)
    failed = [o for o in outcomes if not o.ok]
    for o in failed:
        name = f"{o.target.node} ({o.target.where})" if o.target.node else o.target.where
        err_console.print(f"error: {name}: {o.error}", markup=False, soft_wrap=True)
    if failed:
        raise typer.Exit(EXIT_FAILED)


PORT_COLUMNS = (
    Column("node", "node", name=True),
    Column("switch:port", lambda r: f"{r['switch']}:{r['port']}", priority=2),
    Column("admin", lambda r: r["state"] if r["ok"] else "error", priority=1),
    Column("detection", "detection", priority=3),
    Column("watts", "watts", priority=4, right=True),
    Column("error", "error", wide=True),
)
MAP_COLUMNS = (
    Column("mac", "mac", name=True),
    Column("node", "node", name=True),
    Column("seen on port", "seen_port", priority=2, right=True),
    Column("config port", "configured_port", priority=3, right=True),
    Column("status", "status", priority=1),
)


def _power(
    action: PowerAction,
    targets: list[str],
    config: Path | None,
    overlay: Path | None,
    url: str | None = None,
    token: str | None = None,
    ca_file: Path | None = None,
    output: Output = Output.TABLE,
) -> None:
    if not targets:
        fail("name at least one target: a node, switch:port, or all", EXIT_BAD_INPUT)
    if url:
        with connect(url, token, ca_file) as client:
            _via_manager(client, action, targets, output)
        return
    cfg = _config(config, overlay)
    outcomes = asyncio.run(_run(cfg, action, lambda c: c.resolve(targets)))
    if not outcomes:
        fail("no targets: no node has a switch port", EXIT_BAD_INPUT)
    _report(outcomes, action, output)


def _via_manager(
    client: ManagerClient, action: PowerAction, targets: list[str], output: Output
) -> None:
    """One POST /api/v1/power: the manager staggers and records as it does for itself."""
    rows = client.post("/power", {"action": action, "targets": targets}, timeout=600)
    if action == "status":
        emit(output, rows, PORT_COLUMNS, title=f"{len(rows)} ports")
    failed = [r for r in rows if not r["ok"]]
    for r in rows:
        where = f"{r['switch']}:{r['port']}"
        name = f"{r['node']} ({where})" if r["node"] else where
        if r["ok"] and action != "status":
            console.print(f"{name}: {r['state']}", markup=False)
        elif not r["ok"]:
            err_console.print(f"error: {name}: {r['error']}", markup=False, soft_wrap=True)
    if failed:
        raise typer.Exit(EXIT_FAILED)


TargetsArg = Annotated[
    list[str], typer.Argument(help="Node names, switch:port (switch by name or address), or all.")
]


@power_app.command("on")
def power_on(
    targets: TargetsArg,
    config: ConfigOption = None,
    overlay: OverlayOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
) -> None:
    """Switch ports on (staggered per switch) and wait until they deliver power.

    Example: piman power on rack1-pi02 rack1:5
    """
    _power("on", targets, config, overlay, url, token, ca_file)


@power_app.command("off")
def power_off(
    targets: TargetsArg,
    config: ConfigOption = None,
    overlay: OverlayOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
) -> None:
    """Switch ports off (never a switch's uplink_port) and check that they read back off.

    Example: piman power off all
    """
    _power("off", targets, config, overlay, url, token, ca_file)


@power_app.command("cycle")
def power_cycle(
    targets: TargetsArg,
    config: ConfigOption = None,
    overlay: OverlayOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
) -> None:
    """Power-cycle: off, wait off_seconds, on (staggered), then check the ports deliver power.

    Example: piman power cycle rack1-pi02
    """
    _power("cycle", targets, config, overlay, url, token, ca_file)


@power_app.command("status")
def power_status(
    targets: TargetsArg,
    config: ConfigOption = None,
    overlay: OverlayOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """Show each port's admin state, PSE detection status and power draw.

    Exit 1 when a port could not be read (its row says error, the reason goes to stderr).

    Examples:
      piman power status all
      piman power status rack1:1 rack1:2 -o json
    """
    _power("status", targets, config, overlay, url, token, ca_file, output)


@power_app.command("map")
def power_map(
    switch: Annotated[str, typer.Argument(help="Switch name or address.")],
    config: ConfigOption = None,
    overlay: OverlayOption = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """Walk the switch's BRIDGE-MIB: which known MAC sits on which port; print config fixes.

    -o json and -o yaml give the rows alone, without the fixes.

    Examples:
      piman power map rack1
      piman power map rack1 -o json | jq '.[] | select(.status != "ok")'
    """
    from piman.inventory.bridge import FdbEntry, compare, read_fdb, yaml_fixes
    from piman.power.snmp import SnmpClient, SnmpTarget

    cfg = _config(config, overlay)
    sw = cfg.switch(switch)
    if sw is None:
        fail(f"no switch named or at {switch!r}", EXIT_BAD_INPUT)
    if sw.driver != "snmp-poe":
        fail(f"switch {sw.name!r} uses driver {sw.driver}; mapping needs SNMP", EXIT_BAD_INPUT)

    async def walk() -> list[FdbEntry]:
        address = str(sw.address) if sw.address is not None else None
        client = SnmpClient(SnmpTarget.from_settings(sw.name, address, sw.snmp, vlan=sw.snmp.vlan))
        try:
            return await read_fdb(client)
        finally:
            await client.close()

    try:
        entries = asyncio.run(walk())
    except PimanError as err:
        fail(str(err))
    found = compare(cfg, sw, entries)
    rows = [dataclasses.asdict(r) for r in found]
    emit(output, rows, MAP_COLUMNS, title=f"{sw.name}: {len(entries)} MACs learnt")
    if output in (Output.JSON, Output.YAML):
        return
    fixes = yaml_fixes(sw, found)
    if fixes:
        console.print("\nTo match the switch, change these entries under `nodes:`:")
        for line in fixes:
            console.print(line, markup=False, highlight=False)


def restart(
    switch: Annotated[str, typer.Argument(help="Switch name or address.")],
    pis: Annotated[list[str], typer.Argument(help="Pi numbers (= switch ports).")],
    config: ConfigOption = None,
    overlay: OverlayOption = None,
) -> None:
    """Power-cycle Pis by switch and Pi number (= port), as the original piman did.

    Example: piman restart 172.30.4.254 2 3
    """
    cfg = _config(config, overlay)
    ports = []
    for pi in pis:
        if not pi.isdigit() or int(pi) < 1:
            fail(f"{pi!r} is not a Pi number (a switch port, 1 or more)", EXIT_BAD_INPUT)
        ports.append(int(pi))
    outcomes = asyncio.run(_run(cfg, "cycle", lambda c: [c.target(switch, port) for port in ports]))
    _report(outcomes, "cycle")


def register(app: typer.Typer) -> None:
    app.command("restart")(restart)
    app.add_typer(power_app, name="power")
