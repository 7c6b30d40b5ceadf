"""FleetSsh against an asyncssh server on 127.0.0.1 (no root, no namespaces): the concurrency
bound, results in the targets' order, exit statuses and the fleet key as the only way in."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
import pytest

from piman.config.models import Config
from piman.fleet.ssh import SshTarget
from piman.inventory.ssh import FleetSsh, SshFailure, key_text

HOLD = 0.5


@dataclass
class Sessions:
    """What the server saw: sessions open at once, at most. A ``hold`` session stays open until
    ``expected`` sessions are open together or :data:`HOLD` seconds pass: a limit that lets more
    in than it should shows as a higher ``most``; a correct one only costs the wait."""

    expected: int = 6
    total: int = 0
    active: int = 0
    most: int = 0
    crowd: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handle(self, process: asyncssh.SSHServerProcess[str]) -> None:
        command = process.command or ""
        async with self.crowd:
            self.total += 1
            self.active += 1
            self.most = max(self.most, self.active)
            self.crowd.notify_all()
        try:
            if command == "hold":
                async with self.crowd:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(HOLD):
                            await self.crowd.wait_for(lambda: self.active >= self.expected)
            process.stdout.write(f"ran {command}\n")
            process.exit(int(command.rsplit(" ", 1)[-1]) if command.startswith("exit") else 0)
        finally:
            self.active -= 1


@dataclass
class Rig:
    fleet: FleetSsh
    port: int
    sessions: Sessions
    host_key: str  # the server's, as known_hosts writes it

    def target(self, name: str, user: str = "pi") -> SshTarget:
        return SshTarget(name, "127.0.0.1", self.port, user)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    (tmp_path / "id_ed25519").write_bytes(client_key.export_private_key())
    allowed = client_key.export_public_key()
    sessions = Sessions()

    class Server(asyncssh.SSHServer):
        def begin_auth(self, username: str) -> bool:
            return True

        def public_key_auth_supported(self) -> bool:
            return True

        def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
            return username == "pi" and key.export_public_key() == allowed

    host_key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.create_server(
        Server,
        "127.0.0.1",
        0,
        server_host_keys=[host_key],
        process_factory=sessions.handle,
    )
    port = server.sockets[0].getsockname()[1]
    config = Config.model_validate(
        {
            "manager": {"address": "198.18.0.1", "data_dir": str(tmp_path / "data")},
            "ssh": {"key_file": str(tmp_path / "id_ed25519"), "concurrency": 4},
        }
    )
    try:
        yield Rig(FleetSsh(config), port, sessions, key_text(host_key))
    finally:
        server.close()
        await server.wait_closed()


async def test_run_keeps_to_the_concurrency_asked_and_answers_in_target_order(rig: Rig) -> None:
    targets = [rig.target(f"n{i}") for i in range(6)]
    results = await rig.fleet.run(targets, "hold", concurrency=2)
    assert [r.name for r in results] == [f"n{i}" for i in range(6)]
    assert all(r.ok and r.stdout == "ran hold\n" for r in results)
    assert rig.sessions.most <= 2


async def test_the_ceiling_of_the_settings_bounds_a_caller_asking_more(rig: Rig) -> None:
    targets = [rig.target(f"n{i}") for i in range(6)]
    results = await rig.fleet.run(targets, "hold", concurrency=100)
    assert all(r.ok for r in results)
    assert rig.sessions.most <= 4  # ssh.concurrency is 4


async def test_exit_statuses_and_refused_logins_are_per_host(rig: Rig) -> None:
    got = {
        r.name: (r.exit_status, r.error)
        async for r in rig.fleet.stream(
            [rig.target("ok"), rig.target("three"), rig.target("stranger", user="eve")],
            "exit 3",
        )
    }
    assert got == {
        "ok": (3, None),
        "three": (3, None),
        "stranger": (None, "login refused (publickey)"),
    }


async def test_a_node_known_by_name_at_a_new_address_gets_that_address_written(rig: Rig) -> None:
    known = rig.fleet.known
    known.learn(("198.18.0.99", "n0"), rig.host_key)  # where n0 was before
    other = key_text(asyncssh.generate_private_key("ssh-ed25519"))
    [moved] = await rig.fleet.run([rig.target("n0")], "exit 0")
    assert moved.ok, moved.error
    here = f"[127.0.0.1]:{rig.port}"
    assert known.lookup(here) == [rig.host_key]

    known.forget(here)
    known.learn((here, "n1"), other)  # the address answers with another key now
    [changed] = await rig.fleet.run([rig.target("n1")], "exit 0")
    assert changed.exit_status is None
    assert changed.error is not None
    assert changed.error.startswith("host key changed for n1 (127.0.0.1): known SHA256:")
    assert rig.sessions.total == 1  # the first run's: nothing ran on the impostor


async def test_learn_host_key_replaces_a_known_key_even_in_strict_mode(rig: Rig) -> None:
    """After a reinstall the deploy engine learns the node's new key: later runs find it known,
    with ``host_keys: strict`` too, where a changed key would be refused."""
    here = f"[127.0.0.1]:{rig.port}"
    old = key_text(asyncssh.generate_private_key("ssh-ed25519"))
    rig.fleet.known.learn((here, "n0"), old)  # the key of the system before the reinstall
    strict = FleetSsh(
        rig.fleet.config.model_copy(
            update={"ssh": rig.fleet.settings.model_copy(update={"host_keys": "strict"})}
        )
    )
    [before] = await strict.run([rig.target("n0")], "exit 0")
    assert before.error is not None
    assert before.error.startswith("host key changed for n0")

    fingerprint = await strict.learn_host_key(rig.target("n0"))
    assert fingerprint == asyncssh.import_public_key(rig.host_key).get_fingerprint("sha256")
    assert rig.fleet.known.lookup(here) == [rig.host_key]
    assert rig.fleet.known.lookup("n0") == [rig.host_key]  # the old key is gone
    [after] = await strict.run([rig.target("n0")], "exit 0")
    assert after.ok, after.error
    assert rig.sessions.total == 1  # learning ran nothing on the node


async def test_learn_host_key_of_a_node_that_does_not_answer_says_why(rig: Rig) -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(SshFailure, match="refused"):
        await rig.fleet.learn_host_key(SshTarget("gone", "127.0.0.1", port))
    assert rig.fleet.known.lookup("gone") == []
