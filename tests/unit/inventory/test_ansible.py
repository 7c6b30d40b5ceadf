"""Ansible inventory renderers: the --list protocol, --host, and static INI/YAML that say the same.

Ansible itself reads these in tests/integration/inventory/test_ansible_inventory.py; here the
shapes and the value encodings are pinned without starting it.
"""

from __future__ import annotations

import ast
import shlex
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from piman.errors import NotFoundError
from piman.inventory.ansible import (
    common_vars,
    host_vars,
    hostvars,
    listing,
    to_ini,
    to_yaml,
    without_address,
)
from piman.inventory.groups import InventoryHost

PI1 = InventoryHost(
    name="pi1",
    ip="198.18.0.11",
    mac="dc:a6:32:00:00:01",
    serial="12345678",
    model="pi4",
    switch="rack1",
    port=1,
    state="deployed",
    owner="alice",
    environment="bookworm",
    tags=("camera", "2nd floor"),
    ssh_user="pi",
    monitor="agent",
)
PI2 = replace(PI1, name="pi2", ip=None, port=2, owner=None, environment=None, tags=(),
              model="pi3b+", state="ready", serial=None, ssh_user="ops")  # fmt: skip
FLEET = [PI1, PI2]


def test_hostvars_say_how_to_reach_the_host_and_what_piman_knows() -> None:
    assert hostvars(PI1) == {
        "ansible_host": "198.18.0.11",
        "ansible_user": "pi",
        "piman_mac": "dc:a6:32:00:00:01",
        "piman_serial": "12345678",
        "piman_model": "pi4",
        "piman_switch": "rack1",
        "piman_port": 1,
        "piman_state": "deployed",
        "piman_owner": "alice",
        "piman_environment": "bookworm",
        "piman_tags": ["camera", "2nd floor"],
        "piman_monitor": "agent",
    }
    assert "ansible_host" not in hostvars(PI2)
    assert hostvars(PI2)["piman_owner"] is None


def test_list_has_meta_all_parents_and_leaf_groups() -> None:
    out = listing(FLEET, variables=common_vars(key_file=Path("/k/id"), port=2222))
    assert set(out["_meta"]["hostvars"]) == {"pi1", "pi2"}
    assert out["all"] == {
        "hosts": ["pi1", "pi2"],
        "children": ["switches", "models", "states", "owners", "environments", "tags", "no_ip"],
        "vars": {"ansible_ssh_private_key_file": "/k/id", "ansible_port": 2222},
    }
    assert out["switches"] == {"children": ["switch_rack1"]}
    assert out["tags"] == {"children": ["camera", "tag_2nd_floor"]}
    assert out["switch_rack1"] == {"hosts": ["pi1", "pi2"]}
    assert out["owner_alice"] == {"hosts": ["pi1"]}
    assert out["no_ip"] == {"hosts": ["pi2"]}
    # Every group a parent names exists; every group is reachable from all.
    named = {c for g in out.values() if isinstance(g, dict) for c in g.get("children", [])}
    assert named <= set(out)
    assert without_address(out) == ["pi2"]


def test_an_empty_fleet_is_a_valid_inventory_with_no_vars() -> None:
    assert listing([]) == {"_meta": {"hostvars": {}}, "all": {"hosts": [], "children": []}}
    assert common_vars() == {}


def test_host_answers_one_host_and_names_an_unknown_one() -> None:
    out = listing(FLEET)
    assert host_vars(out, "pi2") == hostvars(PI2)
    with pytest.raises(NotFoundError, match="no host named 'pi9'"):
        host_vars(out, "pi9")


def _ini_sections(text: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            sections[current] = []
        else:
            sections[current].append(line)
    return sections


def test_ini_values_read_back_as_ansible_parses_them() -> None:
    """Ansible splits a host line as a shell does and literal_evals each value (a string of
    digits would become a number, "None" None): piman quotes those so they stay strings."""
    odd = replace(PI1, name="odd", serial="00001234", owner="None", environment="a b")
    out = listing([*FLEET, odd], variables={"ansible_port": 2222})
    sections = _ini_sections(to_ini(out))
    hosts = {}
    for line in sections["all"]:
        name, *pairs = shlex.split(line)
        values = {}
        for pair in pairs:
            key, _, raw = pair.partition("=")
            try:
                values[key] = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                values[key] = raw
        hosts[name] = values
    assert hosts == out["_meta"]["hostvars"]
    assert hosts["pi1"]["piman_serial"] == "12345678"
    assert hosts["odd"]["piman_owner"] == "None"
    assert sections["all:vars"] == ["ansible_port=2222"]
    assert sections["switches:children"] == ["switch_rack1"]
    assert sections["switch_rack1"] == ["pi1", "pi2", "odd"]
    assert sections["no_ip"] == ["pi2"]


def test_yaml_nests_groups_under_their_parents_with_the_hosts_vars_once() -> None:
    out = listing(FLEET, variables={"ansible_port": 2222})
    tree = yaml.safe_load(to_yaml(out))
    assert tree["all"]["hosts"] == out["_meta"]["hostvars"]
    assert tree["all"]["vars"] == {"ansible_port": 2222}
    children = tree["all"]["children"]
    assert children["switches"]["children"]["switch_rack1"] == {"hosts": {"pi1": None, "pi2": None}}
    assert children["owners"]["children"]["owner_alice"] == {"hosts": {"pi1": None}}
    assert children["no_ip"] == {"hosts": {"pi2": None}}


def test_renderers_take_a_listing_from_elsewhere() -> None:
    """A manager's answer (GET /api/v1/inventory) renders alike, even one with a group no
    parent names."""
    out = {"_meta": {"hostvars": {"a": {"ansible_host": "10.0.0.1"}}},
           "all": {"hosts": ["a"]}, "extra": {"hosts": ["a"], "vars": {"x": "1"}}}  # fmt: skip
    tree = yaml.safe_load(to_yaml(out))
    assert tree["all"]["children"]["extra"] == {"hosts": {"a": None}, "vars": {"x": "1"}}
    sections = _ini_sections(to_ini(out))
    assert sections["all"] == ["a ansible_host=10.0.0.1"]
    assert sections["extra:vars"] == ['x="1"']
