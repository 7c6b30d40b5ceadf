"""The typed configuration tree of piman (DESIGN.md §2).

Only ``manager`` is required; a section that is absent is off. Cross-field rules (unique names,
MACs, addresses, ports; addresses inside the manager's network) are checked by
:func:`check_inventory`, which returns every problem at once with its field path, so
``piman config check`` can list them all.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from piman.config.access import AccessSettings, TlsSettings
from piman.config.deploy import DeploySettings
from piman.config.healing import HealingSettings
from piman.config.monitoring import MonitoringSettings
from piman.config.netboot import DhcpSettings, TftpSettings
from piman.config.power import SwitchSettings
from piman.config.reservations import ReservationSettings
from piman.config.ssh import SshSettings
from piman.config.types import HostPort, MacAddress, Name, parse_host_port

__all__ = [
    "Config",
    "DatabaseSettings",
    "HostReservation",
    "ManagerSettings",
    "NodeSettings",
    "check_inventory",
]


class ManagerSettings(BaseModel):
    """``manager:`` — where the manager lives and keeps its data."""

    model_config = ConfigDict(extra="forbid")

    address: IPv4Address
    interface: str | None = None
    network: IPv4Network | None = None
    data_dir: Path = Path("/var/lib/piman")
    http: HostPort = "0.0.0.0:8000"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Public URL of the web UI, used in notifications (Alertmanager's externalURL).
    external_url: str | None = None
    # HTTPS for the API and the web UI (PEM certificate chain and key).
    tls: TlsSettings | None = None
    # Host names the manager answers to besides its addresses, localhost and its own host name
    # (a request naming another host is refused: no DNS rebinding).
    allowed_hosts: list[str] = Field(default_factory=list)
    # When set, /metrics needs `Authorization: Bearer <this>` (or any valid API token).
    metrics_token: SecretStr | None = None

    @field_validator("network", mode="before")
    @classmethod
    def _network(cls, value: object) -> object:
        if isinstance(value, bool | int):  # YAML's no/yes/1: never a network
            raise ValueError(f"{value!r} is not an IPv4 network (expected e.g. 198.18.0.0/24)")
        if isinstance(value, str):
            try:
                return IPv4Network(value.strip(), strict=False)
            except ValueError:
                raise ValueError(
                    f"{value!r} is not an IPv4 network (expected e.g. 198.18.0.0/24)"
                ) from None
        return value

    @property
    def http_host_port(self) -> tuple[str, int]:
        return parse_host_port(self.http)

    @property
    def effective_network(self) -> IPv4Network:
        """The provisioning network; a /24 around the manager's address when not given."""
        return self.network or IPv4Network(f"{self.address}/24", strict=False)


class DatabaseSettings(BaseModel):
    """``database:`` — SQLite file in ``data_dir`` by default, PostgreSQL by URL."""

    model_config = ConfigDict(extra="forbid")
    url: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^(sqlite|postgresql)(\+\w+)?://", value):
            raise ValueError(
                f"{value!r} is not a database URL (expected sqlite:///FILE or postgresql://…)"
            )
        return value


class NodeSettings(BaseModel):
    """One Raspberry Pi (or any machine the manager watches)."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    switch: str | None = None
    port: int | None = Field(default=None, ge=1, le=1024)
    mac: MacAddress | None = None
    ip: IPv4Address | None = None
    serial: str | None = None
    model: str | None = None
    hostname: str | None = None
    agent_url: str | None = None
    # This node's agent token, instead of monitoring.agent_token (sent to its agent URL only).
    agent_token: SecretStr | None = None
    # Reinstalls: the environment this node runs (piman reinstall's default) and its disk.
    environment: str | None = None
    disk: str | None = None
    # Words a reservation can ask for (`piman reserve --count 2 --tag camera`); also Ansible groups.
    tags: list[str] = Field(default_factory=list)
    # How the node is watched: its agent (scraped over HTTP), over SSH with no agent
    # (fleet_health's model: /proc and /sys read by one command), or not at all.
    monitor: Literal["agent", "ssh", "none"] = "agent"
    # Who logs in over SSH (piman ssh, agentless monitoring); default: ssh.user.
    ssh_user: str | None = Field(default=None, pattern=r"^[a-z_][a-z0-9_.-]*$", max_length=64)

    @field_validator("serial", mode="before")
    @classmethod
    def _serial(cls, value: object) -> object:
        if value is None:
            return None
        text = str(value).strip().lower()
        text = text.removeprefix("0x")
        if not re.fullmatch(r"[0-9a-f]{1,16}", text):
            raise ValueError(f"{value!r} is not a serial number (expected 8 hex digits)")
        return text.rjust(8, "0")[-8:] if len(text) <= 8 else text

    @model_validator(mode="after")
    def _port_needs_switch(self) -> NodeSettings:
        if self.port is not None and self.switch is None:
            raise ValueError("a port is given but no switch; add `switch:`")
        return self


class HostReservation(BaseModel):
    """One line of hosts.csv: a MAC that always gets an IP (and optionally a hostname)."""

    model_config = ConfigDict(frozen=True)
    mac: MacAddress
    ip: IPv4Address
    hostname: str | None = None


class Config(BaseModel):
    """The whole configuration. Build it with :func:`piman.config.load_config`."""

    model_config = ConfigDict(extra="forbid")

    manager: ManagerSettings
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    dhcp: DhcpSettings | None = None
    tftp: TftpSettings | None = None
    switches: list[SwitchSettings] = Field(default_factory=list)
    nodes: list[NodeSettings] = Field(default_factory=list)
    monitoring: MonitoringSettings | None = None
    deploy: DeploySettings | None = None
    access: AccessSettings = Field(default_factory=AccessSettings)
    reservations: ReservationSettings = Field(default_factory=ReservationSettings)
    ssh: SshSettings = Field(default_factory=SshSettings)
    healing: HealingSettings | None = None  # self-healing policies; absent: off
    # Reservations from hosts.csv (not written in YAML; filled by the loader).
    hosts: list[HostReservation] = Field(default_factory=list, exclude=True)

    @property
    def database_url(self) -> str:
        """The SQLAlchemy URL, with an async driver."""
        url = self.database.url or f"sqlite:///{self.manager.data_dir / 'piman.db'}"
        if url.startswith("sqlite://") and "+" not in url.split("://")[0]:
            url = url.replace("sqlite://", "sqlite+aiosqlite://", 1)
        elif url.startswith("postgresql://"):
            url = url.replace("postgresql://", "postgresql+asyncpg://", 1)
        return url

    @property
    def tftp_root(self) -> Path:
        root = self.tftp.root if self.tftp and self.tftp.root else None
        return root or self.manager.data_dir / "boot"

    def switch(self, key: str) -> SwitchSettings | None:
        """A switch by name or by address."""
        for sw in self.switches:
            if sw.name == key or (sw.address is not None and str(sw.address) == key):
                return sw
        return None

    def node(self, name: str) -> NodeSettings | None:
        return next((n for n in self.nodes if n.name == name), None)


def check_inventory(config: Config) -> list[tuple[str, str]]:
    """Cross-field problems as ``(field path, message)`` pairs; empty when all is well."""
    problems: list[tuple[str, str]] = []
    network = config.manager.effective_network
    manager_ip = config.manager.address
    if config.manager.network is not None and manager_ip not in network:
        problems.append(("manager.address", f"{manager_ip} is outside manager.network {network}"))

    switch_names: dict[str, int] = {}
    switch_addrs: dict[IPv4Address, int] = {}
    for i, sw in enumerate(config.switches):
        if sw.name in switch_names:
            problems.append(
                (
                    f"switches[{i}].name",
                    f"{sw.name!r} is already the name of switches[{switch_names[sw.name]}]",
                )
            )
        switch_names.setdefault(sw.name, i)
        if sw.address is not None:
            if sw.address in switch_addrs:
                problems.append(
                    (
                        f"switches[{i}].address",
                        f"{sw.address} is already the address of "
                        f"switches[{switch_addrs[sw.address]}]",
                    )
                )
            switch_addrs.setdefault(sw.address, i)
            if sw.address == manager_ip:
                problems.append(
                    (f"switches[{i}].address", f"{sw.address} is the manager's own address")
                )
        elif sw.driver == "snmp-poe" and sw.snmp.host is None:
            problems.append((f"switches[{i}].address", "an snmp-poe switch needs an address"))

    seen_names: dict[str, int] = {}
    seen_macs: dict[str, str] = {}
    seen_ips: dict[IPv4Address, str] = {}
    seen_ports: dict[tuple[str, int], str] = {}
    for i, node in enumerate(config.nodes):
        where = f"nodes[{i}]"
        if node.name in seen_names:
            problems.append(
                (
                    f"{where}.name",
                    f"{node.name!r} is already the name of nodes[{seen_names[node.name]}]",
                )
            )
        seen_names.setdefault(node.name, i)
        if node.mac is not None:
            if node.mac in seen_macs:
                problems.append(
                    (f"{where}.mac", f"{node.mac} is already the MAC of {seen_macs[node.mac]}")
                )
            seen_macs.setdefault(node.mac, node.name)
        if node.ip is not None:
            if node.ip == manager_ip:
                problems.append(
                    (
                        f"{where}.ip",
                        f"{node.ip} of node {node.name!r} is the manager's own address "
                        f"(manager.address {manager_ip})",
                    )
                )
            elif node.ip in seen_ips:
                problems.append(
                    (f"{where}.ip", f"{node.ip} is already the address of {seen_ips[node.ip]}")
                )
            elif node.ip in switch_addrs:
                problems.append(
                    (
                        f"{where}.ip",
                        f"{node.ip} of node {node.name!r} is the address of "
                        f"switch {config.switches[switch_addrs[node.ip]].name!r}",
                    )
                )
            elif node.agent_url is None and node.ip not in network:
                problems.append(
                    (
                        f"{where}.ip",
                        f"{node.ip} is outside the manager's network {network} "
                        "(give manager.network, or agent_url for a node elsewhere)",
                    )
                )
            seen_ips.setdefault(node.ip, node.name)
        if node.switch is not None:
            sw_index = switch_names.get(node.switch)
            if sw_index is None:
                by_addr = config.switch(node.switch)
                if by_addr is None:
                    known = ", ".join(sorted(switch_names)) or "none"
                    problems.append(
                        (
                            f"{where}.switch",
                            f"{node.switch!r} is not a configured switch (known: {known})",
                        )
                    )
                    continue
                sw = by_addr
            else:
                sw = config.switches[sw_index]
            if node.port is not None:
                key = (sw.name, node.port)
                if key in seen_ports:
                    problems.append(
                        (
                            f"{where}.port",
                            f"port {node.port} of switch {sw.name!r} is already used by "
                            f"{seen_ports[key]}",
                        )
                    )
                seen_ports.setdefault(key, node.name)
                if sw.ports is not None and node.port > sw.ports:
                    problems.append(
                        (
                            f"{where}.port",
                            f"port {node.port} is beyond the {sw.ports} ports of {sw.name!r}",
                        )
                    )
                if sw.uplink_port is not None and node.port == sw.uplink_port:
                    problems.append(
                        (
                            f"{where}.port",
                            f"port {node.port} of {sw.name!r} is its uplink_port (the manager's)",
                        )
                    )

    for i, host in enumerate(config.hosts):
        where = f"hosts[{i}]"
        owner = seen_macs.get(host.mac)
        if host.ip == manager_ip:
            problems.append(
                (f"{where}.ip", f"{host.ip} of {host.mac} is the manager's own address")
            )
        elif host.ip in seen_ips and seen_ips[host.ip] != owner:
            problems.append(
                (
                    f"{where}.ip",
                    f"{host.ip} of {host.mac} is already the address of {seen_ips[host.ip]}",
                )
            )
    return problems
