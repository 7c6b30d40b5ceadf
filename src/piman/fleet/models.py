"""Raspberry Pi models: detection from the MAC's OUI and from the board revision code.

Facts from PROTOCOLS.md §1 (Raspberry Pi documentation, ``revision-codes.adoc``). Pure functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "PI_OUIS",
    "BoardRevision",
    "PiModel",
    "decode_revision",
    "installer_arch",
    "model_from_mac",
    "serial_from_pi3_mac",
]


class PiModel(StrEnum):
    """The Pi models piman tells apart (what netboot and power need to know)."""

    PI3B = "pi3b"
    PI3BPLUS = "pi3b+"
    PI3APLUS = "pi3a+"
    CM3PLUS = "cm3+"
    PI4 = "pi4"
    PI400 = "pi400"
    CM4 = "cm4"
    CM4S = "cm4s"
    PI5 = "pi5"
    PI500 = "pi500"
    CM5 = "cm5"
    CM5LITE = "cm5lite"
    PI = "pi"  # a Pi of unknown model (a Pi OUI but nothing more)
    UNKNOWN = "unknown"

    @property
    def family(self) -> int:
        """3, 4 or 5 (0 when unknown): what decides the boot files and the DHCP quirks."""
        if self in _FAMILY3:
            return 3
        if self in _FAMILY4:
            return 4
        if self in _FAMILY5:
            return 5
        return 0


_FAMILY3 = {PiModel.PI3B, PiModel.PI3BPLUS, PiModel.PI3APLUS, PiModel.CM3PLUS}
_FAMILY4 = {PiModel.PI4, PiModel.PI400, PiModel.CM4, PiModel.CM4S}
_FAMILY5 = {PiModel.PI5, PiModel.PI500, PiModel.CM5, PiModel.CM5LITE}

# OUI → the most specific model it tells (PROTOCOLS.md §1). B8:27:EB is every Pi up to the 3.
PI_OUIS: dict[str, PiModel] = {
    "b8:27:eb": PiModel.PI3BPLUS,
    "dc:a6:32": PiModel.PI4,
    "e4:5f:01": PiModel.PI4,
    "28:cd:c1": PiModel.PI,
    "d8:3a:dd": PiModel.PI,
    "2c:cf:67": PiModel.PI5,
    "88:a2:9e": PiModel.PI5,
}

_TYPES: dict[int, PiModel] = {
    0x08: PiModel.PI3B,
    0x0D: PiModel.PI3BPLUS,
    0x0E: PiModel.PI3APLUS,
    0x10: PiModel.CM3PLUS,
    0x11: PiModel.PI4,
    0x13: PiModel.PI400,
    0x14: PiModel.CM4,
    0x15: PiModel.CM4S,
    0x17: PiModel.PI5,
    0x18: PiModel.CM5,
    0x19: PiModel.PI500,
    0x1A: PiModel.CM5LITE,
}
_SOCS = {0: "BCM2835", 1: "BCM2836", 2: "BCM2837", 3: "BCM2711", 4: "BCM2712"}
_RAM_MB = {0: 256, 1: 512, 2: 1024, 3: 2048, 4: 4096, 5: 8192, 6: 16384}


@dataclass(frozen=True, slots=True)
class BoardRevision:
    """A decoded new-style board revision code."""

    code: int
    model: PiModel
    soc: str
    memory_mb: int
    pcb_revision: int

    @property
    def hex(self) -> str:
        return f"{self.code:06x}"


def decode_revision(code: int) -> BoardRevision | None:
    """Decode a new-style revision code (bit 23 set); ``None`` for old-style or invalid codes."""
    if code < 0 or code > 0xFFFFFFFF or not code & (1 << 23):
        return None
    board_type = (code >> 4) & 0xFF
    soc = (code >> 12) & 0xF
    ram = (code >> 20) & 0x7
    return BoardRevision(
        code=code,
        model=_TYPES.get(board_type, PiModel.UNKNOWN),
        soc=_SOCS.get(soc, f"unknown({soc})"),
        memory_mb=_RAM_MB.get(ram, 0),
        pcb_revision=code & 0xF,
    )


def model_from_mac(mac: str, ouis: dict[str, PiModel] | None = None) -> PiModel:
    """The model a MAC's OUI tells, ``PiModel.UNKNOWN`` when it is not a Pi OUI."""
    table = PI_OUIS if ouis is None else ouis
    return table.get(mac.lower()[:8], PiModel.UNKNOWN)


def serial_from_pi3_mac(mac: str) -> str:
    """On Pi 3/3B+ the MAC's low 24 bits equal the serial's: the serial as far as it is known."""
    return "00" + mac.lower().replace(":", "")[-6:]


def installer_arch(model: str | None) -> str:
    """The installer a node of this model boots: ``arm64`` for Pis, ``amd64`` for PCs."""
    if model and model.lower() in ("amd64", "x86_64", "x86-64", "pc"):
        return "amd64"
    return "arm64"
