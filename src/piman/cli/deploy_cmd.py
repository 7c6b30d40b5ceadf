"""``piman env …`` (environments), ``piman deploy``, ``piman reinstall`` (the seed's command) and
``piman node show``.

``env add`` imports on the manager machine itself (it writes ``data_dir`` and the store): a
progress bar per phase, all or nothing. ``deploy`` and ``reinstall`` ask the running manager (its
engine drives the nodes) and follow each deployment with a progress bar fed by the manager's
server-sent events; ``--url`` defaults to the configured manager, and as root on the manager
machine no token is needed (``data_dir/local.key``).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

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
from piman.cli.output import (
    Column,
    JsonFlag,
    Output,
    OutputOption,
    chosen,
    emit,
    print_data,
    print_details,
    print_table,
)
from piman.config.models import Config
from piman.errors import ConflictError, NotFoundError, PimanError

__all__ = ["register"]

env_app = typer.Typer(
    help="Environments: the OS images the manager can deploy.", no_args_is_help=True
)
node_app = typer.Typer(help="One node: details and history.", no_args_is_help=True)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


ENV_COLUMNS = (
    Column("name", "name", name=True),
    Column("os", "os_family", priority=1),
    Column("size", lambda r: _size(r["image_size"]), priority=2, right=True),
    Column("mapped", lambda r: _size(r["mapped_bytes"]), priority=3, right=True),
    Column("first boot", "customisation", priority=4),
    Column("created", "created_at", priority=5, time=True),
    Column("source", "source", priority=6, shrink=True),
    Column("kind", "kind", wide=True),
    Column("by", "created_by", wide=True),
    Column("description", "description", wide=True),
)
DEPLOYMENT_COLUMNS = (
    Column("id", "id", name=True, right=True),
    Column("environment", "environment", priority=1),
    Column("state", "state", priority=1),
    Column("result", "result", priority=2),
    Column("written", lambda d: f"{_size(d['bytes_done'])}/{_size(d['bytes_total'])}",
           priority=4, right=True),
    Column("started", "created_at", priority=3, time=True),
    Column("by", "created_by", priority=5),
    Column("reason", "reason", priority=6, shrink=True),
    Column("attempt", "attempt", wide=True, right=True),
    Column("finished", "finished_at", wide=True, time=True),
    Column("hostname", "hostname", wide=True),
)  # fmt: skip


# -- piman env ---------------------------------------------------------------------------------


@env_app.command("add")
def env_add(
    source: Annotated[
        Path,
        typer.Argument(
            help="A .img (.xz/.gz/.zst), a PiSeduce .img.tar.gz, "
            "or a root-filesystem tarball (rootfs.tgz)."
        ),
    ],
    name: Annotated[str, typer.Option("--name", "-n", help="What to call it.")],
    sha256: Annotated[
        str | None, typer.Option("--sha256", help="The published SHA-256 of SOURCE to check.")
    ] = None,
    description: Annotated[str, typer.Option(help="A line about it.")] = "",
    config: ConfigOption = None,
) -> None:
    """Import an OS image as an environment (on the manager machine).

    Checks it (checksum, partition table, filesystems), maps the blocks that matter (bmap),
    finds its first-boot format (firstrun.sh, cloud-init, none). Nothing half-imported stays.

    Example: piman env add 2025-05-13-raspios-bookworm-arm64-lite.img.xz --name raspios-lite
    """
    from piman.deploy.environments import check_name

    try:
        check_name(name)
    except ValueError as err:
        fail(str(err), EXIT_BAD_INPUT)
    if sha256 is not None and (
        len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256.lower())
    ):
        fail(f"--sha256 {sha256!r} is not a SHA-256 (64 hex digits)", EXIT_BAD_INPUT)
    if not source.is_file():
        fail(f"{source}: no such file", EXIT_BAD_INPUT)
    record = _import(load(config), name, source, sha256.lower() if sha256 else None, description)
    console.print(
        f"environment {record.name}: {record.os_family}, {_size(record.image_size)} "
        f"({_size(record.mapped_bytes)} mapped), {record.table}, first boot: "
        f"{record.customisation}",
        markup=False,
    )


def _import(
    cfg: Config, name: str, source: Path, sha256: str | None, description: str,
    *, replace: bool = False,
) -> Any:  # fmt: skip
    """Import ``source`` as environment ``name`` with a progress bar per phase (all or nothing);
    ``replace``: remove an environment of that name first."""
    from piman.deploy.environments import EnvironmentLibrary
    from piman.deploy.errors import ImageError
    from piman.store import Store

    progress = Progress(
        TextColumn("{task.description:<8}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
    )
    tasks: dict[str, TaskID] = {}

    def step(phase: str, done: int, total: int | None) -> None:
        if phase not in tasks:
            tasks[phase] = progress.add_task(phase, total=total)
        progress.update(tasks[phase], completed=done, total=total)

    async def run() -> Any:
        store = Store(cfg.database_url)
        await store.open()
        try:
            library = EnvironmentLibrary(cfg.manager.data_dir, store.environments)
            if replace:
                with contextlib.suppress(NotFoundError):
                    await library.remove(name)
            record = await library.add(
                name, source, created_by=local_actor(), description=description,
                expect_sha256=sha256, on_progress=step,
            )  # fmt: skip
            await store.audit.add(local_actor(), "env.add", name, "ok", source.name)
            return record
        finally:
            await store.close()

    try:
        with progress:
            record = asyncio.run(run())
    except (NotFoundError, ConflictError, ValueError, ImageError) as err:
        fail(str(err), EXIT_BAD_INPUT)  # the image (or the name) is what is wrong
    except PimanError as err:
        fail(str(err))
    except OSError as err:  # a full disk, a read error: nothing was kept
        fail(f"{source}: {err.strerror or err}: nothing was imported")
    except KeyboardInterrupt:
        fail("interrupted: nothing was imported", 130)
    return record


def _env_rows(
    config: Path | None, url: str | None, token: str | None, ca: Path | None
) -> list[dict[str, Any]]:
    if url:
        with connect(url, token, ca) as client:
            rows: list[dict[str, Any]] = client.get("/environments")
            return rows
    from piman.cli.common import with_store
    from piman.web.api.deploy import EnvironmentOut

    async def work(_cfg: Config, store: Any) -> list[dict[str, Any]]:
        return [
            EnvironmentOut.of(e).model_dump(mode="json") for e in await store.environments.list()
        ]

    return with_store(config, work)


@env_app.command("list")
def env_list(
    config: ConfigOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
    output: OutputOption = Output.TABLE,
    as_json: JsonFlag = False,
) -> None:
    """List environments: OS, image size, bytes mapped, first-boot format, source.

    With --url, asks a running manager; otherwise reads the store.

    Examples:
      piman env list
      piman env list -o json | jq -r '.[].name'
    """
    rows = _env_rows(config, url, token, ca_file)
    emit(chosen(output, as_json), rows, ENV_COLUMNS, title=f"{len(rows)} environments")


@env_app.command("show")
def env_show(
    name: Annotated[str, typer.Argument(help="The environment.")],
    config: ConfigOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
    output: OutputOption = Output.TABLE,
    as_json: JsonFlag = False,
) -> None:
    """Show one environment: checksums, partitions, boot files, first-boot format.

    With --url, asks a running manager; otherwise reads the store.

    Examples:
      piman env show raspios-lite
      piman env show raspios-lite -o yaml
    """
    rows = [r for r in _env_rows(config, url, token, ca_file) if r["name"] == name]
    if not rows:
        fail(f"no environment named {name!r}", EXIT_BAD_INPUT)
    (r,) = rows
    fmt = chosen(output, as_json)
    if fmt in (Output.JSON, Output.YAML):
        print_data(r, fmt)
        return
    boot = r["boot_files"]
    shown = {
        **{k: v for k, v in r.items() if k != "boot_files"},
        "image_size": f"{r['image_size']} ({_size(r['image_size'])})",
        "mapped_bytes": f"{r['mapped_bytes']} ({_size(r['mapped_bytes'])})",
        "boot files": f"{len(boot)}: " + " ".join(boot[:12]) + (" …" if len(boot) > 12 else ""),
    }
    print_details(shown, times=("created_at",))


@env_app.command("remove")
def env_remove(
    name: Annotated[str, typer.Argument(help="The environment.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    config: ConfigOption = None,
) -> None:
    """Remove an environment and its image (not while a deployment uses it).

    Example: piman env remove raspios-lite --yes
    """
    from piman.cli.common import with_store
    from piman.deploy.environments import EnvironmentLibrary

    if not yes and sys.stdin.isatty() and not typer.confirm(f"Remove environment {name}?"):
        raise typer.Exit(EXIT_FAILED)

    async def work(cfg: Config, store: Any) -> None:
        try:
            await EnvironmentLibrary(cfg.manager.data_dir, store.environments).remove(name)
        except ConflictError as err:
            raise ValueError(str(err)) from None
        await store.audit.add(local_actor(), "env.remove", name, "ok")

    with_store(config, work)
    console.print(f"environment {name} removed", markup=False)


# -- piman deploy / reinstall -----------------------------------------------------------------


def _manager(
    config: Path | None, url: str | None, token: str | None, ca: Path | None
) -> ManagerClient:
    """The running manager: ``--url``, else the configured one (root needs no token there)."""
    local_key = None
    if not url:
        cfg = load(config)
        host, port = cfg.manager.http_host_port
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        scheme = "https" if cfg.manager.tls is not None else "http"
        url = f"{scheme}://{host}:{port}"
        local_key = cfg.manager.data_dir / "local.key"
    return connect(url, token, ca, local_key=local_key)


def _follow(client: ManagerClient, deployments: list[dict[str, Any]], wait: bool) -> int:
    """One bar per node (bytes written, rate, step), fed by each deployment's SSE stream."""
    for d in deployments:
        console.print(f"deployment {d['id']}: {d['environment']} → {d['node']}", markup=False)
    if not wait:
        return 0
    progress = Progress(
        TextColumn("{task.fields[node]:<14}"),
        TextColumn("{task.fields[step]:<17}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
    )
    results: dict[int, dict[str, Any]] = {}
    lines: list[str] = []
    lock = threading.Lock()

    def watch(d: dict[str, Any], task: TaskID) -> None:
        for event, data in client.events(f"/deployments/{d['id']}/events"):
            if event == "deployment":
                progress.update(
                    task, completed=data["bytes_done"], total=max(data["bytes_total"], 1),
                    step=data["result"] or data["state"],
                )  # fmt: skip
                if data["result"] is not None:
                    results[d["id"]] = data
            elif event == "log" and not console.is_terminal:
                with lock:
                    lines.append(f"{d['node']}: {data['detail']}")
                    print(f"{d['node']}: [{data['state']}] {data['detail']}", flush=True)

    with progress:
        threads = []
        for d in deployments:
            task = progress.add_task(
                "", total=max(d["bytes_total"], 1), node=d["node"], step=d["state"]
            )
            thread = threading.Thread(target=watch, args=(d, task), daemon=True)
            thread.start()
            threads.append(thread)
        while any(t.is_alive() for t in threads):
            time.sleep(0.2)
    failed = 0
    for d in deployments:
        end = results.get(d["id"], {})
        if end.get("result") == "ok":
            console.print(f"{d['node']}: deployed {d['environment']}", markup=False)
        else:
            failed += 1
            err_console.print(
                f"error: {d['node']}: {end.get('result', 'unknown')}: {end.get('reason') or '-'}",
                markup=False, soft_wrap=True,
            )  # fmt: skip
    return EXIT_FAILED if failed else 0


def _start(client: ManagerClient, nodes: list[str], env: str | None, hostname: str | None,
           keys: list[str], customisation: str | None = None) -> list[dict[str, Any]]:  # fmt: skip
    body = {"nodes": nodes, "environment": env, "hostname": hostname, "ssh_keys": keys,
            "customisation": customisation}  # fmt: skip
    made: list[dict[str, Any]] = client.post("/deployments", body)
    return made


def deploy(
    nodes: Annotated[list[str], typer.Argument(help="Node names.")],
    env: Annotated[
        str | None,
        typer.Option(
            "--env",
            "-e",
            help="The environment (default: the node's, else deploy.default_environment).",
        ),
    ] = None,
    ssh_key: Annotated[
        list[Path] | None,
        typer.Option("--ssh-key", help="A public key file to authorise (repeatable)."),
    ] = None,
    hostname: Annotated[
        str | None, typer.Option("--hostname", help="Host name or pattern, e.g. lab-{node}.")
    ] = None,
    customisation: Annotated[
        str | None,
        typer.Option(
            "--customisation",
            help="First-boot format: firstrun, cloudinit or none (default: the image's).",
        ),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow until done.")] = True,
    config: ConfigOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
) -> None:
    """Deploy an environment to nodes, with a live progress bar per node.

    Exit 0 only when every node is deployed.

    Example: piman deploy rack1-02 rack1-03 --env raspios-lite --ssh-key ~/.ssh/id_ed25519.pub
    """
    if customisation is not None and customisation not in ("firstrun", "cloudinit", "none"):
        fail(f"--customisation {customisation!r}: expected firstrun, cloudinit or none",
             EXIT_BAD_INPUT)  # fmt: skip
    keys = []
    for path in ssh_key or []:
        try:
            keys += [k.strip() for k in path.read_text().splitlines() if k.strip()]
        except OSError as err:
            fail(f"--ssh-key {path}: {err.strerror}", EXIT_BAD_INPUT)
    with _manager(config, url, token, ca_file) as client:
        made = _start(client, nodes, env, hostname, keys, customisation)
        code = _follow(client, made, wait)
    raise typer.Exit(code)


def reinstall(
    switch: Annotated[str, typer.Argument(help="Switch name or address.")],
    pis: Annotated[list[str], typer.Argument(help="Pi numbers (= switch ports).")],
    env: Annotated[
        str | None,
        typer.Option(
            "--env",
            "-e",
            help="The environment (default: the node's, else deploy.default_environment).",
        ),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow until done.")] = True,
    config: ConfigOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
) -> None:
    """Reinstall Pis by switch and Pi number (= port), as the original piman did.

    Example: piman reinstall 172.30.4.254 2
    """
    cfg = load(config)
    sw = cfg.switch(switch)
    if sw is None:
        known = ", ".join(f"{s.name} ({s.address})" for s in cfg.switches) or "none"
        fail(f"no switch named or at {switch!r} (known: {known})", EXIT_BAD_INPUT)
    names = []
    for pi in pis:
        if not pi.isdigit() or int(pi) < 1:
            fail(f"{pi!r} is not a Pi number (a switch port, 1 or more)", EXIT_BAD_INPUT)
        node = next((n for n in cfg.nodes if n.switch == sw.name and n.port == int(pi)), None)
        if node is None:
            fail(f"no node on {sw.name} port {pi}", EXIT_BAD_INPUT)
        names.append(node.name)
    seed = cfg.deploy.seed_rootfs if cfg.deploy is not None else None
    if env is None and seed is not None and cfg.deploy and not cfg.deploy.default_environment:
        if not any(getattr(cfg.node(n), "environment", None) for n in names):
            env = _seed_environment(cfg, seed)
    with _manager(config, url, token, ca_file) as client:
        made = _start(client, names, env, None, [])
        code = _follow(client, made, wait)
    raise typer.Exit(code)


SEED_ENVIRONMENT = "seed-rootfs"


def _seed_environment(cfg: Config, rootfs: Path) -> str:
    """The seed's ``install/boot/rootfs.tgz`` as environment ``seed-rootfs``: imported on first
    use, imported again when the tarball changed (its SHA-256 differs from the recorded one)."""
    import hashlib

    from piman.store import Store

    if not rootfs.is_file():
        fail(
            f"no environment given and no {rootfs}: put the root filesystem tarball there "
            "(as the original piman wanted), or name one with --env",
            EXIT_BAD_INPUT,
        )

    async def recorded() -> str | None:
        store = Store(cfg.database_url)
        await store.open()
        try:
            return (await store.environments.get(SEED_ENVIRONMENT)).source_sha256
        except NotFoundError:
            return None
        finally:
            await store.close()

    digest = hashlib.sha256()
    with rootfs.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    known = asyncio.run(recorded())
    if known != digest.hexdigest():
        err_console.print(f"importing {rootfs} as environment {SEED_ENVIRONMENT}", markup=False)
        _import(cfg, SEED_ENVIRONMENT, rootfs, digest.hexdigest(), "the seed's rootfs.tgz",
                replace=known is not None)  # fmt: skip
    return SEED_ENVIRONMENT


@node_app.command("show")
def node_show(
    name: Annotated[str, typer.Argument(help="The node.")],
    config: ConfigOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
    output: OutputOption = Output.TABLE,
    as_json: JsonFlag = False,
) -> None:
    """A node's details and its deployment history.

    -o json and -o yaml print {node, deployments} with absolute times.

    Examples:
      piman node show rack1-02
      piman node show rack1-02 -o json | jq '.deployments[0].reason'
    """
    if url:
        with connect(url, token, ca_file) as client:
            node = client.get(f"/nodes/{name}")
            history = client.get(f"/deployments?node={name}", missing_ok=True) or []
    else:
        from piman.cli.common import with_store
        from piman.web.api.deploy import DeploymentOut
        from piman.web.api.nodes import NodeOut

        async def work(_cfg: Config, store: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
            n = NodeOut.of(await store.nodes.get(name)).model_dump(mode="json")
            h = [DeploymentOut.of(d).model_dump(mode="json")
                 for d in await store.deployments.list(node=name)]  # fmt: skip
            return n, h

        node, history = with_store(config, work)
    fmt = chosen(output, as_json)
    if fmt in (Output.JSON, Output.YAML):
        print_data({"node": node, "deployments": history}, fmt)
        return
    print_details(node, times=("first_seen", "last_seen"))
    console.print()
    if not history:
        console.print("no deployments yet", markup=False)
        return
    print_table(
        history, DEPLOYMENT_COLUMNS, wide=fmt is Output.WIDE, title=f"{len(history)} deployments"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(env_app, name="env")
    app.add_typer(node_app, name="node")
    app.command("deploy")(deploy)
    app.command("reinstall")(reinstall)
