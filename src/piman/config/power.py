"""Configuration of switches and their power drivers: the ``switches:`` section."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from piman.config.types import Duration, Name

__all__ = ["SecretRef", "SnmpSettings", "SwitchSettings"]


class SecretRef(BaseModel):
    """A secret given inline (``key``), in a file (``key_file``) or an environment variable."""

    model_config = ConfigDict(extra="forbid")
    protocol: str | None = None
    key: SecretStr | None = None
    key_file: Path | None = None
    key_env: str | None = None


class SnmpSettings(BaseModel):
    """How to talk SNMP to a switch."""

    model_config = ConfigDict(extra="forbid")

    version: Literal["1", "2c", "3"] = "2c"
    host: str | None = None  # override the switch address (tests, NAT)
    port: int = Field(default=161, ge=1, le=65535)
    community: SecretStr = SecretStr("private")
    user: str | None = None
    context: str = ""
    vlan: int | None = Field(default=None, ge=1, le=4094)  # Cisco: community "private@<vlan>"
    auth: SecretRef | None = None
    priv: SecretRef | None = None
    timeout: Duration = 1.0
    retries: int = Field(default=2, ge=0, le=10)

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, value: object) -> object:
        return str(value) if isinstance(value, int) else value


class SwitchSettings(BaseModel):
    """One switch (or other power device) and the Pis hanging on its ports."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    address: IPv4Address | None = None
    driver: Literal["snmp-poe", "command", "webhook", "ssh-reboot", "manual", "none"] = "snmp-poe"
    profile: Literal["rfc3621", "netgear", "tplink", "cisco", "auto"] = "rfc3621"
    ports: int | None = Field(default=None, ge=1, le=1024)
    uplink_port: int | None = Field(default=None, ge=1)
    port_offset: int = 0
    group: int = Field(default=1, ge=1)
    snmp: SnmpSettings = Field(default_factory=SnmpSettings)
    off_seconds: Duration = 2.0
    batch_size: int = Field(default=4, ge=1)
    batch_interval: Duration = 5.0
    # How long to wait, after switching a port on, for the PSE to report deliveringPower.
    detect_timeout: Duration = 10.0
    # Driver-specific settings (argv template for ``command``, URL for ``webhook`` …).
    command: list[str] | None = None
    webhook_url: str | None = None
    webhook_token: SecretStr | None = None  # sent as "Authorization: Bearer <token>"
    ssh_user: str = "pi"  # ssh-reboot: who logs in; the node's ip is the host
    ssh_key_file: Path | None = None
