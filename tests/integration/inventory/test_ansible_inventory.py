"""piman as Ansible's inventory: real ``ansible-inventory``, ``ansible`` and ``ansible-playbook``.

Without root: a config and a store (an active reservation, a finished deployment) read by
``ansible-inventory`` through the script ``piman inventory --script`` writes, once from the
store and once from a running ``piman server`` (``--url``); the static INI and YAML files read
by Ansible's own inventory parsers; ``GET /api/v1/inventory`` as each kind of principal.
As root: an ad-hoc command and a playbook over SSH to sshd nodes in network namespaces
(``sshlab``), with the hosts, users, key and groups piman gave Ansible.

Ansible starts slowly (a second or more per run on this machine): each test runs it at most
twice.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from piman.access.reservations_service import ReservationService
from piman.access.service import build as build_access
from piman.cli.app import app
from piman.config import load_config
from piman.context import AppContext
from piman.fleet.lifecycle import NodeState
from piman.fleet.records import EnvironmentRecord
from piman.fleet.reservations import ReservationDraft
from piman.store import Store, reconcile
from piman.web.app import create_app
from tests.integration.manager.test_server import spawn, wait_http
from tests.integration.sshlab import LAB_USER, SSHD, SshLab
from tests.support import (
    api_token,
    bearer,
    free_port,
    initial_admin_password,
    needs_root,
    needs_tool,
)

BIN = Path(sys.executable).parent
ANSIBLE_INVENTORY = BIN / "ansible-inventory"
NOW = datetime.now(UTC).replace(microsecond=0)

CONFIG = """\
manager: {{address: 198.18.0.1, data_dir: {data}, http: "127.0.0.1:{port}"}}
switches: [{{name: rack1, driver: manual}}]
ssh: {{key_file: {key}, port: 2222}}
nodes:
  - {{name: pi1, switch: rack1, port: 1, ip: 198.18.0.11, mac: "dc:a6:32:00:00:01", model: pi4,
      serial: "10000001", tags: [camera]}}
  - {{name: pi2, switch: rack1, port: 2, ip: 198.18.0.12, model: "pi3b+",
      tags: [camera, "2nd floor"]}}
  - {{name: pi3, switch: rack1, port: 3, ssh_user: ops}}
"""


def ansible_env(tmp: Path, **extra: str) -> dict[str, str]:
    """Ansible's state in ``tmp``, never the invoking user's ~/.ansible or ~/.ssh."""
    return {
        **os.environ,
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
        "ANSIBLE_HOME": str(tmp / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_CONFIG": str(tmp / "no-ansible.cfg"),  # not a ./ansible.cfg of the checkout
        **extra,
    }


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def piman(*args: str) -> Ran:
    """The CLI in this process (a `python -m piman` costs seconds on a busy machine; Ansible
    runs the scripts as real processes)."""
    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Ran(result.exit_code, result.stdout, result.stderr)


async def _fill(config: Path) -> None:
    """pi1 held by alice (active), pi2 deployed with bookworm whose user is builder."""
    cfg = load_config(config)
    store = Store(cfg.database_url)
    await store.open()
    try:
        await reconcile(store, cfg)
        await store.environments.add(
            EnvironmentRecord(
                name="bookworm", source="b.img", source_sha256="0" * 64, kind="img",
                image_size=1, image_sha256="0" * 64, mapped_bytes=1, table="mbr",
                os_family="debian", customisation="cloudinit", boot_files=(), cmdline=None,
                description="", created_at=NOW, created_by="test",
            )
        )  # fmt: skip
        made = await store.deployments.create(
            node="pi2", environment="bookworm", state="done", options={"user": "builder"},
            created_by="test", bytes_total=0, deadline_at=None, token_digest=None,
            token_expires_at=None,
        )  # fmt: skip
        await store.deployments.update(made.id, result="ok", finished_at=NOW)
        draft = ReservationDraft(
            owner="alice", nodes=("pi1",), start_at=NOW, end_at=NOW + timedelta(hours=2),
            environment=None, ssh_keys=(), created_by="alice", timers=(),
        )  # fmt: skip
        held = await store.reservations.create(["pi1"], lambda _live: draft, now=NOW)
        await store.reservations.transition(held.id, "scheduled", "active", at=NOW)
        await store.nodes.set_state("pi1", NodeState.ALLOCATED, force=True)
        await store.nodes.set_state("pi2", NodeState.DEPLOYED, force=True)
    finally:
        await store.close()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The config file of a filled store (the fleet key is a file named in ssh.key_file)."""
    tmp = tmp_path_factory.mktemp("ansible-inventory")
    (tmp / "id_fleet").write_text("not read by these tests\n")
    config = tmp / "piman.yaml"
    config.write_text(CONFIG.format(data=tmp / "data", port=free_port(), key=tmp / "id_fleet"))
    asyncio.run(_fill(config))
    return config


def expected_hostvars(config: Path) -> dict[str, dict[str, Any]]:
    """What Ansible should hold for each host: piman's variables and all's."""
    key = str(config.parent / "id_fleet")
    common = {"ansible_port": 2222, "ansible_ssh_private_key_file": key}
    base = {"piman_mac": None, "piman_serial": None, "piman_switch": "rack1", "piman_owner": None,
            "piman_environment": None, "piman_tags": [], "piman_monitor": "agent",
            **common}  # fmt: skip
    return {
        "pi1": {**base, "ansible_host": "198.18.0.11", "ansible_user": "pi",
                "piman_mac": "dc:a6:32:00:00:01", "piman_serial": "10000001", "piman_model": "pi4",
                "piman_port": 1, "piman_state": "allocated", "piman_owner": "alice",
                "piman_tags": ["camera"]},
        "pi2": {**base, "ansible_host": "198.18.0.12", "ansible_user": "builder",
                "piman_model": "pi3b+", "piman_port": 2, "piman_state": "deployed",
                "piman_environment": "bookworm", "piman_tags": ["camera", "2nd floor"]},
        "pi3": {**base, "ansible_user": "ops", "piman_model": None, "piman_port": 3,
                "piman_state": "ready"},
    }  # fmt: skip


GROUPS = {
    "camera": ["pi1", "pi2"],
    "env_bookworm": ["pi2"],
    "model_pi3bplus": ["pi2"],
    "model_pi4": ["pi1"],
    "no_ip": ["pi3"],
    "owner_alice": ["pi1"],
    "state_allocated": ["pi1"],
    "state_deployed": ["pi2"],
    "state_ready": ["pi3"],
    "switch_rack1": ["pi1", "pi2", "pi3"],
    "tag_2nd_floor": ["pi2"],
}

GRAPH = """\
@all:
  |--@ungrouped:
  |--@switches:
  |  |--@switch_rack1:
  |  |  |--pi1
  |  |  |--pi2
  |  |  |--pi3
  |--@models:
  |  |--@model_pi3bplus:
  |  |  |--pi2
  |  |--@model_pi4:
  |  |  |--pi1
  |--@states:
  |  |--@state_allocated:
  |  |  |--pi1
  |  |--@state_deployed:
  |  |  |--pi2
  |  |--@state_ready:
  |  |  |--pi3
  |--@owners:
  |  |--@owner_alice:
  |  |  |--pi1
  |--@environments:
  |  |--@env_bookworm:
  |  |  |--pi2
  |--@tags:
  |  |--@camera:
  |  |  |--pi1
  |  |  |--pi2
  |  |--@tag_2nd_floor:
  |  |  |--pi2
  |--@no_ip:
  |  |--pi3
"""


def leaf_groups(listed: dict[str, Any]) -> dict[str, list[str]]:
    return {
        name: sorted(body["hosts"])
        for name, body in listed.items()
        if name not in ("_meta", "all") and body.get("hosts")
    }


@pytest.fixture(scope="module")
def manager(fleet: Path) -> Iterator[tuple[str, str]]:
    """``piman server`` on the filled store: its URL and an admin token."""
    cfg = load_config(fleet)
    url = "http://{}:{}".format(*cfg.manager.http_host_port)
    with (fleet.parent / "server.log").open("wb") as log:
        proc = spawn(["server", "--config", str(fleet)], log)
    try:
        wait_http(url + "/healthz", proc, timeout=120)  # a busy 2-core machine is slow to start
        yield url, api_token(url, "admin", initial_admin_password(cfg.manager.data_dir))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_ansible_reads_the_fleet_from_a_running_manager_through_the_script(
    fleet: Path, manager: tuple[str, str], tmp_path: Path
) -> None:
    url, token = manager
    script = tmp_path / "fleet-inventory"
    wrote = piman("inventory", "--url", url, "--script", str(script), "--token", token)
    assert wrote.returncode == 0, wrote.stderr
    assert os.access(script, os.X_OK)
    assert token not in script.read_text()  # a secret never lands in the script
    assert "--token is not written into the script" in wrote.stderr

    env = ansible_env(tmp_path, PIMAN_TOKEN=token)
    listed = subprocess.run(
        [str(ANSIBLE_INVENTORY), "-i", str(script), "--list"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert "[ERROR]" not in listed.stderr, listed.stderr
    assert "WARNING" not in listed.stderr, listed.stderr
    answer = json.loads(listed.stdout)
    assert answer["_meta"]["hostvars"] == expected_hostvars(fleet)
    assert leaf_groups(answer) == GROUPS

    # --host, as Ansible without _meta would ask: the manager's answer for one host.
    one = subprocess.run([str(script), "--host", "pi2"], capture_output=True, text=True,
                         env=env, timeout=60, check=False)  # fmt: skip
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout)["ansible_user"] == "builder"


def test_ansible_graphs_the_store_inventory_and_names_the_hosts_without_address(
    fleet: Path, tmp_path: Path
) -> None:
    script = tmp_path / "inventory.sh"
    wrote = piman("inventory", "--config", str(fleet), "--script", str(script))
    assert wrote.returncode == 0, wrote.stderr
    graph = subprocess.run(
        [str(ANSIBLE_INVENTORY), "-i", str(script), "--graph"],
        capture_output=True, text=True, env=ansible_env(tmp_path), timeout=120, check=False,
    )  # fmt: skip
    assert graph.returncode == 0, graph.stderr
    assert graph.stdout == GRAPH
    assert graph.stderr == ""  # Ansible runs --list: no note for it to show as an error

    # A person running it is told which hosts Ansible cannot reach.
    plain = piman("inventory", "--config", str(fleet))
    assert plain.returncode == 0, plain.stderr
    assert "1 host(s) have no IP address (pi3)" in plain.stderr
    assert json.loads(plain.stdout)["no_ip"] == {"hosts": ["pi3"]}


PARSE = """\
import json, sys
from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader
out = {}
for source in sys.argv[1:]:
    inv = InventoryManager(loader=DataLoader(), sources=[source])
    out[source] = {
        "groups": {g: sorted(h.name for h in inv.groups[g].get_hosts()) for g in inv.groups},
        "vars": {h.name: {k: v for k, v in h.get_vars().items()
                          if k.startswith(("ansible_", "piman_"))} for h in inv.get_hosts()},
        "all": inv.groups["all"].get_vars(),
    }
print(json.dumps(out))
"""


def test_static_ini_and_yaml_give_ansible_the_same_hosts_groups_and_values(
    fleet: Path, tmp_path: Path
) -> None:
    files = {}
    for fmt in ("ini", "yaml"):
        result = piman("inventory", "--config", str(fleet), "--format", fmt)
        assert result.returncode == 0, result.stderr
        files[fmt] = tmp_path / f"hosts.{fmt}"
        files[fmt].write_text(result.stdout)
    parsed = subprocess.run(
        [sys.executable, "-c", PARSE, str(files["ini"]), str(files["yaml"])],
        capture_output=True, text=True, env=ansible_env(tmp_path), timeout=120, check=False,
    )  # fmt: skip
    assert parsed.returncode == 0, parsed.stderr
    wanted = expected_hostvars(fleet)
    common = {k: wanted["pi1"][k] for k in ("ansible_port", "ansible_ssh_private_key_file")}
    per_host = {n: {k: v for k, v in h.items() if k not in common} for n, h in wanted.items()}
    for fmt, answer in json.loads(parsed.stdout).items():
        assert answer["vars"] == per_host, fmt
        assert answer["all"] == common, fmt
        for group, members in GROUPS.items():
            assert answer["groups"][group] == members, (fmt, group)
        assert answer["groups"]["switches"] == ["pi1", "pi2", "pi3"], fmt


@pytest.fixture
async def api(fleet: Path) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, dict[str, str]]]]:
    """The app in process on the filled store, with a viewer, alice (holds pi1) and bob."""
    cfg = load_config(fleet)
    store = Store(cfg.database_url)
    await store.open()
    ctx = AppContext(config=cfg, store=store, metrics=CollectorRegistry())
    access = build_access(ctx).handle
    ctx.access = access
    ctx.reservations = ReservationService(cfg, store)
    headers = {}
    for name, role in (("viewer1", "viewer"), ("alice", "user"), ("bob", "user")):
        if await store.users.get(name) is None:
            await access.add_user(name, role, f"password-of-{name}")
        _, token = await access.create_token(name, "inventory", None)
        headers[name] = bearer(token)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(ctx)), base_url="http://127.0.0.1"
        ) as client:
            yield client, headers
    finally:
        await store.close()


async def test_a_user_gets_the_inventory_of_the_nodes_they_hold_and_readers_the_fleet(
    api: tuple[httpx.AsyncClient, dict[str, dict[str, str]]], fleet: Path
) -> None:
    client, headers = api
    wanted = expected_hostvars(fleet)
    key = str(fleet.parent / "id_fleet")

    viewer = (await client.get("/api/v1/inventory", headers=headers["viewer1"])).json()
    assert sorted(viewer["_meta"]["hostvars"]) == ["pi1", "pi2", "pi3"]
    assert viewer["all"]["vars"] == {"ansible_ssh_private_key_file": key, "ansible_port": 2222}

    alice = await client.get("/api/v1/inventory", headers=headers["alice"])
    assert alice.status_code == 200, alice.text
    body = alice.json()
    assert body["all"]["hosts"] == ["pi1"]
    assert body["all"]["vars"] == {"ansible_port": 2222}  # the manager's key file is not hers
    assert leaf_groups(body) == {g: ["pi1"] for g, m in GROUPS.items() if "pi1" in m}
    one = await client.get("/api/v1/inventory", params={"host": "pi1"}, headers=headers["alice"])
    assert one.json() == {k: v for k, v in wanted["pi1"].items() if k in one.json()}
    other = await client.get("/api/v1/inventory", params={"host": "pi2"}, headers=headers["alice"])
    assert other.status_code == 403
    assert "you do not hold it" in other.json()["detail"]

    bob = (await client.get("/api/v1/inventory", headers=headers["bob"])).json()
    assert bob == {"_meta": {"hostvars": {}}, "all": {"hosts": [], "children": [],
                                                      "vars": {"ansible_port": 2222}}}  # fmt: skip

    unknown = await client.get("/api/v1/inventory", params={"host": "pi9"},
                               headers=headers["viewer1"])  # fmt: skip
    assert unknown.status_code == 404
    assert "no host named 'pi9'" in unknown.json()["detail"]
    long = await client.get("/api/v1/inventory", params={"host": "x" * 300},
                            headers=headers["viewer1"])  # fmt: skip
    assert long.status_code == 422


def test_bad_requests_are_one_line_and_exit_2(fleet: Path, tmp_path: Path) -> None:
    cases = [
        (["--host", "pi9"], "no host named 'pi9' in the inventory"),
        (["--host", "pi1", "--format", "ini"], "--format json or yaml"),
        (["--list", "--host", "pi1"], "give --list or --host NAME, not both"),
        (["--script", str(tmp_path / "s"), "--list"], "--script writes the script"),
    ]
    for args, message in cases:
        result = piman("inventory", "--config", str(fleet), *args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    missing = piman("inventory", "--config", str(tmp_path / "none.yaml"), "--script", "x")
    assert missing.returncode == 2
    host_yaml = piman("inventory", "--config", str(fleet), "--host", "pi2", "--format", "yaml")
    assert yaml.safe_load(host_yaml.stdout)["piman_environment"] == "bookworm"


# -- Ansible over SSH to sshd nodes (root) ----------------------------------------------------

PLAYBOOK = """\
- hosts: camera
  gather_facts: false
  tasks:
    - name: leave a mark with what piman told Ansible
      ansible.builtin.copy:
        dest: "~/piman-was-here"
        content: >-
          {{ inventory_hostname }} {{ piman_switch }}:{{ piman_port }} {{ ansible_host }}
"""


@pytest.fixture
def lab() -> Iterator[SshLab]:
    needs_root()
    needs_tool("ip", "ss", "unshare", "ssh-keygen", "ssh", SSHD)
    with SshLab(nodes=3) as lab:
        yield lab


def test_ansible_runs_an_ad_hoc_command_and_a_playbook_on_the_nodes_piman_lists(
    lab: SshLab,
) -> None:
    sections = lab.config()
    for i, node in enumerate(sections["nodes"]):
        node.update(switch="rack1", port=i + 1, tags=["camera"] if i < 2 else [])
    config = lab.net.write_config(
        {**sections, "switches": [{"name": "rack1", "driver": "manual"}], "dhcp": None}
    )
    tmp = lab.net.tmp
    script = tmp / "inventory"
    wrote = piman("inventory", "--config", str(config), "--script", str(script))
    assert wrote.returncode == 0, wrote.stderr
    # The nodes run this machine's Python (they share its files); known_hosts stays in the lab.
    env = ansible_env(
        tmp,
        ANSIBLE_HOST_KEY_CHECKING="False",
        ANSIBLE_PYTHON_INTERPRETER="/usr/bin/python3",
        ANSIBLE_PIPELINING="True",
        ANSIBLE_SSH_ARGS="-F /dev/null -o UserKnownHostsFile=/dev/null -o ControlMaster=no",
    )
    run = ["env", *(f"{k}={v}" for k, v in env.items() if k.startswith("ANSIBLE_") or k == "PATH")]

    adhoc = lab.net.run(
        lab.server, *run, str(BIN / "ansible"), "all", "-i", str(script), "-f", "3",
        "-m", "ansible.builtin.shell",
        "-a", 'echo "{{ inventory_hostname }} {{ ansible_user }} $(echo $SSH_CONNECTION | '
              'cut -d" " -f3) $USER"',
        check=False, timeout=180,
    )  # fmt: skip
    assert adhoc.returncode == 0, adhoc.stdout + adhoc.stderr
    for node in lab.nodes:
        # Each host reached at its own address, as the user piman named, with piman's key.
        answer = f"{node.name} | CHANGED | rc=0 >>\n{node.name} {LAB_USER} {node.ip} {LAB_USER}\n"
        assert answer in adhoc.stdout, adhoc.stdout
    assert "WARNING" not in adhoc.stderr, adhoc.stderr

    (tmp / "mark.yml").write_text(PLAYBOOK)
    play = lab.net.run(
        lab.server, *run, str(BIN / "ansible-playbook"), "-i", str(script), str(tmp / "mark.yml"),
        check=False, timeout=180,
    )  # fmt: skip
    assert play.returncode == 0, play.stdout + play.stderr
    recap = {ln.split()[0]: ln.split(":", 1)[1].split()[:2] for ln in play.stdout.splitlines()
             if re.match(r"n\d\s+:\s+ok=", ln)}  # fmt: skip
    assert recap == {"n0": ["ok=1", "changed=1"], "n1": ["ok=1", "changed=1"]}, play.stdout
    for i, node in enumerate(lab.nodes):
        mark = node.dir / "home" / "piman-was-here"
        if i < 2:  # the camera group: the tag piman turned into a group
            assert mark.read_text() == f"{node.name} rack1:{i + 1} {node.ip}"
        else:
            assert not mark.exists()
