"""Inventory hosts from the config and the store: owner, environment and SSH user of each node."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from piman.config.models import Config
from piman.fleet.records import EnvironmentRecord
from piman.fleet.reservations import ReservationDraft, ReservationState
from piman.inventory.groups import InventoryHost
from piman.inventory.hosts import collect, fleet_key
from piman.store import Store, reconcile

NOW = datetime(2026, 12, 5, 3, 0, tzinfo=UTC)


def config(tmp_path: Path, **extra: Any) -> Config:
    data: dict[str, Any] = {
        "manager": {"address": "198.18.0.1", "data_dir": str(tmp_path)},
        "switches": [{"name": "rack1", "driver": "manual"}],
        "nodes": [
            {"name": "pi1", "switch": "rack1", "port": 1, "ip": "198.18.0.11",
             "mac": "dc:a6:32:00:00:01", "model": "pi4", "tags": ["camera"]},
            {"name": "pi2", "switch": "rack1", "port": 2, "environment": "trixie",
             "monitor": "ssh"},
            {"name": "pi3", "switch": "rack1", "port": 3, "ssh_user": "ops",
             "environment": "trixie"},
        ],
        "ssh": {"user": "admin"},
        **extra,
    }  # fmt: skip
    return Config.model_validate(data)


async def add_environment(store: Store, name: str) -> None:
    await store.environments.add(
        EnvironmentRecord(
            name=name, source=f"{name}.img", source_sha256="0" * 64, kind="img", image_size=1,
            image_sha256="0" * 64, mapped_bytes=1, table="mbr", os_family="debian",
            customisation="cloudinit", boot_files=(), cmdline=None, description="",
            created_at=NOW, created_by="test",
        )
    )  # fmt: skip


async def deployed(store: Store, node: str, env: str, user: str, result: str) -> None:
    made = await store.deployments.create(
        node=node, environment=env, state="done", options={"user": user}, created_by="test",
        bytes_total=0, deadline_at=None, token_digest=None, token_expires_at=None,
    )  # fmt: skip
    await store.deployments.update(made.id, result=result, finished_at=NOW)


async def reserve(store: Store, owner: str, nodes: tuple[str, ...], state: str) -> None:
    draft = ReservationDraft(
        owner=owner, nodes=nodes, start_at=NOW, end_at=NOW + timedelta(hours=1),
        environment=None, ssh_keys=(), created_by=owner, timers=(),
    )  # fmt: skip
    made = await store.reservations.create(list(nodes), lambda _live: draft, now=NOW)
    if state != ReservationState.SCHEDULED:
        await store.reservations.transition(made.id, "scheduled", state, at=NOW)


def by_name(hosts: list[InventoryHost]) -> dict[str, InventoryHost]:
    return {h.name: h for h in hosts}


async def test_config_only_hosts_take_the_fleet_ssh_user_and_the_config_fields(
    tmp_path: Path, store: Store
) -> None:
    cfg = config(tmp_path)
    await reconcile(store, cfg)
    hosts = by_name(await collect(cfg, store))
    assert list(hosts) == ["pi1", "pi2", "pi3"]
    pi1 = hosts["pi1"]
    assert (pi1.ip, pi1.mac, pi1.model, pi1.switch_port, pi1.state) == (
        "198.18.0.11", "dc:a6:32:00:00:01", "pi4", "rack1:1", "ready",
    )  # fmt: skip
    assert (pi1.tags, pi1.owner, pi1.environment, pi1.ssh_user, pi1.monitor) == (
        ("camera",), None, None, "admin", "agent",
    )  # fmt: skip
    # An environment of the config without a deploy section: nobody created a user there.
    assert (hosts["pi2"].environment, hosts["pi2"].ssh_user, hosts["pi2"].monitor) == (
        "trixie",
        "admin",
        "ssh",
    )
    assert hosts["pi3"].ssh_user == "ops"


async def test_owner_environment_and_user_come_from_reservations_and_deployments(
    tmp_path: Path, store: Store
) -> None:
    cfg = config(tmp_path, deploy={"customise": {"user": "builder"}})
    await reconcile(store, cfg)
    for env in ("bookworm", "trixie"):
        await add_environment(store, env)
    await deployed(store, "pi1", "bookworm", "alice", "ok")
    await deployed(store, "pi1", "trixie", "mallory", "failed")  # the newer one failed
    await deployed(store, "pi3", "bookworm", "carol", "ok")
    await reserve(store, "alice", ("pi1",), ReservationState.ACTIVE)
    await reserve(store, "bob", ("pi2",), ReservationState.SCHEDULED)
    hosts = by_name(await collect(cfg, store))
    assert (hosts["pi1"].owner, hosts["pi1"].environment, hosts["pi1"].ssh_user) == (
        "alice",
        "bookworm",
        "alice",
    )
    # Only an active reservation makes an owner; the deploy section's user for the config's env.
    assert (hosts["pi2"].owner, hosts["pi2"].environment, hosts["pi2"].ssh_user) == (
        None,
        "trixie",
        "builder",
    )
    # The node's own ssh_user wins over the deployment's.
    assert (hosts["pi3"].environment, hosts["pi3"].ssh_user) == ("bookworm", "ops")


async def test_a_declared_node_the_store_lacks_is_listed_ready_and_a_discovered_one_new(
    tmp_path: Path, store: Store
) -> None:
    cfg = config(tmp_path)
    await store.nodes.record_sighting("dc:a6:32:00:00:99", ip="198.18.0.99", now=NOW)
    # pi1 seen on the wire before the config declared it: one host, with the config's address.
    await store.nodes.record_sighting("dc:a6:32:00:00:01", ip="198.18.0.150", now=NOW)
    hosts = await collect(cfg, store)
    assert [(h.name, h.state, h.tags, h.monitor) for h in hosts] == [
        ("pi-dca632000099", "new", (), "agent"),
        ("pi1", "ready", ("camera",), "agent"),
        ("pi2", "ready", (), "ssh"),
        ("pi3", "ready", (), "agent"),
    ]
    assert hosts[0].ip == "198.18.0.99"
    assert hosts[1].ip == "198.18.0.11"


def test_fleet_key_is_the_configured_file_else_the_data_dir_key_when_it_exists(
    tmp_path: Path,
) -> None:
    cfg = config(tmp_path)
    assert fleet_key(cfg) is None
    key = tmp_path / "ssh" / "id_ed25519"
    key.parent.mkdir()
    key.write_text("key")
    assert fleet_key(cfg) == key
    named = config(tmp_path, ssh={"key_file": str(tmp_path / "elsewhere")})
    assert fleet_key(named) == tmp_path / "elsewhere"
