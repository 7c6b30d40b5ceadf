"""Every listing command as a user sees it: tables that fit 80 and 200 columns with long node
names whole, ``-o wide`` with every column, ``-o json``/``-o yaml`` with the whole records and
absolute times, ``--json`` as before, and an example in each ``--help``.

The commands run against a store filled here (no manager needed: each reads the store itself
without ``--url``, the same records as the API's); one runs as a real process at 80 columns.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from piman.cli.access_cmd import TOKEN_COLUMNS, USER_COLUMNS
from piman.cli.alerts_cmd import ALERT_COLUMNS, HISTORY_COLUMNS, OUTBOX_COLUMNS, SILENCE_COLUMNS
from piman.cli.app import app
from piman.cli.deploy_cmd import DEPLOYMENT_COLUMNS, ENV_COLUMNS
from piman.cli.nodes_cmd import NODE_COLUMNS
from piman.cli.output import Column
from piman.cli.power_cmd import PORT_COLUMNS
from piman.config import load_config
from piman.fleet.records import (
    AlertHistoryRecord,
    AlertRecord,
    EnvironmentRecord,
    TickChanges,
)
from piman.monitor.alerting.silences import make_silence
from piman.store import Store, reconcile

runner = CliRunner()

LONG = "rack1-switch2-port48"
OTHER = "rack1-switch2-port47"
ENV = "raspios-bookworm-arm64-lite"
# Whole seconds, so that the JSON's absolute time can be compared exactly.
NOW = datetime.now(UTC).replace(microsecond=0)
SEEN = NOW - timedelta(hours=3)  # "3 h ago" for the next half hour

CONFIG = """\
manager: {{address: 198.18.0.1, network: 198.18.0.0/24, data_dir: {data}}}
switches:
  - {{name: rack1-switch2, driver: command, command: ["true", "{{port}}", "{{state}}"]}}
nodes:
  - {{name: {long}, switch: rack1-switch2, port: 48, mac: "dc:a6:32:00:00:30",
     ip: 198.18.0.148, model: pi4, serial: 10000000a3b4c5d6}}
  - {{name: {other}, switch: rack1-switch2, port: 47, mac: "dc:a6:32:00:00:2f",
     ip: 198.18.0.147, model: pi5, serial: 10000000a3b4c5d7}}
"""


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config and a store with something in every listing."""
    tmp = tmp_path_factory.mktemp("listings")
    path = tmp / "piman.yaml"
    path.write_text(CONFIG.format(data=tmp, long=LONG, other=OTHER))
    asyncio.run(_fill(path))
    return path


async def _fill(path: Path) -> None:
    cfg = load_config(path)
    store = Store(cfg.database_url)
    await store.open()
    try:
        await reconcile(store, cfg)
        await store.nodes.record_sighting("dc:a6:32:00:00:30", now=SEEN)
        await store.environments.add(
            EnvironmentRecord(
                name=ENV, source="2025-05-13-raspios-bookworm-arm64-lite.img.xz",
                source_sha256="a" * 64, kind="xz", image_size=2_700_000_000,
                image_sha256="b" * 64, mapped_bytes=1_900_000_000, table="mbr",
                os_family="raspios", customisation="firstrun", boot_files=("config.txt",),
                cmdline=None, description="Raspberry Pi OS Lite, bookworm, 64-bit",
                created_at=NOW - timedelta(days=3), created_by="local:root",
            )
        )  # fmt: skip
        made = await store.deployments.create(
            node=LONG, environment=ENV, state="write_image", options={}, created_by="alice",
            bytes_total=1_900_000_000, deadline_at=None, token_digest=None,
            token_expires_at=None,
        )  # fmt: skip
        await store.deployments.update(
            made.id, bytes_done=600_000_000, result="failed_deployment",
            reason="the installer said: no space left on device while writing range 1234",
        )  # fmt: skip
        await store.users.add("alice-the-operator", "operator", "not-a-hash")
        await store.users.add("root", "admin", "not-a-hash")
        token = await store.tokens.add(
            "alice-the-operator", "prometheus scraper on the monitoring host", "pm_1a2b3c4d",
            "digest", NOW + timedelta(days=90),
        )  # fmt: skip
        await store.tokens.touch(token.id, NOW - timedelta(hours=5))
        changes = TickChanges()
        labels = {"alertname": "NodeHotWhileDeploying", "node": LONG, "severity": "critical"}
        changes.alerts = [
            AlertRecord(
                fingerprint="f00d", rule="NodeHotWhileDeploying", labels=labels,
                annotations={"summary": f"{LONG} is at 85 °C and still writing its image"},
                state="firing", active_at=(NOW - timedelta(minutes=12)).timestamp(),
                fired_at=(NOW - timedelta(minutes=10)).timestamp(), resolved_at=None,
                value=85.0, late=False,
            )
        ]  # fmt: skip
        changes.history = [
            AlertHistoryRecord(
                at=(NOW - timedelta(minutes=10)).timestamp(), fingerprint="f00d",
                rule="NodeHotWhileDeploying", labels=labels, state="firing", value=85.0,
                late=False,
            )
        ]  # fmt: skip
        payload = {"group_labels": {"alertname": "NodeHotWhileDeploying", "node": LONG},
                   "alerts": [{"status": "firing", "labels": labels}]}  # fmt: skip
        changes.outbox = [
            ("webhook:https://hooks.example/piman", "k1", payload, NOW.timestamp() - 5 * 3600)
        ]
        await store.alerts.save(changes)
        (item,) = await store.alerts.outbox()
        await store.alerts.mark_dead(item.id, "answered 400: bad template", NOW.timestamp() - 3600)
        await store.alerts.add_silence(
            make_silence(
                [f"node={LONG}"], now=NOW.timestamp(), duration=7200,
                created_by="local:alice-the-operator",
                comment="rewiring the second switch of rack one this afternoon",
            )
        )  # fmt: skip
    finally:
        await store.close()


@dataclass(frozen=True)
class Listing:
    command: tuple[str, ...]
    columns: Sequence[Column]
    names: tuple[str, ...] = ()  # what must show whole
    rows: int = 1  # table rows (both tables' for alerts)
    arguments: tuple[str, ...] = ()

    @property
    def args(self) -> tuple[str, ...]:
        return (*self.command, *self.arguments)

    def __str__(self) -> str:
        return " ".join(self.args)


LISTINGS = [
    Listing(("nodes",), NODE_COLUMNS, (LONG, OTHER), 2),
    Listing(("env", "list"), ENV_COLUMNS, (ENV,)),
    Listing(("node", "show"), DEPLOYMENT_COLUMNS, (LONG,), arguments=(LONG,)),
    Listing(("alerts",), (*ALERT_COLUMNS, *HISTORY_COLUMNS), ("NodeHotWhileDeploying", LONG), 2),
    Listing(("alerts", "silences"), SILENCE_COLUMNS),
    Listing(("alerts", "outbox"), OUTBOX_COLUMNS, arguments=("--state", "all")),
    Listing(("user", "list"), USER_COLUMNS, ("alice-the-operator", "root"), 2),
    Listing(("token", "list"), TOKEN_COLUMNS),
    Listing(("power", "status"), PORT_COLUMNS, (LONG, OTHER), 2, arguments=("all",)),
]


def run(config: Path, *args: str, columns: int = 80) -> str:
    result = runner.invoke(app, [*args, "-c", str(config)], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, (args, result.output)
    return result.stdout


def table_rows(out: str) -> list[list[str]]:
    """The cells of every table line (header lines included)."""
    return [[c.strip() for c in line.split("│")] for line in out.splitlines() if "│" in line]


@pytest.mark.parametrize("columns", [80, 200])
@pytest.mark.parametrize("listing", LISTINGS, ids=str)
def test_the_table_fits_the_terminal_and_names_stay_whole(
    config: Path, listing: Listing, columns: int
) -> None:
    out = run(config, *listing.args, columns=columns)
    too_wide = [line for line in out.splitlines() if len(line) > columns]
    assert not too_wide, f"piman {listing} at {columns} columns:\n{out}"
    cells = [c for row in table_rows(out) for c in row]
    for name in listing.names:
        assert name in cells or f"{name}" in out.split(), f"{name} cut in:\n{out}"
    headers = {c.header for c in listing.columns}
    body = [r for r in table_rows(out) if not set(r) <= headers]
    assert len(body) == listing.rows, f"a row wrapped or went missing:\n{out}"


def test_nodes_at_80_columns_name_whole_the_least_useful_columns_left_out(config: Path) -> None:
    out = run(config, "nodes", columns=80)
    lines = out.splitlines()
    assert lines[0] == "2 nodes (-o wide adds switch:port, model, mac, serial)"
    assert table_rows(out)[0] == ["name", "state", "power", "ip", "last seen"]
    rows = {r[0]: r for r in table_rows(out)[1:]}
    assert rows[LONG] == [LONG, "ready", "unknown", "198.18.0.148", "3 h ago"]
    assert rows[OTHER][4] == "never"


def test_nodes_at_200_columns_show_every_column_but_the_wide_only_ones(config: Path) -> None:
    out = run(config, "nodes", columns=200)
    assert out.splitlines()[0] == "2 nodes"
    header = table_rows(out)[0]
    assert header == [c.header for c in NODE_COLUMNS if not c.wide]
    rows = {r[0]: r for r in table_rows(out)[1:]}
    assert rows[LONG][-3:] == ["pi4", "dc:a6:32:00:00:30", "10000000a3b4c5d6"]


@pytest.mark.parametrize("listing", LISTINGS, ids=str)
def test_wide_shows_every_column(config: Path, listing: Listing) -> None:
    out = run(config, *listing.args, "-o", "wide", columns=80)
    headers = {c for row in table_rows(out) for c in row}
    assert {c.header for c in listing.columns} <= headers, out
    assert "…" not in out  # nothing cut either
    assert "-o wide adds" not in out


def _times(value: Any, key: str = "") -> list[tuple[str, str]]:
    """Every (key, value) of a JSON document whose key names a time."""
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in _times(v, k)]
    if isinstance(value, list):
        return [t for v in value for t in _times(v, key)]
    timely = key.endswith(("_at", "_seen")) or key == "at"
    return [(key, value)] if timely and value is not None else []


@pytest.mark.parametrize("listing", LISTINGS, ids=str)
def test_json_and_yaml_are_the_whole_records_with_absolute_times(
    config: Path, listing: Listing
) -> None:
    as_json = json.loads(run(config, *listing.args, "-o", "json"))
    as_yaml = yaml.safe_load(run(config, *listing.args, "-o", "yaml"))
    assert as_yaml == as_json
    for key, value in _times(as_json):
        assert datetime.fromisoformat(value).tzinfo is not None, (key, value)
    rows = as_json
    if isinstance(as_json, dict):  # {alerts, history, …}, {node, deployments}: the first list
        rows = next(v for v in as_json.values() if isinstance(v, list))
    assert rows, as_json
    assert len({tuple(r) for r in rows}) == 1  # every record has the same keys, in one order


def test_json_of_nodes_has_the_absolute_time_the_table_shows_relative(config: Path) -> None:
    nodes = {n["name"]: n for n in json.loads(run(config, "nodes", "-o", "json"))}
    assert datetime.fromisoformat(nodes[LONG]["last_seen"]) == SEEN
    assert nodes[OTHER]["last_seen"] is None
    assert set(nodes[LONG]) >= {"name", "state", "power", "ip", "mac", "serial", "hostname"}


def test_json_of_alerts_is_the_apis_document(config: Path) -> None:
    doc = json.loads(run(config, "alerts", "-o", "json"))
    assert list(doc) == ["alerts", "history", "last_evaluated"]
    (alert,) = doc["alerts"]
    assert alert["alertname"] == "NodeHotWhileDeploying"
    assert len(alert["silenced_by"]) == 1  # the silence on the node mutes it
    assert datetime.fromisoformat(alert["starts_at"]) == NOW - timedelta(minutes=10)


@pytest.mark.parametrize(
    "listing",
    [x for x in LISTINGS if x.command[0] != "power"],  # power status never had --json
    ids=str,
)
def test_the_old_json_flag_is_o_json(config: Path, listing: Listing) -> None:
    assert run(config, *listing.args, "--json") == run(config, *listing.args, "-o", "json")


def test_only_the_last_column_taken_is_cut_and_only_free_text(config: Path) -> None:
    notification = "firing NodeHotWhileDeploying " + LONG
    narrow = dict(zip(*table_rows(run(config, "alerts", "outbox", "--state", "all")), strict=True))
    assert narrow == {"id": "1", "state": "dead", "alert": notification,
                      "last error": "answered 400: …"}  # fmt: skip
    out = run(config, "alerts", "outbox", "--state", "all", columns=200)
    cells = dict(zip(*table_rows(out), strict=True))
    assert cells["last error"] == "answered 400: bad template"
    assert (cells["queued"], cells["attempts"]) == ("5 h ago", "1")
    silences = dict(zip(*table_rows(run(config, "alerts", "silences")), strict=True))
    assert silences == {"id": silences["id"], "state": "active",
                        "matchers": f'node="{LONG}"', "until": "in 2 h"}  # fmt: skip


def test_the_help_of_every_listing_shows_the_output_option_and_examples() -> None:
    # env show and power map are not in LISTINGS (one record; a switch's SNMP agent)
    for command in [*(x.command for x in LISTINGS), ("env", "show"), ("power", "map")]:
        result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "120"})
        assert result.exit_code == 0, command
        assert "--output" in result.stdout, command
        assert "table|wide|json|yaml" in result.stdout, command
        lines = [line.rstrip() for line in result.stdout.splitlines()]
        start = lines.index(" Examples:")
        examples = [line for line in lines[start + 1 :] if line.startswith("   piman ")]
        assert len(examples) >= 2, (command, result.stdout)  # one a line, indented
        assert any(" -o " in e for e in examples), (command, result.stdout)


def test_piman_nodes_in_an_80_column_terminal(config: Path) -> None:
    """The real program, as a user runs it: no row wider than 80, no name cut."""
    result = subprocess.run(
        [sys.executable, "-m", "piman", "nodes", "-c", str(config)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "80"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, result.stdout
    assert [line.split(" │ ")[0].strip() for line in lines[3:]] == [OTHER, LONG]


def test_piped_without_columns_there_is_nothing_to_fit(config: Path) -> None:
    """``piman nodes | grep …``: no terminal, no $COLUMNS: every column but the wide-only ones."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    result = subprocess.run(
        [sys.executable, "-m", "piman", "nodes", "-c", str(config)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert table_rows(result.stdout)[0] == [c.header for c in NODE_COLUMNS if not c.wide]
