"""``piman reserve``, ``piman reservations``, ``piman extend``, ``piman release``.

They talk to a running manager (whose timers start, warn and end reservations): ``--url``, else
the one the configuration describes (as root on the manager machine, no token is needed there).
A refusal is one line from the manager: who holds the nodes, and when the request would fit.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from piman.cli.client import CaFileOption, ManagerClient, TokenOption, UrlOption, connect
from piman.cli.common import EXIT_BAD_INPUT, ConfigOption, console, err_console, fail, load
from piman.cli.output import Column, JsonFlag, Output, OutputOption, chosen, emit, relative
from piman.config.types import parse_duration

__all__ = ["RESERVATION_COLUMNS", "parse_start", "register"]

DEFAULT_KEYS = ("id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub")

RESERVATION_COLUMNS = (
    Column("id", "id", name=True, right=True),
    Column("owner", "owner", priority=1),
    Column("state", "state", priority=2),
    Column("ends", "end_at", priority=3, time=True),
    Column("nodes", lambda r: ", ".join(r["nodes"]), priority=4, shrink=True),
    Column("starts", "start_at", priority=5, time=True),
    Column("env", "environment", priority=6),
    Column("extended", "extensions", wide=True, right=True),
    Column("reason", "reason", wide=True),
)


def _manager(
    config: Path | None, url: str | None, token: str | None, ca: Path | None
) -> ManagerClient:
    """``--url``, else the manager of the configuration (root there needs no token)."""
    local_key = None
    if not url:
        cfg = load(config)
        host, port = cfg.manager.http_host_port
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        url = f"{'https' if cfg.manager.tls is not None else 'http'}://{host}:{port}"
        local_key = cfg.manager.data_dir / "local.key"
    return connect(url, token, ca, local_key=local_key)


def _seconds(option: str, text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as err:
        fail(f"{option}: {err}", EXIT_BAD_INPUT)
    if seconds <= 0:
        fail(f"{option}: give more than 0 s (e.g. 2h)", EXIT_BAD_INPUT)
    return seconds


def parse_start(text: str, now: datetime) -> datetime:
    """When a reservation starts: ``now``, ``+30m`` or ``in 30m``, ``14:00`` (the next one, in
    local time), or a date and time (``2026-12-06 14:00``, local unless it gives a zone).
    ValueError saying what is expected."""
    value = text.strip()
    if value.lower() == "now":
        return now
    relative_to = re.fullmatch(r"(?:\+|in\s+)(.+)", value, flags=re.IGNORECASE)
    if relative_to:
        return now + timedelta(seconds=parse_duration(relative_to.group(1)))
    local = now.astimezone()
    clock = re.fullmatch(r"(\d{1,2}):(\d{2})", value)
    if clock:
        hour, minute = int(clock.group(1)), int(clock.group(2))
        if hour > 23 or minute > 59:
            raise ValueError(f"{text!r} is not a time of day")
        at = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
        return (at if at > local else at + timedelta(days=1)).astimezone(UTC)
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a start (expected now, +30m, 14:00 or 2026-12-06T14:00)"
        ) from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=local.tzinfo)
    return at.astimezone(UTC)


def _keys(files: list[Path], env: str | None) -> list[str]:
    """The public keys of ``--ssh-key`` files; with an environment and none given, the user's
    own ``~/.ssh/id_*.pub`` (said on stderr)."""
    if not files and env is not None:
        ssh = Path.home() / ".ssh"
        files = [ssh / name for name in DEFAULT_KEYS if (ssh / name).is_file()]
        if files:
            err_console.print(
                f"with SSH keys {', '.join(str(f) for f in files)}", markup=False, soft_wrap=True
            )
    keys = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            fail(f"--ssh-key {path}: {err.strerror or err}", EXIT_BAD_INPUT)
        keys += [line.strip() for line in text.splitlines() if line.strip()]
    return keys


def _when(text: str, now: datetime) -> str:
    at = datetime.fromisoformat(text)
    return f"{at.astimezone():%Y-%m-%d %H:%M} ({relative(at, now)})"


def _say(r: Mapping[str, Any], verb: str) -> None:
    now = datetime.now(UTC)
    line = f"reservation {r['id']} {verb}: {', '.join(r['nodes'])} for {r['owner']}, {r['state']}"
    if r["state"] == "scheduled":
        line += f", from {_when(r['start_at'], now)}"
    if r["state"] in ("scheduled", "active"):
        line += f", until {_when(r['end_at'], now)}"
    if r.get("environment") and r["state"] != "released":
        line += f", with {r['environment']}"
    console.print(line, markup=False, soft_wrap=True)


def reserve(
    nodes: Annotated[
        list[str] | None, typer.Argument(help="Nodes by name (or use --count and filters).")
    ] = None,
    duration: Annotated[
        str, typer.Option("--for", help="How long: 30m, 2h, 1d.", show_default=False)
    ] = "",
    count: Annotated[
        int | None, typer.Option("--count", "-n", help="How many nodes matching the filters.")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="Only this model: pi4, pi3…")] = None,
    switch: Annotated[str | None, typer.Option("--switch", help="Only on this switch.")] = None,
    tags: Annotated[
        list[str] | None, typer.Option("--tag", help="Only nodes with this tag (repeat).")
    ] = None,
    start: Annotated[
        str | None,
        typer.Option("--start", help="now (default), +30m, 14:00, or 2026-12-06T14:00."),
    ] = None,
    env: Annotated[
        str | None, typer.Option("--env", help="Deploy this environment at the start.")
    ] = None,
    ssh_keys: Annotated[
        list[Path] | None,
        typer.Option(
            "--ssh-key",
            help="A public key file for the deployment (repeat; default with --env: "
            "~/.ssh/id_*.pub).",
        ),
    ] = None,
    owner: Annotated[
        str | None, typer.Option("--owner", help="Book for this user (operators, admins).")
    ] = None,
    config: ConfigOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """Reserve nodes for a time: by name, or --count nodes matching --model/--switch/--tag.

    A refusal says who holds the nodes and when the same request would fit.

    Examples:
      piman reserve --count 2 --model pi4 --for 2h --env raspios-lite
      piman reserve rack1-03 rack1-04 --for 30m --start 14:00
    """
    if not duration:
        fail("say how long with --for (e.g. --for 2h)", EXIT_BAD_INPUT)
    seconds = _seconds("--for", duration)
    if nodes and (count is not None or model or switch or tags):
        fail("name nodes, or give --count with filters, not both", EXIT_BAD_INPUT)
    if not nodes and count is None and not (model or switch or tags):
        fail("name nodes, or give --count N (e.g. --count 2 --model pi4)", EXIT_BAD_INPUT)
    body: dict[str, Any] = {"duration": seconds}
    if nodes:
        body["nodes"] = nodes
    else:
        body.update(count=count or 1, model=model, switch=switch, tags=tags or [])
    if start is not None:
        try:
            body["start"] = parse_start(start, datetime.now(UTC)).isoformat()
        except ValueError as err:
            fail(f"--start: {err}", EXIT_BAD_INPUT)
    if env is not None:
        body["environment"] = env
    keys = _keys(ssh_keys or [], env)
    if keys:
        body["ssh_keys"] = keys
    if owner is not None:
        body["owner"] = owner
    with _manager(config, url, token, ca_file) as client:
        made = client.post("/reservations", body)
    if output in (Output.JSON, Output.YAML):
        emit(output, [made], RESERVATION_COLUMNS, data=made)
        return
    _say(made, "booked")


def reservations(
    show_all: Annotated[
        bool, typer.Option("--all", "-a", help="Also those that are over.")
    ] = False,
    owner: Annotated[str | None, typer.Option("--owner", help="Only this user's.")] = None,
    config: ConfigOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
    output: OutputOption = Output.TABLE,
    as_json: JsonFlag = False,
) -> None:
    """List reservations: yours (a user's), or everyone's; live ones unless --all.

    Examples:
      piman reservations
      piman reservations --all -o wide
      piman reservations -o json | jq '.[] | select(.state == "active") | .nodes'
    """
    query = "?live=true" if not show_all else ""
    if owner:
        query += ("&" if query else "?") + f"owner={owner}"
    with _manager(config, url, token, ca_file) as client:
        rows: list[dict[str, Any]] = client.get("/reservations" + query)
    title = f"{len(rows)} reservation{'s' if len(rows) != 1 else ''}"
    emit(chosen(output, as_json), rows, RESERVATION_COLUMNS, title=title)


def extend(
    reservation: Annotated[int, typer.Argument(help="The reservation's id.")],
    by: Annotated[str, typer.Option("--by", help="How much longer: 30m, 1h.")] = "",
    config: ConfigOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
) -> None:
    """Move a reservation's end later (within your limits; up to the next reservation).

    Example: piman extend 12 --by 1h
    """
    if not by:
        fail("say how much longer with --by (e.g. --by 1h)", EXIT_BAD_INPUT)
    seconds = _seconds("--by", by)
    with _manager(config, url, token, ca_file) as client:
        done = client.post(f"/reservations/{reservation}/extend", {"by": seconds})
    _say(done, "extended")


def release(
    reservation: Annotated[int, typer.Argument(help="The reservation's id.")],
    config: ConfigOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
) -> None:
    """End a reservation now: its nodes are powered off (or redeployed) and go back to the
    pool; one that has not started is cancelled.

    Example: piman release 12
    """
    with _manager(config, url, token, ca_file) as client:
        done = client.post(f"/reservations/{reservation}/release")
    _say(done, "cancelled" if done["state"] == "cancelled" else "released")


def register(app: typer.Typer) -> None:
    app.command("reserve")(reserve)
    app.command("reservations")(reservations)
    app.command("extend")(extend)
    app.command("release")(release)
