"""``piman nodes``: the node table, from a running manager or from the config and store."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from piman.cli.client import CaFileOption, TokenOption, UrlOption, connect
from piman.cli.common import ConfigOption, console, load
from piman.store import Store, reconcile

__all__ = ["register"]


def nodes(
    config: ConfigOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List nodes: state, power, IP, MAC, model, serial, switch port, last seen.

    With --url, asks a running manager; otherwise reads the config and the store directly.

    Example: piman nodes --url http://127.0.0.1:8000
    """
    if url:
        with connect(url, token, ca_file) as client:
            rows: list[dict[str, Any]] = client.get("/nodes")
    else:
        rows = asyncio.run(_from_store(config))
    if as_json:
        import json

        console.print_json(json.dumps(rows, default=str))
        return
    table = Table(title=f"{len(rows)} nodes", title_justify="left")
    for col in ("name", "state", "power", "ip", "mac", "model", "serial", "switch:port", "seen"):
        table.add_column(col)
    for n in rows:
        port = f"{n['switch']}:{n['port']}" if n.get("switch") else "-"
        table.add_row(
            n["name"],
            n["state"],
            n["power"],
            n.get("ip") or "-",
            n.get("mac") or "-",
            n.get("model") or "-",
            n.get("serial") or "-",
            port,
            _ago(n.get("last_seen")),
        )
    console.print(table)


def _ago(value: Any) -> str:
    if not value:
        return "never"
    when = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return when.strftime("%Y-%m-%d %H:%M:%S")


async def _from_store(config_path: Any) -> list[dict[str, Any]]:
    from piman.web.api.nodes import NodeOut

    config = load(config_path)
    store = Store(config.database_url)
    await store.open()
    try:
        await reconcile(store, config)
        return [NodeOut.of(n).model_dump() for n in await store.nodes.list()]
    finally:
        await store.close()


def register(app: typer.Typer) -> None:
    app.command("nodes")(nodes)
