"""LLDP-MIB's remote table as a switch answers a walk: a neighbour per local port, its MAC from
the port id or the chassis id (whichever is a MAC), its system name."""

from __future__ import annotations

from piman.inventory.bridge import LLDP_REM, LldpNeighbour, read_lldp

MAC_A = bytes.fromhex("dca632000005")
MAC_B = bytes.fromhex("b827eb000007")


class Walker:
    """What an SNMP client's walk of the LLDP remote table returns (time mark 0, index 1)."""

    def __init__(self, rows: list[tuple[str, int | bytes | str]]) -> None:
        self.rows = rows

    async def walk(self, prefix: str, *, max_rows: int = 10000) -> list[tuple[str, object]]:
        return [(oid, v) for oid, v in self.rows if oid.startswith(prefix + ".")][:max_rows]


def rem(column: int, port: int, value: int | bytes | str, index: int = 1) -> tuple[str, object]:
    return (f"{LLDP_REM}.{column}.0.{port}.{index}", value)


async def test_port_id_mac_then_chassis_mac_then_none() -> None:
    client = Walker(
        [
            # port 5: lldpd on a Pi: chassis id a MAC (subtype 4), port id a MAC (subtype 3)
            rem(4, 5, 4), rem(5, 5, MAC_A), rem(6, 5, 3), rem(7, 5, MAC_A), rem(9, 5, b"pi-05"),
            # port 7: port id is an interface name (subtype 5): the chassis MAC is used
            rem(4, 7, 4), rem(5, 7, MAC_B), rem(6, 7, 5), rem(7, 7, b"eth0"), rem(9, 7, b"pi-07"),
            # port 24: a switch with a network-address chassis id (subtype 5) and no name
            rem(4, 24, 5), rem(5, 24, b"\x01\xc6\x12\x00\xfe"), rem(6, 24, 7), rem(7, 24, b"24"),
        ]
    )  # fmt: skip
    assert await read_lldp(client) == [  # type: ignore[arg-type]
        LldpNeighbour(5, "dc:a6:32:00:00:05", "pi-05"),
        LldpNeighbour(7, "b8:27:eb:00:00:07", "pi-07"),
        LldpNeighbour(24, None, None),
    ]


async def test_a_switch_without_the_table_has_no_neighbours() -> None:
    assert await read_lldp(Walker([])) == []  # type: ignore[arg-type]
