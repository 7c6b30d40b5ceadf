"""``piman alerts``: what fires and what is pending, recent history, silences, and the outbox
of notifications (waiting, delivered, or given up on: dead).

Every command asks a running manager with ``--url``, or reads and writes the store directly
(silences written to the store are picked up by a running manager on its next evaluation).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.table import Table

from piman.cli.client import CaFileOption, ManagerClient, TokenOption, UrlOption, connect
from piman.cli.common import EXIT_BAD_INPUT, ConfigOption, console, fail, local_actor, with_store
from piman.config.types import parse_duration
from piman.errors import RuleError
from piman.fleet.ports import AlertRepository
from piman.fleet.records import OutboxItem, SilenceRecord
from piman.monitor.alerting.silences import make_silence

if TYPE_CHECKING:
    from piman.config.models import Config
    from piman.store import Store

__all__ = ["register"]

T = TypeVar("T")

app = typer.Typer(
    name="alerts",
    invoke_without_command=True,
    no_args_is_help=False,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _with_store(config: Path | None, fn: Callable[[AlertRepository], Awaitable[T]]) -> T:
    async def run(_cfg: Config, store: Store) -> T:
        return await fn(store.alerts)

    return with_store(config, run)


def _when(value: Any) -> str:
    if not value:
        return "-"
    if isinstance(value, int | float):
        when = datetime.fromtimestamp(value, UTC)
    elif isinstance(value, datetime):
        when = value
    else:
        when = datetime.fromisoformat(str(value))
    return when.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


async def _store_alerts(repo: AlertRepository, history: int) -> dict[str, Any]:
    states = await repo.states()
    rows = await repo.history(history) if history else []
    return {
        "alerts": [
            {
                "fingerprint": s.fingerprint,
                "alertname": s.rule,
                "state": s.state,
                "labels": s.labels,
                "annotations": s.annotations,
                "active_at": _iso(s.active_at),
                "starts_at": _iso(s.fired_at),
                "value": s.value,
                "late": s.late,
            }
            for s in states
            if s.state in ("pending", "firing")
        ],
        "history": [
            {
                "at": _iso(h.at),
                "alertname": h.rule,
                "state": h.state,
                "labels": h.labels,
                "value": h.value,
                "late": h.late,
            }
            for h in rows
        ],
    }


def _client(url: str, token: str | None, ca_file: Path | None) -> ManagerClient:
    return connect(url, token, ca_file)


@app.callback()
def alerts(
    ctx: typer.Context,
    config: ConfigOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
    history: Annotated[int, typer.Option(help="How many history entries to show.")] = 10,
    as_json: JsonOption = False,
) -> None:
    """List firing and pending alerts and recent history; manage silences (subcommands).

    With --url, asks a running manager; otherwise reads the store.

    Example: piman alerts --url http://127.0.0.1:8000
    """
    if ctx.invoked_subcommand is not None:
        return
    if url:
        with _client(url, token, ca_file) as client:
            data = client.get(f"/alerts?history={history}")
    else:
        data = _with_store(config, lambda repo: _store_alerts(repo, history))
    if as_json:
        console.print_json(json.dumps(data, default=str))
        return
    active = sorted(data["alerts"], key=lambda a: (a["state"] != "firing", a["active_at"]))
    table = Table(title=f"{len(active)} active alerts", title_justify="left")
    for col in ("state", "alert", "node", "value", "since", "summary"):
        table.add_column(col)
    for a in active:
        state = a["state"] + (" (silenced)" if a.get("silenced_by") else "")
        table.add_row(
            state,
            a["alertname"],
            a["labels"].get("node", "-"),
            f"{a['value']:g}",
            _when(a["starts_at"] or a["active_at"]),
            a["annotations"].get("summary", ""),
        )
    console.print(table)
    if data["history"]:
        hist = Table(title="recent history", title_justify="left")
        for col in ("at", "alert", "node", "state", "value"):
            hist.add_column(col)
        for h in data["history"]:
            hist.add_row(
                _when(h["at"]),
                h["alertname"],
                h["labels"].get("node", "-"),
                h["state"] + (" (late)" if h.get("late") else ""),
                f"{h['value']:g}",
            )
        console.print(hist)


@app.command("silence")
def silence(
    matchers: Annotated[list[str], typer.Argument(help='Label matchers, e.g. node="rack1-02"')],
    duration: Annotated[str, typer.Option("--for", help="How long, e.g. 30m, 2h, 1d.")] = "2h",
    comment: Annotated[str, typer.Option(help="Why (shown in `piman alerts silences`).")] = "",
    config: ConfigOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
) -> None:
    """Silence the alerts whose labels match every matcher, for a while.

    Matchers: name=value, name!=value, name=~regex, name!~regex.

    The silence is recorded as made by you: your account with --url, your local user without.

    Example: piman alerts silence alertname=NodeDown node=~"rack1-.*" --for 2h --comment "rewiring"
    """
    try:
        seconds = parse_duration(duration)
        record = make_silence(
            matchers, now=time.time(), duration=seconds, created_by=local_actor(), comment=comment
        )
    except (RuleError, ValueError) as err:
        fail(str(err), EXIT_BAD_INPUT)
    if url:
        body = {"matchers": record.matchers, "duration": duration, "comment": comment}
        with _client(url, token, ca_file) as client:
            made = client.post("/silences", body)
        console.print(f"silence {made['id']} until {_when(made['ends_at'])}: {made['matchers']}")
        return

    async def add(repo: AlertRepository) -> None:
        await repo.add_silence(record)

    _with_store(config, add)
    console.print(f"silence {record.id} until {_when(record.ends_at)}: {record.matchers}")


@app.command("silences")
def silences(
    show_all: Annotated[bool, typer.Option("--all", help="Include expired silences.")] = False,
    config: ConfigOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
    as_json: JsonOption = False,
) -> None:
    """List silences (active and pending; --all adds expired ones).

    Example: piman alerts silences --all
    """
    now = time.time()
    if url:
        with _client(url, token, ca_file) as client:
            rows = client.get("/silences")
    else:
        from piman.web.api.alerts import SilenceOut

        records = _with_store(config, lambda repo: repo.silences())
        rows = [SilenceOut.of(r, now).model_dump(mode="json") for r in records]
    if not show_all:
        rows = [r for r in rows if r["state"] != "expired"]
    if as_json:
        console.print_json(json.dumps(rows, default=str))
        return
    table = Table(title=f"{len(rows)} silences", title_justify="left")
    for col in ("id", "state", "matchers", "until", "by", "comment"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["id"][:8],
            r["state"],
            r["matchers"],
            _when(r["ends_at"]),
            r["created_by"],
            r["comment"],
        )
    console.print(table)


@app.command("expire")
def expire(
    silence_id: Annotated[str, typer.Argument(help="The silence's id (or a unique prefix).")],
    config: ConfigOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
) -> None:
    """End a silence now.

    Example: piman alerts expire 3f2a9c1e
    """
    if url:
        with _client(url, token, ca_file) as client:
            made = client.delete(f"/silences/{silence_id}")
        console.print(f"silence {made['id']} expired")
        return

    async def run(repo: AlertRepository) -> SilenceRecord:
        return await repo.expire_silence(silence_id, time.time())

    record = _with_store(config, run)
    console.print(f"silence {record.id} expired")


OUTBOX_STATES = ("pending", "dead", "undelivered", "delivered", "all")


def _outbox_row(item: OutboxItem) -> dict[str, Any]:
    from piman.web.api.alerts import OutboxOut

    return OutboxOut.of(item).model_dump(mode="json")


@app.command("outbox")
def outbox(
    state: Annotated[
        str,
        typer.Option(help="pending, dead, undelivered (pending and dead), delivered or all."),
    ] = "undelivered",
    retry_dead: Annotated[
        bool, typer.Option("--retry-dead", help="Send every dead notification again first.")
    ] = False,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many rows to show.")] = 50,
    config: ConfigOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Notifications per receiver: waiting, delivered, or dead (given up on after their last
    attempt, or refused by the receiver). --retry-dead queues the dead ones again.

    Example: piman alerts outbox --state dead
    """
    if state not in OUTBOX_STATES:
        fail(f"--state: {state!r} is not one of {', '.join(OUTBOX_STATES)}", EXIT_BAD_INPUT)
    wanted = None if state == "all" else state
    requeued: int | None = None
    if url:
        with _client(url, token, ca_file) as client:
            if retry_dead:
                requeued = client.post("/alerts/outbox/retry", {"ids": []})["requeued"]
            query = f"?limit={limit}" + (f"&state={wanted}" if wanted else "")
            rows = client.get(f"/alerts/outbox{query}")
    else:

        async def run(repo: AlertRepository) -> tuple[int | None, list[OutboxItem]]:
            count = await repo.requeue_dead(time.time()) if retry_dead else None
            return count, await repo.outbox(state=wanted, limit=limit)

        requeued, items = _with_store(config, run)
        rows = [_outbox_row(i) for i in items]
    if as_json:
        console.print_json(json.dumps(rows, default=str))
        return
    if requeued is not None:
        console.print(f"{requeued} dead notification(s) queued again")
    table = Table(title=f"{len(rows)} notifications ({state})", title_justify="left")
    for col in ("id", "receiver", "state", "alert", "queued", "attempts", "last error"):
        table.add_column(col)
    for r in rows:
        labels = r["group_labels"]
        what = " ".join(v for k, v in sorted(labels.items()) if k != "alertname")
        table.add_row(
            str(r["id"]),
            r["receiver"],
            r["state"],
            f"{r['status']} {labels.get('alertname', '')} {what}".strip(),
            _when(r["created_at"]),
            str(r["attempts"]),
            r["last_error"] or "",
        )
    console.print(table)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="alerts")
