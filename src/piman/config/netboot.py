"""Configuration of the netboot services: ``dhcp:`` and ``tftp:`` sections."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from piman.config.types import Duration, HostPort, format_duration

__all__ = ["DhcpSettings", "PoolRange", "TftpSettings", "parse_pool"]

# Raspberry Pi OUIs (PROTOCOLS.md §1); configurable because new ones appear.
DEFAULT_PI_OUIS = [
    "b8:27:eb",
    "dc:a6:32",
    "e4:5f:01",
    "28:cd:c1",
    "d8:3a:dd",
    "2c:cf:67",
    "88:a2:9e",
]


class PoolRange(BaseModel):
    """An inclusive range of IPv4 addresses handed to unknown clients."""

    model_config = ConfigDict(frozen=True)
    first: IPv4Address
    last: IPv4Address

    def __len__(self) -> int:
        return int(self.last) - int(self.first) + 1

    def __contains__(self, address: object) -> bool:
        return isinstance(address, IPv4Address) and self.first <= address <= self.last

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"


def parse_pool(value: object) -> PoolRange | None:
    """``"198.18.0.100-198.18.0.199"`` → range; ``"none"``/``None`` → no pool."""
    if value is None or isinstance(value, PoolRange):
        return value
    if isinstance(value, dict):
        return PoolRange.model_validate(value)
    text = str(value).strip()
    if text.lower() in {"none", "off", ""}:
        return None
    first, sep, last = text.partition("-")
    if not sep:
        raise ValueError(f"{value!r} is not an address range (expected FIRST-LAST or none)")
    try:
        lo, hi = IPv4Address(first.strip()), IPv4Address(last.strip())
    except ValueError:
        raise ValueError(
            f"{value!r} is not an address range (expected FIRST-LAST or none)"
        ) from None
    if hi < lo:
        raise ValueError(f"{value!r}: the last address comes before the first")
    return PoolRange(first=lo, last=hi)


class DhcpSettings(BaseModel):
    """``dhcp:`` — piman's own DHCP server. Absent or ``mode: off`` means no DHCP."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["authoritative", "proxy", "off"] = "authoritative"
    pool: PoolRange | None = None
    lease_time: Duration = 3600.0
    router: IPv4Address | None = None
    dns: list[IPv4Address] = Field(default_factory=list)
    domain: str | None = None
    # Boot file for non-Pi PXE clients: one name, or a map of option 93 architecture → name.
    boot_file: str | dict[int, str] | None = None
    # ``address:port`` to bind instead of 0.0.0.0:67 on ``manager.interface`` (tests, demo).
    listen: HostPort | None = None
    # MAC → IP reservations in the seed's hosts.csv format (mac,ip[,hostname]).
    hosts_file: Path | None = None
    pi_ouis: list[str] = Field(default_factory=lambda: list(DEFAULT_PI_OUIS))
    # Per-class reply delay in seconds, keyed by OUI (``b8:27:eb``) or model (``pi3``).
    reply_delay: dict[str, Duration] = Field(default_factory=dict)
    # Send option 43 text with three trailing spaces to these models (Pi 3B ROM bug).
    option43_padded_models: list[str] = Field(default_factory=list)
    # Pool guard: new pool leases a minute, overall (default: a quarter of the pool, at least 8)
    # and per client (its MAC, or its switch port when a relay adds option 82); 0 is no limit.
    new_leases_per_minute: int | None = Field(default=None, ge=0)
    new_leases_per_client: int = Field(default=4, ge=0)

    @field_validator("pool", mode="before")
    @classmethod
    def _pool(cls, value: object) -> PoolRange | None:
        return parse_pool(value)

    @property
    def enabled(self) -> bool:
        return self.mode != "off"


class TftpSettings(BaseModel):
    """``tftp:`` — piman's own TFTP server serving per-node boot trees."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    root: Path | None = None  # default: <data_dir>/boot
    listen: HostPort | None = None
    # Transfers at once. Each holds a socket (and a file when too large to cache): the server
    # lowers this at start to fit the open-file limit beside ``fd_reserve``.
    max_transfers: int = Field(default=256, ge=1)
    # File descriptors TFTP leaves to the rest of the manager (HTTP, the store, the journal).
    fd_reserve: int = Field(default=512, ge=0)
    # Whole-transfer limit (None: none). A 30 MB initramfs in lock-step at blksize 1024 with a
    # 1 ms round trip takes 30 s; a client that ACKs just in time holds a slot this long at most.
    transfer_timeout: Duration | None = 600.0
    retransmit_timeout: Duration = 1.0
    # The longest ``timeout`` option (RFC 2349, 1-255 s) granted; a client asking more gets
    # the server's own ``retransmit_timeout`` (the option is left out of the OACK).
    max_client_timeout: Duration = Field(default=10.0, ge=1, le=255)
    max_retries: int = Field(default=5, ge=0)
    rate_limit: float = Field(default=50.0, gt=0)  # new requests per second per source
    # New requests per second from all sources together (spoofed sources each look new).
    rate_limit_total: float = Field(default=1000.0, gt=0)
    # Sources the rate limit never applies to: loopback cannot be spoofed from the network
    # (the demo's virtual Pis all ask from 127.0.0.1).
    rate_limit_exempt: list[IPv4Network] = Field(
        default_factory=lambda: [IPv4Network("127.0.0.0/8")]
    )
    mtu: int = Field(default=1500, ge=576, le=65535)  # blksize is capped to mtu - 32
    max_windowsize: int = Field(default=64, ge=1, le=65535)  # RFC 7440 gains level out near 64
    # How long the data path spins for a client's next ACK before it sleeps (0: never); see
    # piman.netboot.tftp.busypoll. Pays when ACKs come within it; rests by itself when not.
    busy_poll: Duration = 100e-6
    # Lock-step blocks of concurrent transfers go through the C data path when piman was built
    # with it (piman.netboot.tftp._lanes); false keeps them in Python (same protocol, slower).
    native: bool = True

    @field_validator("busy_poll")
    @classmethod
    def _short_spin(cls, value: float) -> float:
        if value > 0.01:
            raise ValueError(
                f"{format_duration(value)} is too long a spin"
                " (expected at most 10ms, e.g. 100us; 0 turns it off)"
            )
        return value
