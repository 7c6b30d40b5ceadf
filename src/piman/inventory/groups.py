"""Inventory hosts and their groups: what Ansible, ``piman ssh`` and self-healing act on (pure).

An :class:`InventoryHost` is one node as the fleet operations see it: where it is (IP, switch
port), what it is (MAC, serial, model), where it stands (lifecycle state, the owner of its active
reservation, the environment it runs), the config tags and who logs in over SSH.
:mod:`piman.inventory.hosts` builds them from the config and the store.

Groups (:func:`groups`) are derived from those fields, named so that Ansible takes them as they
are (``[a-z_][a-z0-9_]*``, no warning about invalid characters):

==============  ======================  =====================================
field           group                   example
==============  ======================  =====================================
switch          ``switch_<switch>``     ``switch_rack1``
model           ``model_<model>``       ``model_pi4``, ``model_pi3bplus``
state           ``state_<state>``       ``state_deployed``
owner           ``owner_<user>``        ``owner_alice``
environment     ``env_<environment>``   ``env_bookworm_lite``
each tag        ``<tag>``               ``camera``; ``tag_5g`` (leading digit)
==============  ======================  =====================================

Values are lower-cased, ``+`` becomes ``plus`` and every other run of characters outside
``[a-z0-9_]`` one ``_``; two values that sanitise alike share a group. A tag that would start
with a digit, or take a reserved name (``all``, ``ungrouped``, ``no_ip`` or a parent in
:data:`PARENTS`) or a generated group's prefix, is prefixed ``tag_``. :func:`parents` gives
the parent groups (``switches`` → every ``switch_*``…) that make ``ansible-inventory --graph``
a tree.

:func:`select` turns what users type (node names, ``switch:port``, ``all``, group names) into
hosts, as ``piman ssh run`` and the other fleet commands take targets.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from piman.errors import NotFoundError

__all__ = [
    "PARENTS",
    "RESERVED",
    "InventoryHost",
    "group_name",
    "groups",
    "parents",
    "select",
    "tag_group",
]


@dataclass(frozen=True, slots=True)
class InventoryHost:
    """One node for the fleet operations. ``None``: not known (a node without an IP is still a
    host, one that cannot be reached)."""

    name: str
    ip: str | None
    mac: str | None
    serial: str | None
    model: str | None
    switch: str | None
    port: int | None
    state: str
    owner: str | None  # the owner of its active reservation
    environment: str | None  # what it runs (its last successful deployment, else its config)
    tags: tuple[str, ...]
    ssh_user: str
    monitor: str  # agent | ssh | none

    @property
    def switch_port(self) -> str | None:
        """``rack1:2``; the switch alone when the port is not known; None off any switch."""
        if self.switch is None:
            return None
        return f"{self.switch}:{self.port}" if self.port is not None else self.switch


# Parent group → the prefix of its children (tags have none: their parent is ``tags``).
PARENTS: dict[str, str] = {
    "switches": "switch_",
    "models": "model_",
    "states": "state_",
    "owners": "owner_",
    "environments": "env_",
}
# ``no_ip``: the Ansible inventory's group of the hosts it has no address for.
RESERVED = frozenset({"all", "ungrouped", "no_ip", "tags", *PARENTS})

_OUTSIDE = re.compile(r"[^a-z0-9_]+")


def _clean(value: str) -> str:
    return _OUTSIDE.sub("_", value.strip().lower().replace("+", "plus")).strip("_")


def group_name(prefix: str, value: str) -> str | None:
    """``prefix`` + the sanitised value (``model_``, ``pi3b+`` → ``model_pi3bplus``); None when
    nothing of the value is left."""
    clean = _clean(value)
    return prefix + clean if clean else None


def tag_group(tag: str) -> str | None:
    """The group of a config tag: the tag sanitised, ``tag_`` before a leading digit or a
    reserved name or a generated group's prefix; None for a tag with nothing usable."""
    clean = _clean(tag)
    if not clean:
        return None
    if clean[0].isdigit() or clean in RESERVED or clean.startswith(tuple(PARENTS.values())):
        return "tag_" + clean
    return clean


def _groups_of(host: InventoryHost) -> list[str]:
    named = [
        ("switch_", host.switch),
        ("model_", host.model),
        ("state_", host.state),
        ("owner_", host.owner),
        ("env_", host.environment),
    ]
    out = [group_name(prefix, value) for prefix, value in named if value]
    out += [tag_group(tag) for tag in host.tags]
    return [g for g in out if g is not None]


def groups(hosts: Iterable[InventoryHost]) -> dict[str, list[str]]:
    """Group name → host names (in the order of ``hosts``), groups sorted by name; only groups
    with at least one host."""
    found: dict[str, list[str]] = {}
    for host in hosts:
        for name in _groups_of(host):
            members = found.setdefault(name, [])
            if host.name not in members:
                members.append(host.name)
    return {name: found[name] for name in sorted(found)}


def parents(
    group_names: Iterable[str], hosts: Iterable[InventoryHost] = ()
) -> dict[str, list[str]]:
    """Parent group → its child groups, for the groups in ``group_names``: ``switches``,
    ``models``, ``states``, ``owners``, ``environments`` by prefix, ``tags`` for the groups
    that the tags of ``hosts`` made. Parents without children are left out."""
    names = sorted(set(group_names))
    tag_groups = {g for h in hosts for t in h.tags if (g := tag_group(t)) is not None}
    out: dict[str, list[str]] = {}
    for parent, prefix in PARENTS.items():
        children = [n for n in names if n.startswith(prefix) and n not in tag_groups]
        if children:
            out[parent] = children
    tagged = [n for n in names if n in tag_groups]
    if tagged:
        out["tags"] = tagged
    return out


def select(hosts: Sequence[InventoryHost], specs: Iterable[str]) -> list[InventoryHost]:
    """The hosts that ``specs`` name, in the order named, each once.

    A spec is a node name, ``all``, a group name (see :func:`groups`) or ``switch:port`` (the
    switch by name); a node name wins over a group of the same name. Raises
    :class:`~piman.errors.NotFoundError` naming the first spec that names nothing.
    """
    by_name = {h.name: h for h in hosts}
    by_group: dict[str, list[str]] | None = None
    chosen: dict[str, InventoryHost] = {}
    for spec in specs:
        if spec in by_name:
            found = [by_name[spec]]
        elif spec == "all":
            found = list(hosts)
        else:
            if by_group is None:
                by_group = groups(hosts)
            if spec in by_group:
                found = [by_name[n] for n in by_group[spec]]
            else:
                found = _on_port(hosts, spec)
        for host in found:
            chosen.setdefault(host.name, host)
    return list(chosen.values())


def _on_port(hosts: Sequence[InventoryHost], spec: str) -> list[InventoryHost]:
    switch, sep, port = spec.rpartition(":")
    if not sep or not switch or not port.isdigit():
        raise NotFoundError(f"{spec!r} is not a node, a group, `switch:port` or `all`")
    if not any(h.switch == switch for h in hosts):
        raise NotFoundError(f"{spec!r}: no node is on a switch named {switch!r}")
    found = [h for h in hosts if h.switch == switch and h.port == int(port)]
    if not found:
        raise NotFoundError(f"{spec!r}: no node on port {port} of switch {switch!r}")
    return found
