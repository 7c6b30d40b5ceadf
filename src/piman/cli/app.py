"""The root ``piman`` command and its groups."""

from __future__ import annotations

import typer

from piman import __version__
from piman.cli import (
    access_cmd,
    agent_cmd,
    alerts_cmd,
    common,
    config_cmd,
    deploy_cmd,
    discover_cmd,
    export_cmd,
    installer_cmd,
    inventory_cmd,
    nodes_cmd,
    power_cmd,
    reserve_cmd,
    server_cmd,
    ssh_cmd,
)

__all__ = ["app", "main"]

app = typer.Typer(
    name="piman",
    help="Raspberry Pi fleet manager: netboot, PoE power, reinstall, inventory and monitoring.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        common.console.print(f"piman {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Raspberry Pi fleet manager. Start with `piman demo`, or `piman config check piman.yaml`."""


server_cmd.register(app)
config_cmd.register(app)
nodes_cmd.register(app)
power_cmd.register(app)
agent_cmd.register(app)
alerts_cmd.register(app)
export_cmd.register(app)
access_cmd.register(app)
deploy_cmd.register(app)
installer_cmd.register(app)
reserve_cmd.register(app)
inventory_cmd.register(app)
discover_cmd.register(app)
ssh_cmd.register(app)


def main() -> None:
    """Console-script entry point: run the app, turning escaped errors into one line."""
    try:
        app()
    except SystemExit:
        raise
    except BaseException as err:  # noqa: BLE001 - the one place that turns any error into a line
        common.handle(err)
