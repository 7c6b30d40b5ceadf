"""``piman discover``: find Pis on the network and offer to add them as nodes.

Sources: the running manager's discovered list (DHCP and TFTP sightings; with ``--url``), this
machine's neighbour table (after an optional ``--sweep`` of the scope), mDNS (``--mdns
SECONDS``) and the configured SNMP switches' forwarding and LLDP tables (unless
``--no-switches``). The scope is the manager's network (``manager.network``) unless
``--subnet`` names another. ``--accept`` makes candidates nodes (through the manager with
``--url``, else in the store) and prints the lines that declare them in the config.
"""

from __future__ import annotations

import asyncio
import ipaddress
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

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
from piman.cli.output import Column, JsonFlag, Output, OutputOption, chosen, emit, print_data
from piman.config import Config, default_config_path
from piman.config.types import check_name, parse_mac
from piman.errors import ConflictError, PimanError
from piman.fleet.records import DiscoveredDevice
from piman.inventory import mdns, neighbours
from piman.inventory.discover import Candidate, Observation, from_discovered, merge, node_line
from piman.inventory.scan import ScanPlan, ScanResult, run

__all__ = ["CANDIDATE_COLUMNS", "register"]

CANDIDATE_COLUMNS = (
    Column("mac", "mac", name=True),
    Column("vendor", "vendor", priority=1),
    Column("ip", "ip", priority=2),
    Column("model", "model", priority=3),
    Column("hostname", "hostname", priority=4),
    Column("switch:port", "switch_port", priority=5),
    Column("sources", lambda r: ",".join(r["source_names"]), priority=6),
    Column("node", "node", priority=7),
)


@dataclass(frozen=True, slots=True)
class _Wanted:
    mac: str
    name: str | None


def _accept_specs(specs: Sequence[str]) -> list[_Wanted]:
    wanted = []
    for spec in specs:
        mac_text, _, name = spec.partition("=")
        try:
            mac = parse_mac(mac_text)
            if name:
                check_name(name)
        except ValueError as err:
            fail(f"--accept {spec}: {err}", EXIT_BAD_INPUT)
        wanted.append(_Wanted(mac, name or None))
    return wanted


class _Progress:
    """One status line on stderr (rewritten in place on a terminal; start and end lines else)."""

    def __init__(self) -> None:
        self.live = sys.stderr.isatty()
        self.parts: dict[str, str] = {}

    def __call__(self, source: str, text: str) -> None:
        first = source not in self.parts
        self.parts[source] = text
        if self.live:
            line = " · ".join(f"{k}: {v}" for k, v in self.parts.items())
            sys.stderr.write("\r\x1b[K" + line)
            sys.stderr.flush()
        elif first:
            err_console.print(f"{source}: {text}", markup=False)

    def done(self) -> None:
        if self.live and self.parts:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
        for source, text in self.parts.items():
            err_console.print(f"{source}: {text}", markup=False)


def _record(c: Candidate) -> dict[str, Any]:
    return {
        "mac": c.mac,
        "vendor": c.vendor,
        "model": c.model,
        "ip": c.ip,
        "hostname": c.hostname,
        "switch": c.switch,
        "port": c.port,
        "switch_port": c.switch_port,
        "node": c.node,
        "source_names": c.source_names,
        "sources": [
            {"source": s.source, "where": s.where, "when": s.when.isoformat()} for s in c.sources
        ],
    }


def _discovered(rows: Sequence[Mapping[str, Any]]) -> list[DiscoveredDevice]:
    return [
        DiscoveredDevice(
            mac=r["mac"],
            first_seen=datetime.fromisoformat(r["first_seen"]),
            last_seen=datetime.fromisoformat(r["last_seen"]),
            sightings=int(r["sightings"]),
            ip=r.get("ip"),
            serial=r.get("serial"),
            model=r.get("model"),
            vendor_class=r.get("vendor_class"),
        )
        for r in rows
    ]


def _scope(cfg: Config | None, subnet: str | None) -> ipaddress.IPv4Network | None:
    if subnet is not None:
        try:
            return ipaddress.IPv4Network(subnet.strip(), strict=False)
        except ValueError:
            fail(f"--subnet {subnet!r} is not an IPv4 network (e.g. 198.18.0.0/24)", EXIT_BAD_INPUT)
    return cfg.manager.effective_network if cfg is not None else None


def _config(config: Path | None, url: str | None) -> Config | None:
    """The config; with ``--url`` it is optional (none given and no default file: None)."""
    if url and config is None and not default_config_path().exists():
        return None
    return load(config)


async def _known_in_store(cfg: Config) -> dict[str, str]:
    from piman.store import Store

    store = Store(cfg.database_url)
    await store.open()
    try:
        known = {n.mac: n.name for n in await store.nodes.list() if n.mac}
    finally:
        await store.close()
    known.update({n.mac: n.name for n in cfg.nodes if n.mac})
    return known


def discover(
    subnet: Annotated[
        str | None,
        typer.Option(
            help="The subnet to look at (default: the config's manager.network).",
            show_default=False,
        ),
    ] = None,
    sweep: Annotated[
        bool, typer.Option("--sweep", help="First send one UDP datagram to every address of it.")
    ] = False,
    rate: Annotated[
        float,
        typer.Option(min=1, max=neighbours.MAX_RATE, help="Sweep datagrams a second."),
    ] = neighbours.DEFAULT_RATE,
    force: Annotated[
        bool,
        typer.Option("--force", help=f"Sweep a subnet larger than a /{neighbours.MAX_PREFIX}."),
    ] = False,
    mdns_seconds: Annotated[
        float,
        typer.Option(
            "--mdns",
            min=0,
            max=60,
            metavar="SECONDS",
            help="Listen to mDNS (_ssh, _workstation) for this long (0: not at all).",
        ),
    ] = 0.0,
    no_switches: Annotated[
        bool, typer.Option("--no-switches", help="Do not read the switches' tables.")
    ] = False,
    known: Annotated[
        bool, typer.Option("--known", help="Also list devices that are nodes already.")
    ] = False,
    accept: Annotated[
        list[str] | None,
        typer.Option(
            "--accept",
            metavar="MAC[=NAME]",
            help="Make this candidate a node (repeatable; default name pi-<mac>).",
        ),
    ] = None,
    accept_all_pis: Annotated[
        bool, typer.Option("--accept-all-pis", help="Make every Raspberry Pi candidate a node.")
    ] = False,
    config: ConfigOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
    output: OutputOption = Output.TABLE,
    as_json: JsonFlag = False,
) -> None:
    """Find Pis: DHCP/TFTP sightings, the neighbour table, mDNS and the switches' MAC tables.

    Raspberry Pis (by MAC prefix) come first. Only the manager's own network is looked at unless
    --subnet names another; --sweep pokes each of its addresses first (a /20 at most without
    --force). --accept makes candidates nodes (through the manager with --url, else in the
    store) and prints the lines to paste under `nodes:` in the config.

    Examples:
      piman discover --url http://127.0.0.1:8000 --sweep --mdns 3
      piman discover --subnet 192.168.1.0/24 --sweep -o json
      piman discover --url http://127.0.0.1:8000 --accept dc:a6:32:01:02:03=rack1-07
    """
    wanted = _accept_specs(accept or [])
    cfg = _config(config, url)
    scope = _scope(cfg, subnet)
    if sweep:
        if scope is None:
            fail("--sweep needs --subnet (or a config with manager.network)", EXIT_BAD_INPUT)
        try:
            neighbours.check_scope(scope, force=force)
        except ValueError as err:
            fail(str(err), EXIT_BAD_INPUT)
    client: ManagerClient | None = None
    if url:
        local_key = cfg.manager.data_dir / "local.key" if cfg is not None else None
        client = connect(url, token, ca_file, local_key=local_key)
    try:
        _discover(
            cfg, client, scope, wanted,
            ScanPlan(
                scope=scope, sweep=sweep, rate=rate, mdns_seconds=mdns_seconds,
                mdns_max=mdns.MAX_DEVICES,
                switches=() if no_switches or cfg is None else cfg.switches,
                own=[str(cfg.manager.address)] if cfg is not None else [],
            ),
            include_known=known, accept_all_pis=accept_all_pis, output=chosen(output, as_json),
        )  # fmt: skip
    finally:
        if client is not None:
            client.close()


def _discover(
    cfg: Config | None,
    client: ManagerClient | None,
    scope: ipaddress.IPv4Network | None,
    wanted: list[_Wanted],
    plan: ScanPlan,
    *,
    include_known: bool,
    accept_all_pis: bool,
    output: Output,
) -> None:
    observations: list[Observation] = []
    if client is not None:
        nodes = client.get("/nodes")
        known = {n["mac"]: n["name"] for n in nodes if n.get("mac")}
        listed = client.get("/discovered", missing_ok=True) or []
        observations += from_discovered(_discovered(listed), f"manager {client.url}")
    else:
        assert cfg is not None
        try:
            known = asyncio.run(_known_in_store(cfg))
        except PimanError as err:
            fail(str(err))
    progress = _Progress()
    scanned: ScanResult = asyncio.run(run(plan, progress))
    progress.done()
    for problem in scanned.problems:
        err_console.print(f"warning: {problem}", markup=False, soft_wrap=True)
    observations += scanned.observations
    candidates = merge(observations, known=known, include_known=include_known)
    records = [_record(c) for c in candidates]
    title = f"{len(candidates)} candidates" + (f" in {scope}" if scope is not None else "")
    if not wanted and not accept_all_pis:
        emit(output, records, CANDIDATE_COLUMNS, title=title)
        return
    chosen_ = _chosen(candidates, wanted, accept_all_pis)
    accepted, failed = _accept(cfg, client, chosen_)
    if output in (Output.JSON, Output.YAML):
        print_data({"candidates": records, "accepted": accepted}, output)
    else:
        emit(output, records, CANDIDATE_COLUMNS, title=title)
        _report(accepted)
    if failed:
        fail(f"{failed} of {len(chosen_)} device(s) were not added as nodes", EXIT_FAILED)


def _chosen(
    candidates: list[Candidate], wanted: list[_Wanted], all_pis: bool
) -> list[tuple[Candidate, str | None]]:
    by_mac = {c.mac: c for c in candidates if c.mac is not None}
    out: dict[str, tuple[Candidate, str | None]] = {}
    for w in wanted:
        c = by_mac.get(w.mac)
        if c is None:
            fail(f"--accept {w.mac}: not among the candidates found", EXIT_BAD_INPUT)
        out[w.mac] = (c, w.name)
    if all_pis:
        for c in candidates:
            if c.is_pi and c.mac is not None and c.node is None:
                out.setdefault(c.mac, (c, None))
    return list(out.values())


def _yaml(cfg: Config | None, c: Candidate, name: str) -> str:
    network = cfg.manager.effective_network if cfg is not None else None
    switches = [s.name for s in cfg.switches] if cfg is not None else []
    return node_line(c, name, network=network, switches=switches)


def _accept(
    cfg: Config | None, client: ManagerClient | None, chosen_: list[tuple[Candidate, str | None]]
) -> tuple[list[dict[str, Any]], int]:
    """Each chosen candidate made a node; the outcome per device and how many failed."""
    outcomes: list[dict[str, Any]] = []
    failed = 0
    to_store: list[tuple[Candidate, str]] = []
    for c, name in chosen_:
        assert c.mac is not None
        default = name or "pi-" + c.mac.replace(":", "")
        if c.node is not None:
            outcomes.append(_outcome(c, c.node, False, f"is node {c.node} already", cfg))
            continue
        if client is None:
            to_store.append((c, default))
            continue
        netboot = {s.source for s in c.sources} & {"dhcp", "tftp"}
        if not netboot:
            failed += 1
            why = "the manager never saw it netboot (not in its discovered list): declare it"
            outcomes.append(_outcome(c, default, False, why, cfg))
            continue
        body = {"name": name} if name else {}
        node = client.post(f"/discovered/{c.mac}/accept", body)
        outcomes.append(_outcome(c, node["name"], True, "accepted by the manager", cfg))
    if to_store:
        assert cfg is not None
        try:
            done = asyncio.run(_store_accept(cfg, to_store))
        except PimanError as err:
            fail(str(err))
        for (c, name), error in zip(to_store, done, strict=True):
            if error is None:
                outcomes.append(_outcome(c, name, True, "added to the store", cfg))
            else:
                failed += 1
                outcomes.append(_outcome(c, name, False, error, cfg))
    return outcomes, failed


def _outcome(
    c: Candidate, name: str, added: bool, detail: str, cfg: Config | None
) -> dict[str, Any]:
    return {"mac": c.mac, "node": name, "added": added, "detail": detail,
            "yaml": _yaml(cfg, c, name)}  # fmt: skip


async def _store_accept(cfg: Config, chosen_: list[tuple[Candidate, str]]) -> list[str | None]:
    """Each candidate as a ``new`` node in the store (what ``Sightings.accept`` records), after
    the config's nodes (so that a name the config declares is taken)."""
    from piman.store import Store, reconcile

    store = Store(cfg.database_url)
    await store.open()
    errors: list[str | None] = []
    try:
        await reconcile(store, cfg)
        for c, name in chosen_:
            assert c.mac is not None
            try:
                node = await store.nodes.record_sighting(c.mac, ip=c.ip, model=c.model, name=name)
            except ConflictError as err:
                errors.append(str(err))
                continue
            await store.audit.add(local_actor(), "node.accept", node.name, "ok", f"mac {c.mac}")
            errors.append(None)
    finally:
        await store.close()
    return errors


def _report(outcomes: list[dict[str, Any]]) -> None:
    console.print()
    for o in outcomes:
        mark = "added" if o["added"] else "not added"
        console.print(f"{o['mac']}: {mark} as {o['node']} ({o['detail']})", markup=False)
    console.print("\nDeclare them in the config, under `nodes:`:", markup=False)
    for o in outcomes:
        console.print(o["yaml"], markup=False, highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("discover")(discover)
