"""``piman ssh run|keygen|push-key|forget|hostkeys``: commands on the fleet and its keys.

``run`` works from the configuration (this machine logs in to the nodes with the fleet key) or,
with ``--url``, through a running manager (``POST /api/v1/ssh/run``, streamed as NDJSON; the
manager checks who may run what where). Output is the same either way: each host's lines as
``name: line`` as soon as the host is done (``--group``: one block per distinct output, naming
its hosts), then a summary table. Exit 0 only when every host ran the command and it exited 0.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from collections.abc import Mapping
from typing import Annotated, Any

import typer

from piman.cli.client import CaFileOption, TokenOption, UrlOption, connect
from piman.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    ConfigOption,
    console,
    err_console,
    fail,
    load,
)
from piman.cli.output import Column, print_table
from piman.config.models import Config
from piman.errors import ConflictError, NotFoundError, PimanError

__all__ = ["register"]

ssh_app = typer.Typer(
    help="Commands on nodes over SSH, and the fleet key: run, keygen, push-key, forget, hostkeys.",
    no_args_is_help=True,
)

TargetsArg = Annotated[
    list[str] | None,
    typer.Argument(
        help="Node names, switch:port, all, or inventory group names (switch_rack1, model_pi4, "
        "state_deployed, owner_alice, env_bookworm, a tag).",
        show_default=False,
    ),
]

SUMMARY_COLUMNS = (
    Column("host", "node", name=True),
    Column("exit", lambda r: "-" if r["exit_status"] is None else r["exit_status"], right=True),
    Column("time", lambda r: f"{r['elapsed']:.1f} s", priority=2, right=True),
    Column("error", lambda r: _error(r), priority=1, shrink=True, missing=""),
)


def _error(r: Mapping[str, Any]) -> str | None:
    parts = [r["error"]] if r.get("error") else []
    if r.get("truncated"):
        parts.append("output truncated")
    return "; ".join(parts) or None


def _ok(r: Mapping[str, Any]) -> bool:
    return not r.get("error") and r.get("exit_status") == 0


class _Printer:
    """Prints results as they come (``name: line``), or grouped by identical output at the end."""

    def __init__(self, group: bool) -> None:
        self.group = group
        self.results: list[dict[str, Any]] = []

    def add(self, r: dict[str, Any]) -> None:
        self.results.append(r)
        if self.group:
            return
        name = r["node"]
        _write(sys.stdout, "".join(f"{name}: {line}\n" for line in r["stdout"].splitlines()))
        _write(sys.stderr, "".join(f"{name}: {line}\n" for line in r["stderr"].splitlines()))

    def finish(self) -> int:
        """Blocks (``--group``) and the summary, hosts in natural name order; the exit code."""
        self.results.sort(key=lambda r: _natural(r["node"]))
        if self.group:
            blocks: dict[tuple[str, str], list[str]] = {}
            for r in self.results:
                if r["stdout"] or r["stderr"] or not r.get("error"):
                    blocks.setdefault((r["stdout"], r["stderr"]), []).append(r["node"])
            for (out, err), names in blocks.items():
                _write(sys.stdout, f"==> {', '.join(names)} ({len(names)}) <==\n")
                _write(sys.stdout, out if out.endswith("\n") or not out else out + "\n")
                _write(sys.stderr, err if err.endswith("\n") or not err else err + "\n")
                if not out and not err:
                    _write(sys.stdout, "(no output)\n")
        ok = sum(1 for r in self.results if _ok(r))
        sys.stdout.flush()
        console.print()
        print_table(
            self.results,
            SUMMARY_COLUMNS,
            title=f"{ok} of {len(self.results)} hosts ok",
        )
        for r in self.results:  # whole, whatever the width of the table
            if r.get("error"):
                err_console.print(f"error: {r['node']}: {r['error']}", markup=False, soft_wrap=True)
        return 0 if ok == len(self.results) else EXIT_FAILED


def _natural(name: str) -> list[tuple[int, int | str]]:
    """rack1-pi2 before rack1-pi10."""
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", name) if p]


def _write(stream: Any, text: str) -> None:
    if text:
        stream.write(text)
        stream.flush()


class _Notes(logging.Handler):
    """What the SSH client logs at INFO (a host key learnt on first contact) as a stderr line."""

    def emit(self, record: logging.LogRecord) -> None:
        err_console.print(f"note: {record.getMessage()}", markup=False, soft_wrap=True)


def _notes_on() -> None:
    log = logging.getLogger("piman.inventory.ssh")
    log.setLevel(logging.INFO)
    log.addHandler(_Notes())


@ssh_app.command("run")
def run(
    command: Annotated[str, typer.Argument(help="The command line, run by the login shell.")],
    targets: TargetsArg = None,
    config: ConfigOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
    reserved: Annotated[
        bool, typer.Option("--reserved", help="The nodes of your active reservations (--url).")
    ] = False,
    group: Annotated[
        bool, typer.Option("--group", help="One block per distinct output, naming its hosts.")
    ] = False,
    concurrency: Annotated[
        int | None,
        typer.Option(min=1, max=1000, help="Hosts at once (default: ssh.concurrency)."),
    ] = None,
    connect_timeout: Annotated[
        float | None,
        typer.Option(min=0.1, help="Seconds to connect and log in (default: ssh.connect_timeout)."),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(min=0.1, help="Seconds the command may run (default: ssh.command_timeout)."),
    ] = None,
) -> None:
    """Run a command on nodes over SSH with the fleet key; exit 0 only if it exits 0 everywhere.

    Examples:
      piman ssh run uptime all
      piman ssh run "vcgencmd measure_temp" switch_rack1 --group
      piman ssh run "sudo apt-get -y upgrade" model_pi4 --timeout 600 --concurrency 10
      piman ssh run "df -h /" --reserved --url https://manager:8000
    """
    specs = list(targets or [])
    if reserved and not url:
        fail("--reserved needs --url (the manager knows your reservations)", EXIT_BAD_INPUT)
    if not specs and not reserved:
        fail("name the targets: node names, switch:port, all or groups", EXIT_BAD_INPUT)
    printer = _Printer(group)
    if url:
        body: dict[str, Any] = {"command": command, "targets": specs, "reserved": reserved}
        for key, value in (
            ("connect_timeout", connect_timeout),
            ("command_timeout", timeout),
            ("concurrency", concurrency),
        ):
            if value is not None:
                body[key] = value
        with connect(url, token, ca_file) as client:
            for line in client.ndjson("POST", "/ssh/run", body):
                if isinstance(line, dict) and "node" in line:
                    printer.add(line)
    else:
        cfg = load(config)
        _notes_on()
        try:
            asyncio.run(
                _run_local(cfg, specs, command, printer, connect_timeout, timeout, concurrency)
            )
        except (NotFoundError, ValueError) as err:
            fail(str(err), EXIT_BAD_INPUT)
        except PimanError as err:
            fail(str(err))
    raise typer.Exit(printer.finish())


async def _run_local(
    cfg: Config,
    specs: list[str],
    command: str,
    printer: _Printer,
    connect_timeout: float | None,
    command_timeout: float | None,
    concurrency: int | None,
) -> None:
    from piman.inventory.ssh import FleetSsh
    from piman.store import Store

    store = Store(cfg.database_url)
    await store.open()
    try:
        fleet = FleetSsh(cfg, store)
        targets = await fleet.targets(specs)
        fleet.client_key()  # no key: one line now, not one per host
        async for r in fleet.stream(
            targets,
            command,
            connect_timeout=connect_timeout,
            command_timeout=command_timeout,
            concurrency=concurrency,
        ):
            printer.add(r.as_line())
    finally:
        await store.close()


@ssh_app.command("keygen")
def keygen(
    config: ConfigOption = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing fleet key.")] = False,
) -> None:
    """Make the fleet key pair (ed25519) at ssh.key_file (default data_dir/ssh/id_ed25519) and
    print its public line; `piman ssh push-key` installs it on the nodes.

    Example: piman ssh keygen && piman ssh push-key all
    """
    from piman.inventory.ssh_keys import keygen as make_key

    cfg = load(config)
    path = cfg.ssh.key_path(cfg.manager.data_dir)
    try:
        line = make_key(path, force=force)
    except ConflictError as err:
        fail(str(err))
    except OSError as err:
        fail(f"cannot write {path}: {err.strerror or err}")
    err_console.print(f"fleet key written to {path} (public half: {path}.pub)", markup=False)
    _write(sys.stdout, line + "\n")


PUSH_COLUMNS = (
    Column("host", "name", name=True),
    Column("address", "host", priority=2),
    Column("result", "what", priority=1, shrink=True),
)


@ssh_app.command("push-key")
def push_key(
    targets: TargetsArg = None,
    config: ConfigOption = None,
    concurrency: Annotated[
        int | None, typer.Option(min=1, max=1000, help="Hosts at once (default: ssh.concurrency).")
    ] = None,
) -> None:
    """Install the fleet key on nodes: where it is refused, log in once with the image's
    password (ssh.password or ssh.password_file) if ssh.push_key.use_password allows, add the
    key to ~/.ssh/authorized_keys, and turn password login off if ssh.push_key.disable_password
    says so. One line per host says what was done.

    Example: piman ssh push-key all
    """
    specs = list(targets or [])
    if not specs:
        fail("name the targets: node names, switch:port, all or groups", EXIT_BAD_INPUT)
    cfg = load(config)
    _notes_on()
    try:
        outcomes = asyncio.run(_push_local(cfg, specs, concurrency))
    except (NotFoundError, ValueError) as err:
        fail(str(err), EXIT_BAD_INPUT)
    except PimanError as err:
        fail(str(err))
    rows = [{"name": o.name, "host": o.host, "what": o.what, "ok": o.ok} for o in outcomes]
    ok = sum(1 for o in outcomes if o.ok)
    print_table(rows, PUSH_COLUMNS, title=f"fleet key works on {ok} of {len(rows)} hosts")
    raise typer.Exit(0 if ok == len(rows) else EXIT_FAILED)


async def _push_local(cfg: Config, specs: list[str], concurrency: int | None) -> list[Any]:
    from piman.inventory.ssh import FleetSsh
    from piman.inventory.ssh_keys import configured_password, public_key
    from piman.inventory.ssh_keys import push_key as push
    from piman.store import Store

    password = configured_password(cfg.ssh)
    store = Store(cfg.database_url)
    await store.open()
    try:
        fleet = FleetSsh(cfg, store)
        targets = await fleet.targets(specs)
        public_key(fleet)  # no key: one line now
        return await push(fleet, targets, password=password, concurrency=concurrency)
    finally:
        await store.close()


@ssh_app.command("forget")
def forget(
    nodes: Annotated[list[str], typer.Argument(help="Node names (or addresses).")],
    config: ConfigOption = None,
) -> None:
    """Forget the known host keys of nodes (after a reinstall gave them new ones); the next
    contact learns the new key (host_keys: tofu).

    Example: piman ssh forget rack1-07
    """
    cfg = load(config)
    try:
        forgotten = asyncio.run(_forget(cfg, nodes))
    except PimanError as err:
        fail(str(err))
    for who, count in forgotten:
        if count:
            console.print(f"{who}: forgot {count} host key{'s' if count > 1 else ''}", markup=False)
        else:
            console.print(f"{who}: no known host key", markup=False)


async def _forget(cfg: Config, nodes: list[str]) -> list[tuple[str, int]]:
    from piman.inventory.ssh import FleetSsh
    from piman.inventory.ssh_hostkeys import host_pattern
    from piman.store import Store

    store = Store(cfg.database_url)
    await store.open()
    try:
        fleet = FleetSsh(cfg, store)
        out: list[tuple[str, int]] = []
        for name in nodes:
            names = [name, host_pattern(name, cfg.ssh.port)]
            who = name
            try:
                for t in await fleet.targets([name]):
                    names.append(host_pattern(t.host, t.port))
                    who = f"{name} ({t.host})"
            except (NotFoundError, ValueError):
                pass  # an address, or a node the store no longer has
            out.append((who, fleet.known.forget(*names)))
        return out
    finally:
        await store.close()


HOSTKEY_COLUMNS = (
    Column("names", "names", name=True),
    Column("type", "type", priority=2),
    Column("fingerprint", "fingerprint", priority=1),
)


@ssh_app.command("hostkeys")
def hostkeys(config: ConfigOption = None) -> None:
    """List the known host keys (learnt on first contact, or added to ssh.known_hosts).

    Example: piman ssh hostkeys
    """
    import asyncssh

    from piman.inventory.ssh_hostkeys import KnownHosts

    cfg = load(config)
    known = KnownHosts(cfg.ssh.known_hosts_path(cfg.manager.data_dir))
    rows = []
    for e in known.entries():
        try:
            fingerprint = asyncssh.import_public_key(e.key).get_fingerprint("sha256")
        except (asyncssh.KeyImportError, ValueError):
            fingerprint = "(unreadable)"
        rows.append(
            {"names": ",".join(e.patterns), "type": e.algorithm, "fingerprint": fingerprint}
        )
    print_table(rows, HOSTKEY_COLUMNS, title=f"{len(rows)} known host keys ({known.path})")


def register(app: typer.Typer) -> None:
    app.add_typer(ssh_app, name="ssh")
