"""Configuration of reinstalls: where images are served, timeouts and retries per step, and what
every node gets at first boot unless a deployment says otherwise.

Example::

    deploy:
      default_environment: raspios-lite
      image_listen: "0.0.0.0:8001"     # the installer's image stream (HTTP Range, sendfile)
      max_parallel: 8
      timeouts: {hello: 10m, write_image: 1h}
      retries: 2                       # power cycles per step before failed_deployment
      customise:
        user: pi
        password_hash: "$6$…"          # sha512-crypt, e.g. from `mkpasswd -m sha-512`
        ssh_keys: ["ssh-ed25519 AAAA… ops@lab"]
        timezone: Europe/Oslo
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from piman.config.types import Duration, HostPort

__all__ = ["STEPS", "CustomiseSettings", "DeploySettings"]

# The steps of a deployment that wait for something, in order (DESIGN.md §3).
STEPS = (
    "power_off",
    "netboot_installer",
    "hello",
    "write_image",
    "verify",
    "customise",
    "boot_local",
    "agent_up",
)

_DEFAULT_TIMEOUTS = {
    "power_off": 120.0,
    "netboot_installer": 120.0,
    "hello": 600.0,  # TFTP of the installer, kernel boot, DHCP: minutes on a Pi 3
    "write_image": 3600.0,  # without progress for this long (progress restarts it)
    "verify": 1800.0,
    "customise": 300.0,
    "boot_local": 600.0,
    "agent_up": 900.0,  # first boot: firstrun/cloud-init, then the agent
}


class CustomiseSettings(BaseModel):
    """What the installer writes for a node's first boot (overridable per deployment)."""

    model_config = ConfigDict(extra="forbid")

    user: str = "pi"
    # A crypt(3) hash (sha512-crypt ``$6$…`` or yescrypt ``$y$…``); none: no password login.
    password_hash: str | None = None
    ssh_keys: list[str] = Field(default_factory=list)
    ssh_key_files: list[Path] = Field(default_factory=list)
    enable_ssh: bool = True
    timezone: str | None = None
    keyboard: str | None = None
    locale: str | None = None
    install_agent: bool = True  # the node comes up running `piman agent`
    # Extra files for the boot partition: its path → a file on the manager, e.g.
    # {"config.txt": /etc/piman/config.txt, "piman/motd": /etc/piman/motd}.
    extra_files: dict[str, Path] = Field(default_factory=dict)

    @field_validator("user")
    @classmethod
    def _user(cls, value: str) -> str:
        import re

        if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", value):
            raise ValueError(f"{value!r} is not a Linux user name (lower case, at most 32)")
        return value

    @field_validator("password_hash")
    @classmethod
    def _hash(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("$6$", "$5$", "$y$", "$2b$")):
            raise ValueError(
                "expected a crypt(3) hash such as $6$… (make one with `mkpasswd -m sha-512`),"
                " never a password"
            )
        return value


class DeploySettings(BaseModel):
    """``deploy:`` — reinstalling nodes. Present (even empty) turns the deploy engine on."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    default_environment: str | None = None
    # Where installers stream the image from (a sendfile server of its own): the manager's
    # address as the nodes reach it, and this port.
    image_listen: HostPort = "0.0.0.0:8001"
    # With manager.tls the API is HTTPS only, which the installer's busybox wget cannot speak:
    # /boot/v1 alone is then also served over plain HTTP here.
    api_listen: HostPort = "0.0.0.0:8002"
    # How long a deployment's one-time token is good for (boot to hello).
    token_ttl: Duration = 1800.0
    # Hello only from the address the manager knows for the node (off only in the demo, where
    # every virtual Pi speaks from 127.0.0.1).
    check_address: bool = True
    max_parallel: int = Field(default=8, ge=1, le=1024)
    retries: int = Field(default=2, ge=0, le=10)
    timeouts: dict[str, Duration] = Field(default_factory=dict)
    disk: str = "/dev/mmcblk0"  # the installer's target unless the node says otherwise
    customise: CustomiseSettings = Field(default_factory=CustomiseSettings)
    # The seed's root filesystem tarball (install/boot/rootfs.tgz): what `piman reinstall`
    # deploys when no environment is named or configured (set for the seed's YAML format).
    seed_rootfs: Path | None = None
    # The largest image the web UI's upload (POST /api/v1/environments) accepts, in bytes.
    max_upload: int = Field(default=16 << 30, ge=1)
    # Installers per architecture and model family are looked up under data_dir/installer.

    @field_validator("timeouts")
    @classmethod
    def _steps(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(STEPS))
        if unknown:
            raise ValueError(f"unknown steps {unknown} (expected some of {', '.join(STEPS)})")
        return value

    def timeout(self, step: str) -> float:
        return self.timeouts.get(step, _DEFAULT_TIMEOUTS[step])
