"""Inventory groups and target selection: Ansible-safe names, each host once, clear refusals."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from piman.errors import NotFoundError
from piman.inventory.groups import InventoryHost, group_name, groups, parents, select, tag_group

BASE = InventoryHost(
    name="pi1",
    ip="198.18.0.11",
    mac="dc:a6:32:00:00:01",
    serial="1a2b3c4d",
    model="pi4",
    switch="rack1",
    port=1,
    state="deployed",
    owner=None,
    environment=None,
    tags=(),
    ssh_user="pi",
    monitor="agent",
)


def host(name: str, **kw: object) -> InventoryHost:
    return replace(BASE, name=name, **kw)  # type: ignore[arg-type]


FLEET = [
    host("pi1", owner="alice", environment="bookworm-lite", tags=("camera", "2nd floor")),
    host("pi2", port=2, model="pi3b+", state="ready", tags=("camera",)),
    host("pi3", switch="rack-2", port=1, model=None, state="failed_deployment"),
    host("lab", switch=None, port=None, ip=None, tags=("all", "switch_x")),
]


def test_groups_by_switch_model_state_owner_environment_and_tags() -> None:
    assert groups(FLEET) == {
        "camera": ["pi1", "pi2"],
        "env_bookworm_lite": ["pi1"],
        "model_pi3bplus": ["pi2"],
        "model_pi4": ["pi1", "lab"],
        "owner_alice": ["pi1"],
        "state_deployed": ["pi1", "lab"],
        "state_failed_deployment": ["pi3"],
        "state_ready": ["pi2"],
        "switch_rack1": ["pi1", "pi2"],
        "switch_rack_2": ["pi3"],
        "tag_2nd_floor": ["pi1"],
        "tag_all": ["lab"],
        "tag_switch_x": ["lab"],
    }


def test_every_group_name_is_one_ansible_accepts() -> None:
    odd = host("x", switch="Rack 1/A", model="CM5 Lite", owner="bob.o'neil", environment="ünï+",
               tags=("Camera!", "-", "9"))  # fmt: skip
    for name in groups([odd]):
        assert re.fullmatch(r"[a-z_][a-z0-9_]*", name), name
    assert set(groups([odd])) == {
        "switch_rack_1_a",
        "model_cm5_lite",
        "state_deployed",
        "owner_bob_o_neil",
        "env_n_plus",
        "camera",
        "tag_9",
    }


def test_a_value_with_nothing_usable_makes_no_group() -> None:
    assert group_name("env_", "++") == "env_plusplus"
    assert group_name("env_", "---") is None
    assert tag_group("!!") is None
    assert tag_group("ungrouped") == "tag_ungrouped"


def test_parents_gather_the_groups_of_each_kind() -> None:
    found = parents(groups(FLEET), FLEET)
    assert found["switches"] == ["switch_rack1", "switch_rack_2"]
    assert found["models"] == ["model_pi3bplus", "model_pi4"]
    assert found["owners"] == ["owner_alice"]
    assert found["environments"] == ["env_bookworm_lite"]
    assert found["tags"] == ["camera", "tag_2nd_floor", "tag_all", "tag_switch_x"]
    assert "state_ready" in found["states"]
    assert parents({"state_new": ["a"]}) == {"states": ["state_new"]}


def test_select_keeps_the_order_named_and_each_host_once() -> None:
    chosen = select(FLEET, ["pi3", "camera", "pi1", "rack1:2"])
    assert [h.name for h in chosen] == ["pi3", "pi1", "pi2"]
    assert [h.name for h in select(FLEET, ["all"])] == ["pi1", "pi2", "pi3", "lab"]
    assert [h.name for h in select(FLEET, ["rack-2:1", "owner_alice"])] == ["pi3", "pi1"]
    assert select(FLEET, []) == []


def test_a_node_name_wins_over_a_group_of_that_name() -> None:
    fleet = [*FLEET, host("camera", port=9)]
    assert [h.name for h in select(fleet, ["camera"])] == ["camera"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("pi9", "'pi9' is not a node, a group, `switch:port` or `all`"),
        ("rack9:1", "no node is on a switch named 'rack9'"),
        ("rack1:7", "no node on port 7 of switch 'rack1'"),
        ("rack1:x", "'rack1:x' is not a node"),
    ],
)
def test_select_names_the_spec_that_names_nothing(spec: str, message: str) -> None:
    with pytest.raises(NotFoundError, match=re.escape(message)):
        select(FLEET, ["pi1", spec, "pi2"])


def test_switch_port_reads_as_users_write_it() -> None:
    assert BASE.switch_port == "rack1:1"
    assert replace(BASE, port=None).switch_port == "rack1"
    assert replace(BASE, switch=None, port=None).switch_port is None
