"""``piman alerts``: what fires and what is pending, recent history, silences, and the outbox
of notifications (waiting, delivered, or given up on: dead).

Every command asks a running manager with ``--url``, or reads and writes the store directly
(silences written to the store are picked up by a running manager on its next evaluation).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from piman.cli.client import CaFileOption, ManagerClient, TokenOption, UrlOption, connect
from piman.cli.common import (
    EXIT_BAD_INPUT,
    ConfigOption,
    console,
    err_console,
    fail,
    local_actor,
    with_store,
)
from piman.cli.output import (
    Column,
    JsonFlag,
    Output,
    OutputOption,
    chosen,
    emit,
    print_data,
    print_table,
)
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

ALERT_COLUMNS = (
    Column(
        "state", lambda a: a["state"] + (" (silenced)" if a.get("silenced_by") else ""), priority=1
    ),
    Column("alert", "alertname", name=True),
    Column("node", lambda a: a["labels"].get("node"), name=True),
    Column("value", "value", priority=3, right=True),
    Column("since", lambda a: a["starts_at"] or a["active_at"], priority=2, time=True),
    Column("summary", lambda a: a["annotations"].get("summary"), priority=4, shrink=True),
    Column("labels", lambda a: _labels(a["labels"]), wide=True),
    Column("fingerprint", "fingerprint", wide=True),
)
HISTORY_COLUMNS = (
    Column("at", "at", priority=1, time=True),
    Column("alert", "alertname", name=True),
    Column("node", lambda h: h["labels"].get("node"), name=True),
    Column("state", lambda h: h["state"] + (" (late)" if h.get("late") else ""), priority=1),
    Column("value", "value", priority=2, right=True),
    Column("labels", lambda h: _labels(h["labels"]), wide=True),
)
SILENCE_COLUMNS = (
    Column("id", lambda r: r["id"][:8], name=True),
    Column("state", "state", priority=1),
    Column("matchers", "matchers", priority=2, shrink=True),
    Column("until", "ends_at", priority=3, time=True),
    Column("by", "created_by", priority=4),
    Column("comment", "comment", priority=5, shrink=True),
    Column("from", "starts_at", wide=True, time=True),
)


def _what(r: Mapping[str, Any]) -> str:
    labels = r["group_labels"]
    rest = " ".join(v for k, v in sorted(labels.items()) if k != "alertname")
    return f"{r['status']} {labels.get('alertname', '')} {rest}".strip()


OUTBOX_COLUMNS = (
    Column("id", "id", name=True, right=True),
    Column("receiver", "receiver", priority=5, shrink=True),
    Column("state", "state", priority=1),
    Column("alert", _what, priority=2, shrink=True),
    Column("queued", "created_at", priority=4, time=True),
    Column("attempts", "attempts", priority=6, right=True),
    Column("last error", "last_error", priority=3, shrink=True),
    Column("next attempt", "next_attempt_at", wide=True, time=True),
    Column("delivered", "delivered_at", wide=True, time=True),
    Column("dead", "dead_at", wide=True, time=True),
)


def _labels(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


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


def _dt(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


async def _store_alerts(repo: AlertRepository, history: int) -> dict[str, Any]:
    """What ``GET /api/v1/alerts`` answers, read from the store (no evaluation time: None)."""
    from piman.monitor.alerting.silences import Silence
    from piman.web.api.alerts import AlertOut, AlertsOut, HistoryOut

    now = time.time()
    states = await repo.states()
    rows = await repo.history(history) if history else []
    silences = []
    for record in await repo.silences(now=now):
        try:
            silences.append(Silence.of(record))
        except ValueError:  # a stored silence whose matchers no longer parse mutes nothing
            continue
    document = AlertsOut(
        alerts=[
            AlertOut(
                fingerprint=s.fingerprint,
                alertname=s.rule,
                state=s.state,
                labels=s.labels,
                annotations=s.annotations,
                active_at=_dt(s.active_at) or datetime.now(UTC),
                starts_at=_dt(s.fired_at),
                value=s.value,
                silenced_by=[x.id for x in silences if x.mutes(s.labels, now)],
                late=s.late,
            )
            for s in states
            if s.state in ("pending", "firing")
        ],
        history=[
            HistoryOut(
                at=_dt(h.at) or datetime.now(UTC),
                alertname=h.rule,
                state=h.state,
                labels=h.labels,
                value=h.value,
                late=h.late,
            )
            for h in rows
        ],
        last_evaluated=None,
    )
    return document.model_dump(mode="json")


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
    output: OutputOption = Output.TABLE,
    as_json: JsonFlag = False,
) -> None:
    """List firing and pending alerts and recent history; manage silences (subcommands).

    With --url, asks a running manager; otherwise reads the store. -o json and -o yaml print
    {alerts, history, last_evaluated} with absolute times.

    Examples:
      piman alerts --url http://127.0.0.1:8000
      piman alerts --history 50 -o wide
      piman alerts -o json | jq '.alerts[] | select(.state == "firing")'
    """
    if ctx.invoked_subcommand is not None:
        return
    if url:
        with _client(url, token, ca_file) as client:
            data = client.get(f"/alerts?history={history}")
    else:
        data = _with_store(config, lambda repo: _store_alerts(repo, history))
    fmt = chosen(output, as_json)
    if fmt in (Output.JSON, Output.YAML):
        print_data(data, fmt)
        return
    active = sorted(data["alerts"], key=lambda a: (a["state"] != "firing", a["active_at"]))
    wide = fmt is Output.WIDE
    print_table(active, ALERT_COLUMNS, wide=wide, title=f"{len(active)} active alerts")
    if data["history"]:
        console.print()
        print_table(data["history"], HISTORY_COLUMNS, wide=wide, title="recent history")


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
        console.print(
            f"silence {made['id']} until {_when(made['ends_at'])}: {made['matchers']}",
            markup=False,
        )
        return

    async def add(repo: AlertRepository) -> None:
        await repo.add_silence(record)

    _with_store(config, add)
    console.print(
        f"silence {record.id} until {_when(record.ends_at)}: {record.matchers}", markup=False
    )


@app.command("silences")
def silences(
    show_all: Annotated[bool, typer.Option("--all", help="Include expired silences.")] = False,
    config: ConfigOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
    output: OutputOption = Output.TABLE,
    as_json: JsonFlag = False,
) -> None:
    """List silences (active and pending; --all adds expired ones).

    With --url, asks a running manager; otherwise reads the store.

    Examples:
      piman alerts silences --all
      piman alerts silences -o yaml
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
    emit(chosen(output, as_json), rows, SILENCE_COLUMNS, title=f"{len(rows)} silences")


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
    output: OutputOption = Output.TABLE,
    as_json: JsonFlag = False,
) -> None:
    """Notifications per receiver: waiting, delivered, or dead.

    Dead: given up on after their last attempt, or refused by the receiver. --retry-dead
    queues the dead ones again.

    Examples:
      piman alerts outbox --state dead
      piman alerts outbox --state all -o wide
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
    fmt = chosen(output, as_json)
    if requeued is not None:
        note = f"{requeued} dead notification(s) queued again"
        # With json or yaml, standard output holds the records only.
        (err_console if fmt in (Output.JSON, Output.YAML) else console).print(note, markup=False)
    emit(fmt, rows, OUTBOX_COLUMNS, title=f"{len(rows)} notifications ({state})")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="alerts")
