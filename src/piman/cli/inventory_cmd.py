"""``piman inventory``: the fleet as an Ansible inventory, and the script Ansible runs for it.

Ansible's dynamic-inventory protocol runs a program with ``--list`` (every group and, in
``_meta``, every host's variables) or ``--host NAME``, and reads JSON on stdout. This command
answers both, from a running manager (``--url``) or from the config and the store, and writes
static ``ini``/``yaml`` files. ``--script PATH`` writes the small executable Ansible is given
(``-i PATH``): it runs this command with the same ``--config``/``--url``.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

import typer

from piman.cli.client import CaFileOption, TokenOption, UrlOption, connect
from piman.cli.common import EXIT_BAD_INPUT, ConfigOption, err_console, fail, load, with_store

if TYPE_CHECKING:
    from piman.config import Config
    from piman.store import Store

__all__ = ["register", "wrapper"]


class Format(StrEnum):
    JSON = "json"
    INI = "ini"
    YAML = "yaml"


def inventory(
    list_: Annotated[
        bool, typer.Option("--list", help="Every group and host (the default).")
    ] = False,
    host: Annotated[
        str | None,
        typer.Option("--host", help="One host's variables.", metavar="NAME", show_default=False),
    ] = None,
    fmt: Annotated[
        Format, typer.Option("--format", "-f", help="json (what Ansible reads), ini or yaml.")
    ] = Format.JSON,
    script: Annotated[
        Path | None,
        typer.Option(
            "--script",
            help="Write an executable inventory script for `ansible -i` here instead.",
            show_default=False,
        ),
    ] = None,
    config: ConfigOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
) -> None:
    """Print the fleet as an Ansible inventory (dynamic-inventory JSON, or a static ini/yaml).

    Groups: switch_<switch>, model_<model>, state_<state>, owner_<user> (active reservations),
    env_<environment>, each config tag, and no_ip for nodes without an address. Host variables:
    ansible_host, ansible_user and piman_* (mac, serial, model, switch, port, state, owner,
    environment, tags). With --url, asks a running manager (a `user` token sees the nodes it
    holds); otherwise reads the config and the store.

    Examples:
      piman inventory --script ./fleet && ansible-playbook -i ./fleet site.yml
      piman inventory --url http://198.18.0.1:8000 --script ./fleet
      piman inventory --format ini > hosts.ini
      piman inventory --host rack1-02
    """
    if list_ and host is not None:
        fail("give --list or --host NAME, not both", EXIT_BAD_INPUT)
    if script is not None:
        if list_ or host is not None:
            fail("--script writes the script; Ansible passes --list/--host to it", EXIT_BAD_INPUT)
        _write_script(script, config=config, url=url, ca_file=ca_file, token_given=bool(token))
        return
    if host is not None and fmt is Format.INI:
        fail("--host prints one host's variables: --format json or yaml", EXIT_BAD_INPUT)
    answer = _fetch(host, config=config, url=url, token=token, ca_file=ca_file)
    from piman.inventory.ansible import to_ini, to_yaml, without_address

    # Ansible's runs (always --list) show a script's stderr as [ERROR]: the note is for people.
    if host is None and not list_:
        missing = without_address(answer)
        if missing:
            shown = ", ".join(missing[:10]) + (" …" if len(missing) > 10 else "")
            err_console.print(
                f"note: {len(missing)} host(s) have no IP address ({shown}): listed in group "
                "no_ip, without ansible_host",
                soft_wrap=True,
                markup=False,
            )
    if fmt is Format.INI:
        text = to_ini(answer)
    elif fmt is Format.YAML:
        text = to_yaml(answer) if host is None else _yaml(answer)
    else:
        text = json.dumps(answer, indent=2) + "\n"
    sys.stdout.write(text)
    sys.stdout.flush()


def _yaml(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def _fetch(
    host: str | None,
    *,
    config: Path | None,
    url: str | None,
    token: str | None,
    ca_file: Path | None,
) -> dict[str, Any]:
    """The --list answer, or one host's variables, from the manager or the store."""
    if url:
        path = "/inventory" if host is None else f"/inventory?host={quote(host, safe='')}"
        # Root on the manager's machine with its config needs no token (data_dir/local.key).
        local_key = load(config).manager.data_dir / "local.key" if config is not None else None
        with connect(url, token, ca_file, local_key=local_key) as client:
            answer: dict[str, Any] = client.get(path)
        return answer

    async def work(cfg: Config, store: Store) -> dict[str, Any]:
        from piman.inventory.ansible import common_vars, host_vars, listing
        from piman.inventory.hosts import collect, fleet_key

        found = listing(
            await collect(cfg, store),
            variables=common_vars(key_file=fleet_key(cfg), port=cfg.ssh.port),
        )
        return found if host is None else host_vars(found, host)

    return with_store(config, work)


def wrapper(argv: list[str]) -> str:
    """The text of an inventory script that runs ``argv`` with Ansible's arguments after it."""
    command = " ".join(shlex.quote(a) for a in argv)
    return (
        "#!/bin/sh\n"
        "# Ansible dynamic inventory of a piman fleet, written by `piman inventory --script`.\n"
        "# Use it as: ansible-playbook -i THIS_FILE site.yml   (Ansible passes --list or\n"
        "# --host NAME). An API token comes from $PIMAN_TOKEN or `piman login`, never this file.\n"
        f'exec {command} "$@"\n'
    )


def _write_script(
    path: Path, *, config: Path | None, url: str | None, ca_file: Path | None, token_given: bool
) -> None:
    from piman.config import default_config_path

    argv = [sys.executable, "-m", "piman", "inventory"]
    if url:
        argv += ["--url", url]
        if ca_file is not None:
            argv += ["--ca-file", str(ca_file.resolve())]
        if config is not None:
            argv += ["--config", str(config.resolve())]
    else:
        chosen = (config or default_config_path()).resolve()
        if not chosen.is_file():
            fail(f"no configuration file at {chosen} (pass --config F)", EXIT_BAD_INPUT)
        argv += ["--config", str(chosen)]
    target = path.resolve()
    try:
        partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        partial.write_text(wrapper(argv), encoding="utf-8")
        partial.chmod(0o755)
        partial.replace(target)
    except OSError as err:
        fail(f"cannot write {path}: {err.strerror or err}")
    err_console.print(
        f"wrote {target}: use `ansible-playbook -i {target} …`", soft_wrap=True, markup=False
    )
    if token_given:
        err_console.print(
            "note: --token is not written into the script; set $PIMAN_TOKEN or run "
            "`piman login URL` for Ansible's runs",
            soft_wrap=True,
            markup=False,
        )


def register(app: typer.Typer) -> None:
    app.command("inventory")(inventory)
