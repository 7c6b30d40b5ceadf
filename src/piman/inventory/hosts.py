"""The inventory hosts of a fleet: the store's nodes merged with the config (what the fleet
operations act on: Ansible, ``piman ssh``, self-healing).

For each node, :func:`collect` takes what the store knows, with the config's word on what it
declares (MAC, IP, switch port, serial, model) as :func:`piman.store.reconcile` would write it,
so the answer is right without writing to the store: a declared node the store lacks is listed
(``ready``), a discovered row whose MAC a declared node claims is that node. Then it adds:

- ``owner``: the owner of the node's *active* reservation (scheduled or ending ones do not count);
- ``environment``: the environment of the node's latest successful deployment among the recent
  ones (:data:`DEPLOYMENTS_PER_NODE` per node are read), else the config's ``environment:``;
- ``ssh_user``: the node's ``ssh_user:``, else the user its latest successful deployment created,
  else, for a node with an environment on a manager that deploys, ``deploy.customise.user``,
  else ``ssh.user``;
- ``tags`` and ``monitor`` from the config (none and ``agent`` for undeclared nodes).

:func:`merge` is the pure half (records in, hosts out); :func:`collect` reads the store.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from piman.config.models import Config, NodeSettings
from piman.fleet.lifecycle import NodeState
from piman.fleet.ports import Repositories
from piman.fleet.records import DeploymentRecord, NodeRecord
from piman.fleet.reservations import ReservationRecord, ReservationState
from piman.fleet.ssh import SshTarget
from piman.inventory.groups import InventoryHost

__all__ = ["DEPLOYMENTS_PER_NODE", "collect", "fleet_key", "merge"]

# How many recent finished deployments per node collect() reads, to find each node's last good one.
DEPLOYMENTS_PER_NODE = 10


def fleet_key(config: Config) -> Path | None:
    """The private key Ansible should log in with: ``ssh.key_file`` when set, else the fleet key
    in ``data_dir`` (``piman ssh keygen``) when it exists; None otherwise."""
    if config.ssh.key_file is not None:
        return config.ssh.key_file
    default = config.ssh.key_path(config.manager.data_dir)
    return default if default.is_file() else None


async def collect(config: Config, store: Repositories) -> list[InventoryHost]:
    """Every node as an :class:`InventoryHost`, in the store's order (switch, port, name), the
    declared nodes the store lacks after them."""
    nodes = await store.nodes.list()
    live = await store.reservations.live()
    limit = max(100, DEPLOYMENTS_PER_NODE * (len(nodes) + len(config.nodes)))
    deployments = await store.deployments.list(active=False, limit=limit)
    return merge(config, nodes, live, deployments)


def merge(
    config: Config,
    nodes: Iterable[NodeRecord],
    reservations: Iterable[ReservationRecord],
    deployments: Iterable[DeploymentRecord],
) -> list[InventoryHost]:
    """The pure half of :func:`collect`: ``deployments`` newest first, as the store lists them."""
    owners: dict[str, str] = {}
    for r in reservations:
        if r.state == ReservationState.ACTIVE:
            for name in r.nodes:
                owners.setdefault(name, r.owner)
    good: dict[str, DeploymentRecord] = {}
    for d in deployments:
        if d.result == "ok":
            good.setdefault(d.node, d)
    declared = {n.name: n for n in config.nodes}
    claimed = {n.mac for n in config.nodes if n.mac}
    hosts = [
        _host(config, n, declared.get(n.name), owners, good)
        for n in nodes
        if n.name in declared or n.mac not in claimed
    ]
    seen = {h.name for h in hosts}
    hosts += [
        _host(config, _record(n), n, owners, good) for n in config.nodes if n.name not in seen
    ]
    return hosts


def _record(n: NodeSettings) -> NodeRecord:
    """A declared node the store does not have yet (never reconciled): ``ready``, as
    :func:`piman.store.reconcile` would make it."""
    return NodeRecord(
        name=n.name,
        mac=n.mac,
        ip=str(n.ip) if n.ip is not None else None,
        serial=n.serial,
        model=n.model,
        hostname=n.hostname,
        agent_url=n.agent_url,
        switch=n.switch,
        port=n.port,
        state=NodeState.READY,
        power_state="unknown",
        vendor_class=None,
        first_seen=None,
        last_seen=None,
        declared=True,
    )


def _host(
    config: Config,
    node: NodeRecord,
    declared: NodeSettings | None,
    owners: Mapping[str, str],
    good: Mapping[str, DeploymentRecord],
) -> InventoryHost:
    deployment = good.get(node.name)
    environment = deployment.environment if deployment is not None else None
    if environment is None and declared is not None:
        environment = declared.environment
    user = declared.ssh_user if declared is not None else None
    if user is None and deployment is not None:
        created = deployment.options.get("user")
        user = created if isinstance(created, str) and created else None
    if user is None and environment is not None and config.deploy is not None:
        user = config.deploy.customise.user
    if declared is not None:  # the config wins for what it says, as reconcile writes it
        node = replace(
            node,
            mac=declared.mac or node.mac,
            ip=str(declared.ip) if declared.ip is not None else node.ip,
            switch=declared.switch,
            port=declared.port,
            serial=declared.serial or node.serial,
            model=declared.model or node.model,
        )
    return InventoryHost(
        name=node.name,
        ip=node.ip,
        mac=node.mac,
        serial=node.serial,
        model=node.model,
        switch=node.switch,
        port=node.port,
        state=str(node.state),
        owner=owners.get(node.name),
        environment=environment,
        tags=tuple(declared.tags) if declared is not None else (),
        ssh_user=user or config.ssh.user,
        monitor=declared.monitor if declared is not None else "agent",
    )


def ssh_targets(chosen: Sequence[InventoryHost], port: int) -> list[SshTarget]:
    """Where to log in to each of ``chosen``; ValueError names the hosts with no address."""
    missing = [h.name for h in chosen if not h.ip]
    if missing:
        raise ValueError(f"no known address for {', '.join(missing)} (give it an `ip:`)")
    return [SshTarget(h.name, str(h.ip), port, h.ssh_user) for h in chosen]
