"""What a power command acts on: a port of a switch, and the node on it when one is declared.

Users name targets as node names, ``switch:port`` (the switch by name or address) or ``all``;
:func:`resolve` turns those into :class:`PowerTarget` values, or raises
:class:`~piman.errors.NotFoundError` with a message that says what was wrong.
"""

from __future__ import annotations

from collections.abc import Sequence

from piman.config.models import Config, NodeSettings
from piman.config.power import SwitchSettings
from piman.errors import NotFoundError
from piman.fleet.power import PowerTarget

__all__ = ["nodes_of", "resolve", "target"]


def nodes_of(config: Config, switch: SwitchSettings) -> dict[int, NodeSettings]:
    """Port → declared node on a switch."""
    out: dict[int, NodeSettings] = {}
    for node in config.nodes:
        if node.port is None or node.switch is None:
            continue
        if config.switch(node.switch) is switch:
            out[node.port] = node
    return out


def target(config: Config, switch_key: str, port: int) -> PowerTarget:
    """The target at a switch (by name or address) and port; raises NotFoundError."""
    switch = config.switch(switch_key)
    if switch is None:
        known = ", ".join(s.name for s in config.switches) or "none"
        raise NotFoundError(f"no switch named or at {switch_key!r} (known: {known})")
    if port < 1 or (switch.ports is not None and port > switch.ports):
        limit = f"1-{switch.ports}" if switch.ports else "1 or more"
        raise NotFoundError(f"switch {switch.name!r} has no port {port} (ports {limit})")
    node = nodes_of(config, switch).get(port)
    return PowerTarget(switch, port, node.name if node else None)


def resolve(config: Config, specs: Sequence[str]) -> list[PowerTarget]:
    """Targets from node names, ``switch:port`` and ``all``; raises NotFoundError."""
    out: list[PowerTarget] = []
    for spec in specs:
        if spec == "all":
            for sw in config.switches:
                if sw.driver == "none":
                    continue
                out += [PowerTarget(sw, p, n.name) for p, n in sorted(nodes_of(config, sw).items())]
            continue
        node = config.node(spec)
        if node is not None:
            if node.switch is None or node.port is None:
                raise NotFoundError(f"node {spec!r} has no switch port to power")
            out.append(target(config, node.switch, node.port))
            continue
        switch_key, sep, port_text = spec.rpartition(":")
        if sep and port_text.isdigit():
            out.append(target(config, switch_key, int(port_text)))
            continue
        raise NotFoundError(f"{spec!r} is not a node, `switch:port` or `all`")
    seen: set[tuple[str, int]] = set()
    unique = []
    for t in out:
        if (t.switch.name, t.port) not in seen:
            seen.add((t.switch.name, t.port))
            unique.append(t)
    return unique
