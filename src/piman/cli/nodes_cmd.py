"""``piman nodes``: the node table, from a running manager or from the config and the store."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import typer

from piman.cli.client import CaFileOption, TokenOption, UrlOption, connect
from piman.cli.common import ConfigOption, load
from piman.cli.output import Column, JsonFlag, Output, OutputOption, chosen, emit
from piman.store import Store, reconcile

__all__ = ["NODE_COLUMNS", "register"]


def _port(n: Mapping[str, Any]) -> str | None:
    return f"{n['switch']}:{n['port']}" if n.get("switch") else None


NODE_COLUMNS = (
    Column("name", "name", name=True),
    Column("state", "state", priority=1),
    Column("power", "power", priority=2),
    Column("ip", "ip", priority=3),
    Column("last seen", "last_seen", priority=4, time=True, missing="never"),
    Column("switch:port", _port, priority=5),
    Column("model", "model", priority=6),
    Column("mac", "mac", priority=7),
    Column("serial", "serial", priority=8),
    Column("hostname", "hostname", wide=True),
    Column("first seen", "first_seen", wide=True, time=True, missing="never"),
    Column("declared", lambda n: "yes" if n.get("declared") else "no", wide=True),
)


def nodes(
    config: ConfigOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
    output: OutputOption = Output.TABLE,
    as_json: JsonFlag = False,
) -> None:
    """List nodes: state, power, IP, last seen, switch port, model, MAC, serial.

    With --url, asks a running manager; otherwise reads the config and the store directly. The
    table fits the terminal: the least useful columns give way first, -o wide shows them all
    (with hostname and first seen), -o json and -o yaml the whole records with absolute times.

    Examples:
      piman nodes --url http://127.0.0.1:8000
      piman nodes -o wide
      piman nodes -o json | jq -r '.[].name'
    """
    if url:
        with connect(url, token, ca_file) as client:
            rows: list[dict[str, Any]] = client.get("/nodes")
    else:
        rows = asyncio.run(_from_store(config))
    emit(chosen(output, as_json), rows, NODE_COLUMNS, title=f"{len(rows)} nodes")


async def _from_store(config_path: Any) -> list[dict[str, Any]]:
    from piman.web.api.nodes import NodeOut

    config = load(config_path)
    store = Store(config.database_url)
    await store.open()
    try:
        await reconcile(store, config)
        return [NodeOut.of(n).model_dump(mode="json") for n in await store.nodes.list()]
    finally:
        await store.close()


def register(app: typer.Typer) -> None:
    app.command("nodes")(nodes)
