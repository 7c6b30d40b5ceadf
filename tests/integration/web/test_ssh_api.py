"""``POST /api/v1/ssh/run``: who may run what where, the bounds, and the NDJSON stream.

The route's own logic (target resolution, authorization, bounds, audit, the stream's lines) is
tested in process with a fake SSH handle that records what it was asked, on a real store with
real accounts and reservations. The last test runs a real manager (``piman server``) in a
network namespace against OpenSSH ``sshd`` nodes (tests/integration/sshlab.py) and posts a run
over HTTP, as ``piman ssh run --url`` does.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry

from piman.access.reservations_service import ReservationService
from piman.access.service import build as build_access
from piman.config.models import Config
from piman.context import AppContext
from piman.deploy.service import build as build_deploy
from piman.fleet.ssh import SshResult, SshTarget
from piman.inventory.groups import select
from piman.inventory.hosts import collect
from piman.store import Store, reconcile
from piman.web.api.ssh import MAX_COMMAND_TIMEOUT, MAX_CONCURRENCY, MAX_CONNECT_TIMEOUT
from piman.web.app import create_app
from tests.integration.sshlab import SSHD, SshLab
from tests.integration.web.test_access_table import FakePower
from tests.support import bearer, free_port, needs_root, needs_tool

BASE = "http://127.0.0.1:8000"

# What each fake host answers, in the order the fake "finishes" them (not the targets' order).
ANSWERS = {
    "pi3": SshResult("pi3", "198.18.0.13", None, error="connection refused", elapsed=0.01),
    "pi2": SshResult("pi2", "198.18.0.12", 3, stdout="", stderr="no such file\n", elapsed=0.2),
    "pi1": SshResult("pi1", "198.18.0.11", 0, stdout=" 12:00 up 1 day\n", elapsed=0.3),
}


@dataclass
class FakeSsh:
    """An SSH handle that answers from :data:`ANSWERS` and records every run."""

    config: Config
    store: Store
    runs: list[dict[str, Any]] = field(default_factory=list)

    async def targets(self, nodes: Sequence[str]) -> list[SshTarget]:
        chosen = select(await collect(self.config, self.store), nodes)
        missing = [h.name for h in chosen if not h.ip]
        if missing:
            raise ValueError(f"no known address for {', '.join(missing)} (give it an `ip:`)")
        return [SshTarget(h.name, str(h.ip), 22, h.ssh_user) for h in chosen]

    async def stream(
        self, targets: Sequence[SshTarget], command: str, **options: Any
    ) -> AsyncIterator[SshResult]:
        self.runs.append({"targets": [t.name for t in targets], "command": command, **options})
        wanted = {t.name for t in targets}
        for name, result in ANSWERS.items():
            if name in wanted:
                yield result

    async def run(
        self, targets: Sequence[SshTarget], command: str, **options: Any
    ) -> list[SshResult]:
        return [r async for r in self.stream(targets, command, **options)]


@dataclass
class Rig:
    client: httpx.AsyncClient
    ctx: AppContext
    ssh: FakeSsh
    headers: dict[str, dict[str, str]]
    db: Path

    async def run(self, who: str, **body: Any) -> httpx.Response:
        return await self.client.post("/api/v1/ssh/run", json=body, headers=self.headers[who])

    def audit(self) -> list[tuple[str, str, str, str]]:
        db = sqlite3.connect(self.db)
        try:
            rows = db.execute(
                "SELECT actor, target, result, detail FROM audit_log WHERE action = 'ssh.run' "
                "ORDER BY id"
            ).fetchall()
        finally:
            db.close()
        return [(a.split(" (token")[0], t, r, d) for a, t, r, d in rows]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    config = Config.model_validate(
        {
            "manager": {"address": "198.18.0.1", "data_dir": str(tmp_path)},
            "deploy": {"check_address": False},
            "switches": [{"name": "rack1", "driver": "manual"}],
            "nodes": [
                {"name": "pi1", "switch": "rack1", "port": 1, "ip": "198.18.0.11", "model": "pi4"},
                {"name": "pi2", "switch": "rack1", "port": 2, "ip": "198.18.0.12", "model": "pi4"},
                {"name": "pi3", "switch": "rack1", "port": 3, "ip": "198.18.0.13", "model": "pi3"},
                {"name": "pi4", "switch": "rack1", "port": 4},  # no address
            ],
        }
    )
    db = tmp_path / "piman.db"
    store = Store(f"sqlite+aiosqlite:///{db}")
    await store.open()
    await reconcile(store, config)
    ctx = AppContext(config=config, store=store, metrics=CollectorRegistry())
    ctx.power = FakePower(config)
    deploy = build_deploy(ctx)  # the real service; its engine is not started
    assert deploy is not None
    ctx.deploy = deploy.handle
    ctx.reservations = ReservationService(config, store, power=ctx.power, deploy=ctx.deploy)
    ssh = FakeSsh(config, store)
    ctx.ssh = ssh
    access = build_access(ctx).handle
    ctx.access = access
    headers: dict[str, dict[str, str]] = {"anonymous": {}}
    for name, role in [("ann", "user"), ("bob", "user"), ("vic", "viewer"),
                       ("olga", "operator"), ("root", "admin")]:  # fmt: skip
        await store.users.add(name, role, "no-password-login-in-these-tests")
        _, token = await access.create_token(name, "tests", None)
        headers[name] = bearer(token)
    app = create_app(ctx)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
            made = await c.post(
                "/api/v1/reservations",
                json={"nodes": ["pi1", "pi2"], "duration": "2h"},
                headers=headers["ann"],
            )
            assert made.status_code == 201, made.text
            assert made.json()["state"] == "active"
            yield Rig(c, ctx, ssh, headers, db)
    finally:
        await store.close()


def lines(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-ndjson"
    assert response.text.endswith("\n")
    return [json.loads(line) for line in response.text.splitlines()]


async def test_an_operator_gets_a_line_per_host_as_it_finishes_then_the_summary(rig: Rig) -> None:
    response = await rig.run("olga", command="uptime", targets=["pi1", "pi2", "pi3"])
    got = lines(response)
    assert got == [
        {"node": "pi3", "host": "198.18.0.13", "exit_status": None, "stdout": "",
         "stderr": "", "error": "connection refused", "elapsed": 0.01, "truncated": False},
        {"node": "pi2", "host": "198.18.0.12", "exit_status": 3, "stdout": "",
         "stderr": "no such file\n", "error": None, "elapsed": 0.2, "truncated": False},
        {"node": "pi1", "host": "198.18.0.11", "exit_status": 0, "stdout": " 12:00 up 1 day\n",
         "stderr": "", "error": None, "elapsed": 0.3, "truncated": False},
        {"summary": {"total": 3, "ok": 1, "failed": 2}},
    ]  # fmt: skip
    assert response.headers["cache-control"] == "no-store"


async def test_targets_resolve_like_everywhere_and_the_run_is_audited(rig: Rig) -> None:
    got = lines(await rig.run("olga", command="uptime", targets=["model_pi4", "rack1:3", "pi1"]))
    assert [g.get("node") for g in got] == ["pi3", "pi2", "pi1", None]
    assert got[-1] == {"summary": {"total": 3, "ok": 1, "failed": 2}}
    (run,) = rig.ssh.runs
    assert run["targets"] == ["pi1", "pi2", "pi3"]  # inventory order, no duplicates
    assert run["command"] == "uptime"
    assert rig.audit() == [
        ("olga", "pi1", "started", "uptime"),
        ("olga", "pi2", "started", "uptime"),
        ("olga", "pi3", "started", "uptime"),
    ]


async def test_a_node_without_an_address_is_a_422_naming_it(rig: Rig) -> None:
    response = await rig.run("root", command="uptime", targets=["all"])
    assert response.status_code == 422
    assert "pi4" in response.json()["detail"]
    assert rig.ssh.runs == []
    assert rig.audit() == []


async def test_an_unknown_target_is_a_404_naming_it_before_anything_runs(rig: Rig) -> None:
    response = await rig.run("root", command="reboot", targets=["pi1", "pi9"])
    assert response.status_code == 404
    assert "'pi9'" in response.json()["detail"]
    response = await rig.run("ann", command="reboot", targets=["model_pi5"])
    assert response.status_code == 404
    assert rig.ssh.runs == []
    assert rig.audit() == []


async def test_a_user_runs_on_the_nodes_they_hold_only(rig: Rig) -> None:
    got = lines(await rig.run("ann", command="id", targets=["pi2"]))
    assert [g.get("node") for g in got] == ["pi2", None]
    refused = await rig.run("ann", command="id", targets=["pi1", "pi3", "pi2"])
    assert refused.status_code == 403
    assert refused.json()["detail"] == "role user may not run commands on pi3: you do not hold it"
    refused = await rig.run("ann", command="id", targets=["all"])
    assert refused.status_code == 403
    # reserved: her nodes; with targets too, without duplicates.
    got = lines(await rig.run("ann", command="id", reserved=True))
    assert got[-1] == {"summary": {"total": 2, "ok": 1, "failed": 1}}
    lines(await rig.run("ann", command="id", targets=["pi2"], reserved=True))
    assert [r["targets"] for r in rig.ssh.runs] == [["pi2"], ["pi1", "pi2"], ["pi2", "pi1"]]
    # Bob holds nothing: not her nodes, and `reserved` names none.
    assert (await rig.run("bob", command="id", targets=["pi1"])).status_code == 403
    nothing = await rig.run("bob", command="id", reserved=True)
    assert nothing.status_code == 409
    assert "you hold no nodes" in nothing.json()["detail"]
    assert len(rig.ssh.runs) == 3
    assert [t for _, t, _, _ in rig.audit()] == ["pi2", "pi1", "pi2", "pi2", "pi1"]


async def test_viewers_and_strangers_run_nothing(rig: Rig) -> None:
    viewer = await rig.run("vic", command="id", targets=["pi1"])
    assert viewer.status_code == 403
    assert viewer.json()["detail"] == "role viewer may not run commands on nodes"
    assert (await rig.run("vic", command="id", reserved=True)).status_code == 403
    assert (await rig.run("anonymous", command="id", targets=["pi1"])).status_code == 401
    assert rig.ssh.runs == []


async def test_the_bounds_of_a_request(rig: Rig) -> None:
    for body in (
        {"command": "x" * 4097, "targets": ["pi1"]},
        {"command": "", "targets": ["pi1"]},
        {"command": "id", "targets": ["pi1"] * 1001},
        {"command": "id", "targets": [""]},
        {"command": "id"},  # neither targets nor reserved
        {"command": "id", "targets": ["pi1"], "connect_timeout": 0},
        {"command": "id", "targets": ["pi1"], "concurrency": 0},
        {"command": "id", "targets": ["pi1"], "shell": "/bin/sh"},
    ):
        response = await rig.run("root", **body)
        assert response.status_code == 422, (body, response.text)
    assert rig.ssh.runs == []
    # Deadlines and concurrency beyond the maxima are clamped; absent ones are the settings'.
    lines(await rig.run("root", command="x" * 4096, targets=["pi1"] * 1000))
    lines(await rig.run("root", command="id", targets=["pi1"], connect_timeout=1e9,
                        command_timeout="2d", concurrency=10**6))  # fmt: skip
    lines(await rig.run("root", command="id", targets=["pi1"], connect_timeout="3s"))
    first, clamped, given = rig.ssh.runs
    assert first["targets"] == ["pi1"]
    assert (first["connect_timeout"], first["command_timeout"], first["concurrency"]) == (
        None,
        None,
        None,
    )
    assert (clamped["connect_timeout"], clamped["command_timeout"], clamped["concurrency"]) == (
        MAX_CONNECT_TIMEOUT,
        MAX_COMMAND_TIMEOUT,
        MAX_CONCURRENCY,
    )
    assert given["connect_timeout"] == 3.0


async def test_without_ssh_the_route_says_so(rig: Rig) -> None:
    rig.ctx.ssh = None
    response = await rig.run("olga", command="id", targets=["pi1"])
    assert response.status_code == 503
    assert "SSH to the nodes is not available" in response.json()["detail"]
    # Who may not is still told so first.
    assert (await rig.run("ann", command="id", targets=["pi3"])).status_code == 403


# A real manager and real sshd nodes ----------------------------------------------------------

# Run in the manager's namespace: a token for the first admin, then the run, streamed.
CLIENT = """\
import json, sys, time
from pathlib import Path
import httpx
from tests.support import api_token, bearer, initial_admin_password

url, data_dir, body = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
deadline = time.monotonic() + 30
while True:
    try:
        if httpx.get(url + "/healthz", timeout=2).status_code == 200:
            break
    except httpx.HTTPError:
        pass
    assert time.monotonic() < deadline, "no /healthz in 30 s"
    time.sleep(0.2)
token = api_token(url, "admin", initial_admin_password(data_dir))
print(json.dumps({"token": token}))
with httpx.stream("POST", url + "/api/v1/ssh/run", json=body, headers=bearer(token),
                  timeout=60) as response:
    print(json.dumps({"status": response.status_code, "type": response.headers["content-type"]}))
    for line in response.iter_lines():
        print(line, flush=True)
"""

# Node-specific output (the address the session came in on), a failure on n1, and n2 is down.
COMMAND = 'set -- $SSH_CONNECTION; echo "$3"; [ "$3" != 198.18.0.11 ] || { echo bad >&2; exit 3; }'


@pytest.fixture
def lab() -> Iterator[SshLab]:
    needs_root()
    needs_tool("ip", "ss", "unshare", "ssh-keygen", SSHD)
    with SshLab(nodes=3) as lab:
        yield lab


def test_a_manager_runs_a_command_on_sshd_nodes_and_streams_each_host(lab: SshLab) -> None:
    lab.stop(lab.nodes[2])
    config = lab.net.write_config({**lab.config(), "manager": {"http": f"127.0.0.1:{free_port()}"}})
    settings = yaml.safe_load(config.read_text())
    url = f"http://{settings['manager']['http']}"
    lab.net.start_manager(config=config)
    # Deadlines generous for a loaded test machine (the lab's connect_timeout is 5 s).
    body = {"command": COMMAND, "targets": ["all"], "connect_timeout": "30s"}
    out = lab.net.python(
        lab.server, CLIENT, url, settings["manager"]["data_dir"], json.dumps(body), timeout=120
    )
    token, head, *rest = [json.loads(line) for line in out.splitlines()]
    assert head == {"status": 200, "type": "application/x-ndjson"}, lab.net.manager_log()
    *hosts, summary = rest
    assert summary == {"summary": {"total": 3, "ok": 1, "failed": 2}}
    by_node = {h["node"]: h for h in hosts}
    assert sorted(by_node) == ["n0", "n1", "n2"]
    n0, n1, n2 = by_node["n0"], by_node["n1"], by_node["n2"]
    assert (n0["host"], n0["exit_status"], n0["stdout"], n0["stderr"], n0["error"]) == (
        "198.18.0.10",
        0,
        "198.18.0.10\n",
        "",
        None,
    )
    assert (n1["exit_status"], n1["stdout"], n1["stderr"], n1["error"]) == (
        3,
        "198.18.0.11\n",
        "bad\n",
        None,
    )
    assert n2["exit_status"] is None
    assert n2["error"] == "connection refused"
    assert all(h["truncated"] is False and h["elapsed"] >= 0 for h in hosts)

    # The CLI through the same route (piman ssh run --url): each host's lines, exit 1.
    cli = lab.net.run(
        lab.server,
        "env",
        f"PIMAN_TOKEN={token['token']}",
        sys.executable,
        "-m",
        "piman",
        "ssh",
        "run",
        COMMAND,
        "n0",
        "n1",
        "--url",
        url,
        "--connect-timeout",
        "30",
        check=False,
        timeout=90,
    )
    assert cli.returncode == 1, cli.stderr
    assert "n0: 198.18.0.10" in cli.stdout.splitlines()
    assert "n1: 198.18.0.11" in cli.stdout.splitlines()
    assert "n1: bad" in cli.stderr.splitlines()
