"""``piman server`` and ``piman demo``."""

from __future__ import annotations

import asyncio
import signal
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from piman.cli.common import ConfigOption, console, load
from piman.logs import setup_logging

if TYPE_CHECKING:  # the manager (every capability, the web) is imported when one runs
    from piman.manager import Manager

__all__ = ["register"]


async def _run(manager: Manager) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, manager.stop)
    try:
        await manager.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def server(config: ConfigOption = None) -> None:
    """Run the manager: HTTP API and UI, and DHCP, TFTP, power, monitoring as configured.

    Stops cleanly on Ctrl-C or SIGTERM.

    Example: piman server --config /etc/piman/piman.yaml
    """
    cfg = load(config)
    log_file = setup_logging(cfg.manager.log_level, cfg.manager.data_dir / "logs")
    if log_file:
        console.print(f"logging to {log_file}", style="dim")
    from piman.manager import Manager
    from piman.web.server import HttpService

    asyncio.run(_run(Manager(cfg, frontends=[HttpService])))


def demo(
    nodes: Annotated[int, typer.Option("--nodes", "-n", min=1, max=2000, help="Virtual Pis.")] = 16,
    port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535, help="HTTP port.")] = 8000,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Keep the demo's data here (default: a temporary directory)."),
    ] = None,
) -> None:
    """Run the manager with a simulated fleet: 2 virtual PoE switches and N virtual Pis.

    No root and no real network: everything listens on 127.0.0.1. Prints the web UI's address.

    Example: piman demo --nodes 32 --port 8080
    """
    from piman.sim.fleet import DemoFleet

    with tempfile.TemporaryDirectory(prefix="piman-demo-") as tmp:
        root = data_dir or Path(tmp)
        fleet = DemoFleet(root, nodes=nodes, http_port=port)
        setup_logging("INFO", root / "logs")
        console.print(
            f"[bold]piman demo[/bold]: {nodes} virtual Pis on 2 switches; "
            f"config {fleet.config_path}"
        )
        asyncio.run(_demo(fleet))


async def _demo(fleet: object) -> None:
    from piman.sim.fleet import DEMO_USERS, LOGINS_FILE, DemoFleet

    assert isinstance(fleet, DemoFleet)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, fleet.stop)
    logins = await fleet.make_users()

    def ready(url: str) -> None:
        console.print(f"web UI: [bold]{url}[/bold]  (Ctrl-C stops)")
        console.print("log in as one of (name / password / role):")
        for name, role in DEMO_USERS:
            console.print(f"  {name:<9} {logins[name]}  {role}", markup=False, highlight=False)
        console.print(f"  (also in {fleet.root / LOGINS_FILE})", style="dim")

    await fleet.run(on_ready=ready)


def register(app: typer.Typer) -> None:
    app.command("server")(server)
    app.command("demo")(demo)
