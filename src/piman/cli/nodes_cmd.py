"""``piman nodes``: the node table, from a running manager or from the config and store."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any

import httpx
import typer
from rich.table import Table

from piman.cli.common import ConfigOption, console, fail, load
from piman.store import Store, reconcile

__all__ = ["register"]


def nodes(
    config: ConfigOption = None,
    url: Annotated[
        str | None,
        typer.Option(
            help="A running manager's URL, e.g. http://127.0.0.1:8000", show_default=False
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List nodes: state, power, IP, MAC, model, serial, switch port, last seen.

    With --url, asks a running manager; otherwise reads the config and the store directly.

    Example: piman nodes --url http://127.0.0.1:8000
    """
    rows = _from_api(url) if url else asyncio.run(_from_store(config))
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


def _from_api(url: str) -> list[dict[str, Any]]:
    try:
        response = httpx.get(url.rstrip("/") + "/api/v1/nodes", timeout=10)
        response.raise_for_status()
    except httpx.HTTPStatusError as err:
        fail(f"{url} answered {err.response.status_code}")
    except httpx.HTTPError as err:
        fail(f"cannot reach the manager at {url}: {err}")
    data: list[dict[str, Any]] = response.json()
    return data


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
