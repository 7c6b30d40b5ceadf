"""Pi model detection from MAC OUIs and board revision codes (PROTOCOLS.md §1)."""

from __future__ import annotations

import pytest

from piman.fleet import PiModel, decode_revision, model_from_mac, serial_from_pi3_mac


@pytest.mark.parametrize(
    ("code", "model", "soc", "memory_mb", "pcb"),
    [
        (0xA02082, PiModel.PI3B, "BCM2837", 1024, 2),
        (0xA020D3, PiModel.PI3BPLUS, "BCM2837", 1024, 3),
        (0x9020E0, PiModel.PI3APLUS, "BCM2837", 512, 0),
        (0xA03111, PiModel.PI4, "BCM2711", 1024, 1),
        (0xC03114, PiModel.PI4, "BCM2711", 4096, 4),
        (0xD03115, PiModel.PI4, "BCM2711", 8192, 5),
        (0xC03130, PiModel.PI400, "BCM2711", 4096, 0),
        (0xB03141, PiModel.CM4, "BCM2711", 2048, 1),
        (0xC04170, PiModel.PI5, "BCM2712", 4096, 0),
        (0xD04170, PiModel.PI5, "BCM2712", 8192, 0),
        (0xE04171, PiModel.PI5, "BCM2712", 16384, 1),
        (0xD04190, PiModel.PI500, "BCM2712", 8192, 0),
        (0xB04180, PiModel.CM5, "BCM2712", 2048, 0),
        (0xB041A0, PiModel.CM5LITE, "BCM2712", 2048, 0),
    ],
)
def test_new_style_revision_codes_decode(
    code: int, model: PiModel, soc: str, memory_mb: int, pcb: int
) -> None:
    rev = decode_revision(code)
    assert rev is not None
    assert (rev.model, rev.soc, rev.memory_mb, rev.pcb_revision) == (model, soc, memory_mb, pcb)


@pytest.mark.parametrize("code", [0x000E, 0x0010, -1, 1 << 40])
def test_old_style_or_invalid_codes_are_not_decoded(code: int) -> None:
    assert decode_revision(code) is None


def test_unknown_board_type_is_unknown_not_an_error() -> None:
    rev = decode_revision(0xA03FF0)
    assert rev is not None
    assert rev.model is PiModel.UNKNOWN


@pytest.mark.parametrize(
    ("mac", "model"),
    [
        ("B8:27:EB:12:34:56", PiModel.PI3BPLUS),
        ("dc:a6:32:00:00:01", PiModel.PI4),
        ("e4:5f:01:00:00:01", PiModel.PI4),
        ("2c:cf:67:00:00:01", PiModel.PI5),
        ("88:a2:9e:00:00:01", PiModel.PI5),
        ("d8:3a:dd:00:00:01", PiModel.PI),
        ("52:54:00:12:34:56", PiModel.UNKNOWN),
    ],
)
def test_model_from_mac_oui(mac: str, model: PiModel) -> None:
    assert model_from_mac(mac) is model


def test_families_decide_boot_behaviour() -> None:
    assert PiModel.PI3BPLUS.family == 3
    assert PiModel.CM4.family == 4
    assert PiModel.PI500.family == 5
    assert PiModel.UNKNOWN.family == 0


def test_pi3_serial_low_bits_come_from_the_mac() -> None:
    assert serial_from_pi3_mac("b8:27:eb:a1:b2:c3") == "00a1b2c3"
