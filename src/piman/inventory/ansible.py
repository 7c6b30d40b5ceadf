"""Ansible inventories of the fleet: the dynamic-inventory script protocol, INI and YAML (pure).

Theory of operation
-------------------
:func:`listing` builds what ``piman inventory --list`` prints (PROTOCOLS.md §7)::

    {"_meta": {"hostvars": {"pi1": {"ansible_host": "198.18.0.11", "ansible_user": "pi", …}}},
     "all": {"hosts": ["pi1", …], "children": ["switches", …], "vars": {…}},
     "switches": {"children": ["switch_rack1"]},
     "switch_rack1": {"hosts": ["pi1"]}, …}

Every host is in ``all``; the groups of :func:`piman.inventory.groups.groups` are the leaves,
gathered under their parents (``switches``, ``models``, ``states``, ``owners``,
``environments``, ``tags``) so that ``ansible-inventory --graph`` draws a tree. ``_meta`` is
always there, so Ansible never runs the script once per host with ``--host``. A host without an
IP is listed with no ``ansible_host`` and put in the group ``no_ip`` (``--limit '!no_ip'`` leaves
them out); :func:`without_address` names them, for a note on stderr.

Host variables (:func:`hostvars`): ``ansible_host``, ``ansible_user`` and every ``piman_*``
field (``null`` when not known, so a playbook can test them). Fleet-wide variables
(:func:`common_vars`: the fleet key, a port other than 22) go in ``all``'s ``vars``.

Everything else works on a listing (a dict as above, from this module or a manager's
``GET /api/v1/inventory``): :func:`host_vars` answers ``--host NAME``, :func:`to_ini` and
:func:`to_yaml` write static inventories that Ansible reads back to the same hosts, groups and
values (INI values are written as Python literals where Ansible would otherwise change their
type: a serial of digits stays a string).
"""

from __future__ import annotations

import ast
import json
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from piman.errors import NotFoundError
from piman.inventory.groups import InventoryHost, groups, parents

__all__ = [
    "NO_IP",
    "common_vars",
    "host_vars",
    "hostvars",
    "listing",
    "to_ini",
    "to_yaml",
    "without_address",
]

NO_IP = "no_ip"


def hostvars(host: InventoryHost) -> dict[str, Any]:
    """The variables of one host: how Ansible reaches it and what piman knows of it."""
    out: dict[str, Any] = {}
    if host.ip is not None:
        out["ansible_host"] = host.ip
    out["ansible_user"] = host.ssh_user
    out.update(
        piman_mac=host.mac,
        piman_serial=host.serial,
        piman_model=host.model,
        piman_switch=host.switch,
        piman_port=host.port,
        piman_state=host.state,
        piman_owner=host.owner,
        piman_environment=host.environment,
        piman_tags=list(host.tags),
        piman_monitor=host.monitor,
    )
    return out


def common_vars(*, key_file: Path | None = None, port: int = 22) -> dict[str, Any]:
    """``all``'s variables: the private key to log in with and the SSH port when not 22."""
    out: dict[str, Any] = {}
    if key_file is not None:
        out["ansible_ssh_private_key_file"] = str(key_file)
    if port != 22:
        out["ansible_port"] = port
    return out


def listing(
    hosts: Sequence[InventoryHost], *, variables: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The ``--list`` answer for ``hosts`` (see the module docstring), ``variables`` as
    ``all``'s ``vars``."""
    leaves = groups(hosts)
    missing = [h.name for h in hosts if h.ip is None]
    if missing:
        leaves[NO_IP] = missing
    tree = parents(leaves, hosts)
    nested = {child for children in tree.values() for child in children}
    top = [*tree, *(name for name in leaves if name not in nested)]
    all_group: dict[str, Any] = {"hosts": [h.name for h in hosts], "children": top}
    if variables:
        all_group["vars"] = dict(variables)
    out: dict[str, Any] = {
        "_meta": {"hostvars": {h.name: hostvars(h) for h in hosts}},
        "all": all_group,
    }
    out.update({name: {"children": children} for name, children in tree.items()})
    out.update({name: {"hosts": members} for name, members in leaves.items()})
    return out


def host_vars(inventory: Mapping[str, Any], name: str) -> dict[str, Any]:
    """``--host NAME``: that host's variables; NotFoundError for a host the inventory lacks."""
    found = _hostvars(inventory).get(name)
    if found is None:
        raise NotFoundError(f"no host named {name!r} in the inventory")
    return dict(found)


def without_address(inventory: Mapping[str, Any]) -> list[str]:
    """The hosts Ansible has no address for (no ``ansible_host``)."""
    return [n for n, v in _hostvars(inventory).items() if "ansible_host" not in v]


def _hostvars(inventory: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    meta = inventory.get("_meta") or {}
    found: dict[str, dict[str, Any]] = meta.get("hostvars") or {}
    return found


def _groups(inventory: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in inventory.items() if k != "_meta" and isinstance(v, dict)}


# INI ---------------------------------------------------------------------------------------------


def _ini_value(value: Any, *, inline: bool) -> str:
    """A value as Ansible's INI parser reads it back unchanged (it ``literal_eval``s each one;
    host lines are also split as a shell would)."""
    if isinstance(value, str):
        try:
            ast.literal_eval(value)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            text = value  # stays a string as it is
        else:
            text = json.dumps(value)  # "12345678", "None": quoted, or they would change type
    else:
        text = repr(value) if isinstance(value, bool) or value is None else json.dumps(value)
    if inline and shlex.quote(text) != text:
        return shlex.quote(text)
    return text


def to_ini(inventory: Mapping[str, Any]) -> str:
    """A static INI inventory: hosts with their variables under ``[all]``, ``[all:vars]``, then
    each group's hosts, children and vars."""
    groups_ = _groups(inventory)
    hostvars_ = _hostvars(inventory)
    all_group = groups_.get("all", {})
    names = list(dict.fromkeys([*all_group.get("hosts", []), *hostvars_]))
    lines = ["# Ansible inventory written by `piman inventory --format ini`", "[all]"]
    for name in names:
        pairs = " ".join(
            f"{k}={_ini_value(v, inline=True)}" for k, v in hostvars_.get(name, {}).items()
        )
        lines.append(f"{name} {pairs}".rstrip())
    for group, body in groups_.items():
        if group != "all" and body.get("hosts"):
            lines += ["", f"[{group}]", *body["hosts"]]
        if body.get("children"):
            lines += ["", f"[{group}:children]", *body["children"]]
        if body.get("vars"):
            lines += ["", f"[{group}:vars]"]
            lines += [f"{k}={_ini_value(v, inline=False)}" for k, v in body["vars"].items()]
    return "\n".join(lines) + "\n"


# YAML --------------------------------------------------------------------------------------------


def to_yaml(inventory: Mapping[str, Any]) -> str:
    """A static YAML inventory: ``all`` with every host and its variables, the groups nested
    under their parents (a group's hosts listed by name only)."""
    groups_ = _groups(inventory)
    hostvars_ = _hostvars(inventory)
    all_group = groups_.get("all", {})
    names = list(dict.fromkeys([*all_group.get("hosts", []), *hostvars_]))

    def node(group: str, trail: tuple[str, ...]) -> dict[str, Any]:
        body = groups_.get(group, {})
        out: dict[str, Any] = {}
        if group == "all":
            out["hosts"] = {n: hostvars_.get(n) or None for n in names}
        elif body.get("hosts"):
            out["hosts"] = dict.fromkeys(body["hosts"])
        if body.get("vars"):
            out["vars"] = dict(body["vars"])
        children = [c for c in body.get("children", []) if c not in trail]
        if children:
            out["children"] = {c: node(c, (*trail, c)) or None for c in children}
        return out

    tree = {"all": node("all", ("all",))}
    # Groups nobody names as a child (a hand-made listing) hang under all too.
    named = {c for body in groups_.values() for c in body.get("children", [])}
    loose = [g for g in groups_ if g != "all" and g not in named]
    if loose:
        tree["all"].setdefault("children", {}).update(
            {g: node(g, ("all", g)) or None for g in loose}
        )
    header = "# Ansible inventory written by `piman inventory --format yaml`\n"
    return header + yaml.safe_dump(tree, sort_keys=False, default_flow_style=False)
