"""Bring the store in line with the configuration, the source of truth for declared inventory.

Declared fields (name, MAC, IP, switch, port, and serial/model when given) come from the config.
Runtime fields (lifecycle state, power state, first/last seen, what was learnt on the wire)
are kept.
A node discovered on the wire (``pi-<mac>``) that the configuration now declares under a name is
merged into the declared node, keeping its history. Nodes no longer in the config stay, undeclared.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select

from piman.config.models import Config
from piman.fleet.lifecycle import NodeState, PowerState
from piman.store.db import Store
from piman.store.repositories import utcnow
from piman.store.tables import NodeRow, SwitchRow

__all__ = ["ReconcileReport", "reconcile"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    switches_added: int
    nodes_added: int
    nodes_updated: int
    nodes_merged: int
    nodes_undeclared: int


async def reconcile(store: Store, config: Config) -> ReconcileReport:
    """Upsert the config's switches and nodes into the store, in one transaction."""
    now = utcnow()
    added_sw = added = updated = merged = undeclared = 0
    async with store.session() as s:
        switches = {r.name: r for r in (await s.scalars(select(SwitchRow))).all()}
        for sw in config.switches:
            sw_row = switches.get(sw.name)
            if sw_row is None:
                sw_row = SwitchRow(name=sw.name, created_at=now)
                s.add(sw_row)
                switches[sw.name] = sw_row
                added_sw += 1
            sw_row.address = str(sw.address) if sw.address is not None else None
            sw_row.driver = sw.driver
            sw_row.profile = sw.profile
            sw_row.declared = True
            sw_row.updated_at = now
        declared_sw = {sw.name for sw in config.switches}
        for name, sw_row in switches.items():
            if name not in declared_sw:
                sw_row.declared = False
        await s.flush()

        rows = {r.name: r for r in (await s.scalars(select(NodeRow))).all()}
        # MACs of discovered (undeclared) rows: a declared node claiming one absorbs that row.
        by_mac = {r.mac: r for r in rows.values() if r.mac and not r.declared}
        declared = {n.name for n in config.nodes}
        old_macs = {id(r): r.mac for r in rows.values()}
        # Free every (switch, port) slot and the MACs of declared nodes first, so that the unique
        # constraints never see two rows claiming one slot while nodes swap ports or MACs. Each
        # declared node gets its own back from the configuration just below.
        for existing in rows.values():
            existing.switch_id = None
            existing.port = None
            if existing.declared:
                existing.mac = None
        await s.flush()
        for node in config.nodes:
            row = rows.get(node.name)
            twin = by_mac.pop(node.mac, None) if node.mac else None
            if twin is not None and twin is not row:
                logger.info("node %s was discovered as %s: merging", node.name, twin.name)
                merged += 1
                if row is None:
                    twin.name = node.name
                    row = twin
                else:  # keep what the wire taught us, drop the discovered row
                    for attr in ("serial", "model", "vendor_class", "first_seen", "last_seen"):
                        if getattr(row, attr) is None:
                            setattr(row, attr, getattr(twin, attr))
                    await s.delete(twin)
                await s.flush()
            if row is None:
                row = NodeRow(
                    name=node.name,
                    state=NodeState.READY.value,
                    power_state=PowerState.UNKNOWN.value,
                    created_at=now,
                )
                s.add(row)
                added += 1
            else:
                updated += 1
            if row.state == NodeState.NEW.value:
                row.state = NodeState.READY.value  # declared: commissioned by the operator
            row.mac = node.mac
            row.ip = str(node.ip) if node.ip is not None else None
            row.switch_id = switches[node.switch].id if node.switch in switches else None
            row.port = node.port
            row.hostname = node.hostname
            row.agent_url = node.agent_url
            if node.serial is not None:
                row.serial = node.serial
            if node.model is not None:
                row.model = node.model
            row.declared = True
            row.updated_at = now
            rows[node.name] = row
            await s.flush()
        claimed = {n.mac for n in config.nodes if n.mac}
        for gone in {id(r): r for r in rows.values()}.values():
            if gone.name not in declared and gone.declared and gone in s:
                gone.declared = False
                undeclared += 1
                if old_macs.get(id(gone)) not in claimed:
                    gone.mac = old_macs.get(id(gone))
    report = ReconcileReport(added_sw, added, updated, merged, undeclared)
    logger.info(
        "inventory reconciled: %d switches added, %d nodes added, %d updated, %d merged, "
        "%d no longer declared",
        *(report.switches_added, report.nodes_added, report.nodes_updated),
        *(report.nodes_merged, report.nodes_undeclared),
    )
    return report
