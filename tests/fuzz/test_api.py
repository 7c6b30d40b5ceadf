"""The REST API under schemathesis, from the OpenAPI document it serves, as every principal.

A real ``piman server`` (HTTP on 127.0.0.1, the store on SQLite, power through a command
switch, deploy, reservations, monitoring with alerting; no DHCP or TFTP) answers schemathesis'
engine, the one its ``schemathesis run`` command drives: the examples, the coverage phase
(boundary values, missing and unexpected parameters, methods the document does not list) and
the fuzzing phase, for the time and examples of the fuzz profile (``tests/fuzz/conftest.py``),
once per principal: no credentials, then the tokens of a viewer, a user (holding ``pi1`` by a
reservation, not ``pi2``), an operator and an admin. Every check runs: no 5xx, no status,
header, content type or body the document does not describe, schema-violating requests
refused, schema-valid ones accepted (or refused for what JSON Schema cannot say: see
``ACCEPTED``), ``Allow`` naming exactly the documented methods. Each request waits at most
``request-timeout``: a manager that does not answer in time is a failure, not a slow run.

After each principal: the manager still runs and answers a well-formed request correctly, its
open descriptors are back to what they were, and its log holds no traceback and no ERROR line.

The fuzzer must not revoke the run's own credentials: ``DELETE /api/v1/tokens/{id}`` aimed at
one of the tokens the run authenticates with is sent for a spare token of the same account,
and a change to one of the run's accounts (``/api/v1/users/{name}``) goes to a spare account
(those operations are still fuzzed, on every other value).
"""

from __future__ import annotations

import asyncio
import gc
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import yaml

from tests.fuzz.conftest import Budget, budget
from tests.fuzz.live import fds, steady_fds
from tests.support import free_port

ROLES = ("viewer", "user", "operator", "admin")  # each with an account and a token, in order
SPARE_USER = "fuzz-spare"  # changed or removed instead of the run's own accounts
# What a request the document allows may get: besides the role and state refusals, 422 for what
# JSON Schema cannot say (a regex that does not compile, a duration of 0, a name taken …).
ACCEPTED = ["2xx", "401", "403", "404", "409", "422", "429"]
PRINCIPALS = ("anonymous", *ROLES)  # anonymous: no credentials at all
PASSWORD = "fuzz-password-of-{role}"


@dataclass
class Account:
    name: str
    token: str
    token_id: int
    spare_id: int  # revoked instead of token_id when the fuzzer aims at the latter


@dataclass
class Manager:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    accounts: dict[str, Account] = field(default_factory=dict)

    def fds(self) -> list[str]:
        return fds(self.proc.pid)


def _config(tmp: Path) -> dict[str, Any]:
    return {
        "manager": {
            "address": "198.18.0.1",
            "network": "198.18.0.0/24",
            "data_dir": str(tmp / "data"),
            "http": f"127.0.0.1:{free_port()}",
        },
        "deploy": {
            "api_listen": f"127.0.0.1:{free_port()}",
            "image_listen": f"127.0.0.1:{free_port()}",
        },
        # A relay switched by a program that always succeeds: power answers 200, never sleeps.
        "switches": [
            {
                "name": "rack1",
                "driver": "command",
                "command": ["true"],
                "off_seconds": 0,
                "batch_interval": 0,
            }
        ],
        "nodes": [
            {
                "name": "pi1",
                "switch": "rack1",
                "port": 1,
                "mac": "dc:a6:32:00:00:01",
                "ip": "198.18.0.11",
                "model": "pi4",
            },
            {"name": "pi2", "switch": "rack1", "port": 2, "model": "pi5"},
        ],
        # A fuzzed POST /api/v1/ssh/run gives up on pi1 within 1 s: no connection left open
        # when the test counts the manager's file descriptors.
        "ssh": {"connect_timeout": "1s"},
        "monitoring": {
            "scrape_interval": "1h",
            "rules": [{"alert": "NodeDown", "expr": "up == 0", "for": "1m"}],
        },
    }


async def _accounts(config_path: Path) -> dict[str, Account]:
    """One account per role with a token, and a spare token each, made through the store."""
    from prometheus_client import CollectorRegistry

    from piman.access.service import build as build_access
    from piman.config import load_config
    from piman.context import AppContext
    from piman.private_files import make_private_dir
    from piman.store import Store

    config = load_config(config_path)
    make_private_dir(config.manager.data_dir)
    store = Store(config.database_url)
    await store.open()
    try:
        ctx = AppContext(config=config, store=store, metrics=CollectorRegistry())
        access = build_access(ctx).handle
        accounts = {}
        for role in ROLES:
            name = f"fuzz-{role}"
            await access.add_user(name, role, PASSWORD.format(role=role))
            record, token = await access.create_token(name, "fuzz", None)
            spare, _ = await access.create_token(name, "spare", None)
            accounts[role] = Account(name, token, record.id, spare.id)
        await access.add_user(SPARE_USER, "viewer", PASSWORD.format(role="spare"))
        return accounts
    finally:
        await store.close()


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Manager]:
    tmp = tmp_path_factory.mktemp("api")
    config = _config(tmp)
    path = tmp / "piman.yaml"
    path.write_text(yaml.safe_dump(config))
    accounts = asyncio.run(_accounts(path))
    log = tmp / "manager.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "piman", "server", "-c", str(path)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    running = Manager(f"http://{config['manager']['http']}", proc, log, accounts)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(running.url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        # The user holds pi1 (node-scoped access), not pi2.
        held = httpx.post(
            running.url + "/api/v1/reservations",
            json={"nodes": ["pi1"], "duration": "1d"},
            headers={"Authorization": f"Bearer {accounts['user'].token}"},
            timeout=30,
        )
        assert held.status_code == 201, held.text
        yield running
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _warm_up(manager: Manager) -> None:
    """Requests at once beyond the store's connection pool, so it holds all it keeps."""
    headers = {"Authorization": f"Bearer {manager.accounts['admin'].token}"}

    async def burst() -> None:
        async with httpx.AsyncClient(base_url=manager.url, headers=headers, timeout=30) as client:
            answers = await asyncio.gather(*(client.get("/api/v1/nodes") for _ in range(20)))
        assert {a.status_code for a in answers} == {200}

    asyncio.run(burst())


def _settled_fds(manager: Manager, baseline: int, within: float = 30.0) -> list[str]:
    """The manager's descriptors once back to ``baseline`` (or what is left after ``within``)."""
    deadline = time.monotonic() + within
    while True:
        now = manager.fds()
        if len(now) <= baseline or time.monotonic() > deadline:
            return now
        time.sleep(0.2)


def _well_formed_request_is_answered(manager: Manager) -> None:
    headers = {"Authorization": f"Bearer {manager.accounts['admin'].token}"}
    answer = httpx.get(manager.url + "/api/v1/nodes/pi1", headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["name"] == "pi1"


def _log_problems(log: Path) -> list[str]:
    return [
        line
        for line in log.read_text(errors="replace").splitlines()
        if "Traceback" in line or " ERROR " in line or "CRITICAL" in line
    ]


@dataclass
class Run:
    cases: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _fuzz(manager: Manager, role: str, plan: Budget) -> Run:
    from schemathesis.engine import Status, events, from_schema

    account = manager.accounts.get(role)
    auth = {} if account is None else {"Authorization": f"Bearer {account.token}"}
    protected = {a.token_id: a.spare_id for a in manager.accounts.values()}

    ours = {a.name for a in manager.accounts.values()}

    def spare_instead(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
        """The run's own credentials are not the fuzzer's to revoke: a spare takes the hit."""
        params = case.path_parameters or {}
        if case.method == "DELETE" and params.get("token_id") in protected:
            params["token_id"] = protected[params["token_id"]]
        if "/users/{name}" in case.path and params.get("name") in ours:
            params["name"] = SPARE_USER

    config = schemathesis.Config.from_dict(
        {
            "headers": auth,
            "request-timeout": 30,
            "seed": plan.seed,
            "workers": 1,
            "max-time": int(plan.api_seconds),
            "continue-on-failure": True,
            "generation": {"max-examples": plan.api_examples, "mode": "all"},
            "phases": {
                "examples": {"enabled": True},
                "coverage": {"enabled": True},
                "fuzzing": {"enabled": True},
                "stateful": {"enabled": False},
            },
            "checks": {
                "enabled": True,
                "positive_data_acceptance": {"expected-statuses": ACCEPTED},
            },
            "operations": [
                {
                    # Prometheus' answer to a query it cannot run (end before start, too many
                    # points per series) is 400 bad_data: what clients of its API expect.
                    "include-path": "/api/v1/query_range",
                    "checks": {
                        "positive_data_acceptance": {"expected-statuses": [*ACCEPTED, "400"]}
                    },
                }
            ],
        }
    )
    schemathesis.hook("before_call")(spare_instead)  # global: unregistered below
    try:
        schema = schemathesis.openapi.from_url(
            manager.url + "/api/v1/openapi.json",
            # The document is for readers: a `user` account reads it with a viewer's token.
            headers={"Authorization": f"Bearer {manager.accounts['viewer'].token}"},
            config=config,
        )
        run = Run()
        for event in from_schema(schema).execute():
            if isinstance(event, events.ScenarioFinished):
                recorder = event.recorder
                run.cases += len(recorder.cases)
                for interaction in recorder.interactions.values():
                    if interaction.response is not None:
                        run.statuses[interaction.response.status_code] += 1
                for case_id, checks in recorder.checks.items():
                    for check in checks:
                        if check.status == Status.FAILURE and check.failure_info is not None:
                            failure = check.failure_info.failure
                            case = recorder.cases[case_id].value
                            run.failures.append(
                                f"{recorder.label}: {check.name}: {failure.title}: "
                                f"{failure.message.splitlines()[0] if failure.message else ''} "
                                f"[{case.method} {case.formatted_path} "
                                f"query={case.query} body={str(case.body)[:120]}]"
                            )
            elif isinstance(event, events.NonFatalError):
                run.errors.append(f"{event.label}: {event.info.format()}")
            elif isinstance(event, events.FatalError):
                run.errors.append(f"fatal: {event.exception!r}")
        return run
    finally:
        schemathesis.hooks.unregister(spare_instead)


@pytest.mark.parametrize("role", PRINCIPALS)
def test_the_api_answers_every_role_as_its_openapi_document_says(
    manager: Manager, role: str, fuzz_report: Any
) -> None:
    plan = budget()
    _warm_up(manager)
    baseline = steady_fds(manager.proc.pid)
    t0 = time.monotonic()
    run = _fuzz(manager, role, plan)
    elapsed = time.monotonic() - t0
    gc.collect()  # the engine's HTTP session goes: its kept-alive connections close now

    assert manager.proc.poll() is None, "the manager exited"
    _well_formed_request_is_answered(manager)
    after = _settled_fds(manager, len(baseline))
    server_errors = sum(n for status, n in run.statuses.items() if status >= 500)
    fuzz_report(
        f"fuzz api ({role}): {run.cases} requests in {elapsed:.0f} s, {server_errors} 5xx, "
        f"{len(run.failures)} check failures, statuses "
        f"{dict(sorted(run.statuses.items()))}, fd {len(baseline)} → {len(after)}"
    )
    assert run.errors == [], "\n".join(run.errors)
    assert run.failures == [], "\n".join(run.failures[:30])
    assert server_errors == 0
    assert len(after) <= len(baseline), sorted(set(after) - set(baseline))
    assert _log_problems(manager.log) == []
