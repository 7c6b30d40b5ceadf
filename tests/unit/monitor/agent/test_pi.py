"""vcgencmd replies and the get_throttled bits."""

from __future__ import annotations

from pathlib import Path

import pytest

from piman.monitor.agent.pi import (
    THROTTLE_BITS,
    PiReadings,
    decode_throttled,
    parse_reply,
    pi_families,
    read_board_info,
)


@pytest.mark.parametrize(
    ("reply", "value"),
    [
        ("throttled=0x50005\n", 0x50005),
        ("throttled=0x0\n", 0),
        ("temp=47.2'C\n", 47.2),
        ("frequency(48)=1500398464\n", 1500398464),
        ("frequency(1)=0\n", 0),
        ("volt=0.8500V\n", 0.85),
    ],
)
def test_replies_parse(reply: str, value: float) -> None:
    assert parse_reply(reply) == pytest.approx(value)


@pytest.mark.parametrize(
    "reply", ["", 'error=1 error_msg="Command not registered"', "temp=", "nonsense"]
)
def test_bad_replies_raise_value_error(reply: str) -> None:
    with pytest.raises(ValueError, match="vcgencmd reply"):
        parse_reply(reply)


@pytest.mark.parametrize(
    ("bit", "condition", "scope"),
    [
        (0, "under_voltage", "now"),
        (1, "arm_freq_capped", "now"),
        (2, "throttled", "now"),
        (3, "soft_temp_limit", "now"),
        (16, "under_voltage", "since_boot"),
        (17, "arm_freq_capped", "since_boot"),
        (18, "throttled", "since_boot"),
        (19, "soft_temp_limit", "since_boot"),
    ],
)
def test_each_throttle_bit_decodes_to_one_condition(bit: int, condition: str, scope: str) -> None:
    decoded = decode_throttled(1 << bit)
    assert [key for key, on in decoded.items() if on] == [(condition, scope)]
    assert len(decoded) == len(THROTTLE_BITS) == 8


def test_families_for_a_throttled_pi() -> None:
    readings = PiReadings(True, 0x50005, 61.8, {"arm": 1.5e9, "core": 5e8}, {"core": 0.85})
    fams = {f.name: f for f in pi_families(readings, None)}
    assert fams["rpi_throttled_mask"].samples == [((), 0x50005)]
    on = {
        dict(labels)["condition"] + "/" + dict(labels)["scope"]
        for labels, v in fams["rpi_throttle_condition"].samples
        if v
    }
    assert on == {
        "under_voltage/now",
        "throttled/now",
        "under_voltage/since_boot",
        "throttled/since_boot",
    }
    assert fams["rpi_soc_temperature_celsius"].samples == [((), 61.8)]
    assert fams["rpi_clock_frequency_hertz"].samples == [
        ((("component", "arm"),), 1.5e9),
        ((("component", "core"),), 5e8),
    ]
    assert fams["rpi_voltage_volts"].samples == [((("component", "core"),), 0.85)]


def test_board_info_from_device_tree_and_cpuinfo(tmp_path: Path) -> None:
    proc, sys_ = tmp_path / "proc", tmp_path / "sys"
    model = sys_ / "firmware/devicetree/base/model"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"Raspberry Pi 4 Model B Rev 1.4\x00")
    proc.mkdir()
    (proc / "cpuinfo").write_text(
        "processor\t: 0\nHardware\t: BCM2835\nRevision\t: c03114\nSerial\t\t: 10000000abcdef01\n"
    )
    info = read_board_info(str(proc), str(sys_))
    assert info is not None
    assert (info.model, info.revision) == ("Raspberry Pi 4 Model B Rev 1.4", "c03114")
    fams = pi_families(None, info)
    assert fams[0].name == "rpi_board_info"
    assert dict(fams[0].samples[0][0]) == {
        "model": "Raspberry Pi 4 Model B Rev 1.4",
        "revision": "c03114",
    }


def test_not_a_pi_has_no_board_info(tmp_path: Path) -> None:
    assert read_board_info(str(tmp_path), str(tmp_path)) is None
