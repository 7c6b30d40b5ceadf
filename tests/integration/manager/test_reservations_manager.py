"""Reservations against a real `piman server`: the CLI and the API, a PoE switch played by
snmpsim, warnings to a real SMTP server (aiosmtpd), and a `kill -9` of the manager between the
warning and the end.

Fast clock: the reservations last seconds (the warning 14 s before the end of a 20 s one), the
manager's own timers and the notifier's outbox do the rest, on the wall clock."""

from __future__ import annotations

import email
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import Message
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.manager.test_server import spawn, wait_http
from tests.integration.power.snmpsim import RFC, Snmpsim, rfc3621_records, snmpget, start_snmpsim
from tests.support import api_token, bearer, free_port, initial_admin_password, needs_tool

CONFIG = """\
manager: {{address: 198.18.0.1, data_dir: {data}, http: "127.0.0.1:{port}"}}
switches:
  - name: rack1
    address: 198.18.0.254
    uplink_port: 8
    off_seconds: 0.2s
    snmp: {{host: 127.0.0.1, port: {snmp}, community: lab, timeout: 1s}}
nodes:
  - {{name: pi1, switch: rack1, port: 1, model: pi4}}
  - {{name: pi2, switch: rack1, port: 2, model: pi4}}
  - {{name: pi3, switch: rack1, port: 3, model: pi3}}
monitoring:
  default_rules: false
  scrape_interval: 60s
  notify: ["mailto://piman@127.0.0.1:{smtp}?from=piman@lab.org"]
reservations:
  warnings: [14s]
  buffer: 2s
  unused_after: null
"""


@pytest.fixture(scope="module")
def switch() -> Iterator[Snmpsim]:
    needs_tool("snmpsimd", "snmpget")
    sim = start_snmpsim({"lab": rfc3621_records(8)}, v3=False)
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture
def smtp() -> Iterator[tuple[int, list[Message]]]:
    from aiosmtpd.controller import Controller

    mails: list[Message] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            mail = email.message_from_bytes(envelope.content)
            mail["X-Test-Rcpt"] = ",".join(envelope.rcpt_tos)
            mails.append(mail)
            return "250 OK"

    port = free_port()
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, mails
    finally:
        controller.stop()


@dataclass
class Manager:
    root: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config(self) -> Path:
        return self.root / "piman.yaml"

    def start(self) -> None:
        with (self.root / "stderr.log").open("ab") as err:
            self.proc = spawn(["server", "--config", str(self.config)], err)
        wait_http(self.url + "/healthz", self.proc)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def rows(self, query: str) -> list[tuple[Any, ...]]:
        db = sqlite3.connect(self.root / "data" / "piman.db")
        try:
            return db.execute(query).fetchall()
        finally:
            db.close()


@pytest.fixture
def manager(tmp_path: Path, switch: Snmpsim, smtp: tuple[int, list[Message]]) -> Iterator[Manager]:
    m = Manager(tmp_path, free_port())
    m.config.write_text(
        CONFIG.format(data=tmp_path / "data", port=m.port, snmp=switch.port, smtp=smtp[0])
    )
    for port in (1, 2, 3):  # every port on, whatever an earlier test left
        subprocess.run(
            ["snmpset", "-v2c", "-c", "lab", f"127.0.0.1:{switch.port}", f"{RFC}.3.1.{port}",
             "i", "1"],
            capture_output=True, check=False,
        )  # fmt: skip
    m.start()
    try:
        yield m
    finally:
        m.stop()


def accounts(m: Manager) -> dict[str, str]:
    """Tokens of admin, and of two users (ann with an e-mail address, bob without)."""
    admin = api_token(m.url, "admin", initial_admin_password(m.root / "data"))
    tokens = {"admin": admin}
    for name, mail in (("ann", "ann@lab.org"), ("bob", None)):
        made = httpx.post(
            m.url + "/api/v1/users",
            json={"name": name, "role": "user", "password": f"{name}-password"},
            headers=bearer(admin),
        )
        assert made.status_code == 201, made.text
        if mail:
            patch = httpx.patch(
                m.url + f"/api/v1/users/{name}", json={"email": mail}, headers=bearer(admin)
            )
            assert patch.json()["email"] == mail
        tokens[name] = api_token(m.url, name, f"{name}-password")
    return tokens


def piman(m: Manager, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "piman", *args, "--url", m.url, "--token", token],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200", "HOME": str(m.root)},
        check=False,
    )


def port_state(sim: Snmpsim, port: int) -> str | None:
    """The switch's own word (net-snmp): 1 on, 2 off."""
    return snmpget(sim.port, "lab", f"{RFC}.3.1.{port}")


def until(what: Callable[[], Any], seconds: float, message: str) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        got = what()
        if got:
            return got
        assert time.monotonic() < deadline, message
        time.sleep(0.2)


def get(m: Manager, token: str, path: str) -> Any:
    response = httpx.get(m.url + "/api/v1" + path, headers=bearer(token), timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_users_reserve_extend_and_release_with_the_cli(manager: Manager, switch: Snmpsim) -> None:
    tokens = accounts(manager)
    made = piman(manager, tokens["ann"], "reserve", "--count", "2", "--model", "pi4", "--for", "1h")
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("reservation 1 booked: pi1, pi2 for ann, active, until ")

    # Bob wants one pi4 too: one line that says who holds them and when it would fit.
    taken = piman(manager, tokens["bob"], "reserve", "-n", "1", "--model", "pi4", "--for", "1h")
    assert taken.returncode == 2
    assert taken.stderr.count("\n") == 1, taken.stderr
    assert "reserved by ann" in taken.stderr
    assert "the next free slot for 1 node (model pi4) starts" in taken.stderr
    # He may not switch her nodes; she may.
    assert piman(manager, tokens["bob"], "power", "off", "pi1").returncode == 1
    assert port_state(switch, 1) == "1"
    cycled = piman(manager, tokens["ann"], "power", "off", "pi2")
    assert cycled.returncode == 0, cycled.stderr
    assert port_state(switch, 2) == "2"

    listed = piman(manager, tokens["ann"], "reservations", "-o", "json")
    assert [(r["id"], r["state"], r["nodes"]) for r in json.loads(listed.stdout)] == [
        (1, "active", ["pi1", "pi2"])
    ]
    table = piman(manager, tokens["bob"], "reservations")
    assert "0 reservations" in table.stdout  # a user sees their own only
    extended = piman(manager, tokens["ann"], "extend", "1", "--by", "30m")
    assert extended.returncode == 0, extended.stderr
    assert "reservation 1 extended" in extended.stdout
    assert (
        datetime.fromisoformat(get(manager, tokens["ann"], "/reservations/1")["end_at"])
        - datetime.fromisoformat(get(manager, tokens["ann"], "/reservations/1")["start_at"])
    ).total_seconds() == 5400
    denied = piman(manager, tokens["bob"], "release", "1")
    assert denied.returncode == 1
    assert "only they or an operator may change it" in denied.stderr

    released = piman(manager, tokens["ann"], "release", "1")
    assert released.returncode == 0, released.stderr
    assert released.stdout.startswith("reservation 1 released: pi1, pi2 for ann, released")
    assert (port_state(switch, 1), port_state(switch, 2), port_state(switch, 3)) == ("2", "2", "1")
    nodes = {n["name"]: n["state"] for n in get(manager, tokens["admin"], "/nodes")}
    assert nodes == {"pi1": "ready", "pi2": "ready", "pi3": "ready"}
    now_free = piman(manager, tokens["bob"], "reserve", "-n", "1", "--model", "pi4", "--for", "1h")
    assert now_free.returncode == 0, now_free.stderr  # free at once: its release is done
    audit = [a for (a,) in manager.rows("SELECT action FROM audit_log WHERE action LIKE 'res%'")]
    assert audit[:4] == [
        "reservation.create",
        "reservation.start",
        "reservation.extend",
        "reservation.release",
    ]


def test_the_warning_arrives_before_the_end_and_a_kill_between_neither_repeats_nor_skips(
    manager: Manager, switch: Snmpsim, smtp: tuple[int, list[Message]]
) -> None:
    _, mails = smtp
    tokens = accounts(manager)
    made = piman(manager, tokens["ann"], "reserve", "pi1", "pi3", "--for", "20s", "-o", "json")
    assert made.returncode == 0, made.stderr
    reservation = json.loads(made.stdout)
    end = datetime.fromisoformat(reservation["end_at"])

    mail = until(lambda: mails[:1], 30, "no warning mail")[0]
    # It came before the end: the reservation still runs and its nodes are still on.
    r = get(manager, tokens["ann"], f"/reservations/{reservation['id']}")
    assert r["state"] == "active"
    assert (port_state(switch, 1), port_state(switch, 3)) == ("1", "1")
    assert mail["X-Test-Rcpt"] == "ann@lab.org"
    assert mail["Subject"].startswith(f"piman: reservation {reservation['id']} ends in ")
    text = next(p for p in mail.walk() if p.get_content_type() == "text/plain")
    body = text.get_payload(decode=True).decode()
    assert "of pi1, pi3 ends at" in body
    assert f"piman extend {reservation['id']} --by 1h" in body

    # The outbox says delivered; then the manager dies hard, and stays down past the end.
    until(
        lambda: manager.rows(
            "SELECT delivered_at FROM alert_outbox WHERE delivered_at IS NOT NULL"
        ),
        15,
        "the warning was never marked delivered",
    )
    manager.kill()
    assert datetime.now(UTC) < end, "the test machine was too slow to kill before the end"
    time.sleep(max(0.0, (end - datetime.now(UTC)).total_seconds()) + 0.5)
    assert (port_state(switch, 1), port_state(switch, 3)) == ("1", "1")  # nobody released yet

    manager.start()
    until(
        lambda: (
            get(manager, tokens["ann"], f"/reservations/{reservation['id']}")["state"] == "released"
        ),
        30,
        "the restarted manager never released it",
    )
    assert (port_state(switch, 1), port_state(switch, 2), port_state(switch, 3)) == ("2", "1", "2")
    r = get(manager, tokens["admin"], f"/reservations/{reservation['id']}")
    assert [(t["kind"], t["outcome"].split(" ")[0]) for t in r["timers"]] == [
        ("start", "started:"),
        ("warn", "warned"),
        ("end", "released:"),
    ]
    assert manager.rows("SELECT count(*) FROM alert_outbox") == [(1,)]
    assert len(mails) == 1
    ends = manager.rows("SELECT count(*) FROM audit_log WHERE action = 'reservation.end'")
    assert ends == [(1,)]
