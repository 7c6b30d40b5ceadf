"""MBR and GPT tables written by sfdisk read back as sfdisk reads them; broken ones are refused."""

from __future__ import annotations

import io
import itertools
import json
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from piman.deploy.errors import ImageError
from piman.deploy.partitions import PartitionTable, Region, read_table
from tests.support import needs_root, needs_tool

MIB = 1 << 20


def partitioned(path: Path, size: int, script: str) -> Path:
    """A sparse file of ``size`` bytes partitioned by ``sfdisk`` from ``script``."""
    needs_tool("sfdisk")
    with path.open("wb") as f:
        f.truncate(size)
    subprocess.run(["sfdisk", "-q", str(path)], input=script, text=True, check=True)
    return path


def table_of(path: Path) -> PartitionTable | None:
    with path.open("rb") as f:
        return read_table(Region(f, 0, path.stat().st_size))


def sfdisk_json(path: Path) -> dict[str, object]:
    out = subprocess.run(["sfdisk", "--json", str(path)], capture_output=True, check=True)
    table: dict[str, object] = json.loads(out.stdout)["partitiontable"]
    return table


def test_mbr_partitions_read_as_sfdisk_reads_them(tmp_path: Path) -> None:
    image = partitioned(
        tmp_path / "mbr.img",
        16 * MIB,
        "label: dos\nlabel-id: 0x1234abcd\nstart=2048, size=8192, type=c\n"
        "start=10240, size=12288, type=83\nstart=24576, size=2048, type=82\n",
    )
    table = table_of(image)
    assert table is not None
    assert table.kind == "mbr"
    assert table.disk_id == "0x1234abcd"
    expected = sfdisk_json(image)["partitions"]
    got = [(p.index, p.start_bytes // 512, p.size_bytes // 512, p.type) for p in table.partitions]
    assert got == [
        (int(p["node"][-1]), p["start"], p["size"], f"0x{int(p['type'], 16):02x}") for p in expected
    ]
    assert table.disk_bytes_needed == (24576 + 2048) * 512
    assert table.metadata == ((0, 512),)


def test_gpt_partitions_names_and_types_read_as_sfdisk_reads_them(tmp_path: Path) -> None:
    esp = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
    linux = "0fc63daf-8483-4772-8e79-3d69e47d7de4"
    image = partitioned(
        tmp_path / "gpt.img",
        16 * MIB,
        f'label: gpt\nstart=2048, size=4096, type={esp}, name="boot fw"\n'
        f'start=8192, size=8192, type={linux}, name="rootfs"\n',
    )
    table = table_of(image)
    expected = sfdisk_json(image)
    assert table is not None
    assert table.kind == "gpt"
    assert table.disk_id == str(expected["id"]).lower()
    got = [(p.start_bytes // 512, p.size_bytes // 512, p.type, p.name) for p in table.partitions]
    assert got == [
        (p["start"], p["size"], p["type"].lower(), p["name"]) for p in expected["partitions"]
    ]
    assert [p.index for p in table.partitions] == [1, 2]
    # The table needs the whole file: its backup header is the last sector.
    assert table.disk_bytes_needed == 16 * MIB
    metadata = table.metadata
    assert (0, 1024) in metadata
    assert metadata[-1][1] == 16 * MIB
    assert metadata[-1][0] <= 16 * MIB - 33 * 512


def test_a_4k_sector_gpt_is_found_at_byte_4096(tmp_path: Path) -> None:
    needs_root()
    needs_tool("losetup", "sfdisk")
    image = tmp_path / "4k.img"
    with image.open("wb") as f:
        f.truncate(32 * MIB)
    loop = subprocess.run(
        ["losetup", "-b", "4096", "-f", "--show", str(image)], capture_output=True, text=True
    )
    if loop.returncode != 0:
        pytest.skip(f"no loop device: {loop.stderr.strip()}")
    device = loop.stdout.strip()
    try:
        script = "label: gpt\nstart=256, size=1024, name=boot\n"
        subprocess.run(["sfdisk", "-q", device], input=script, text=True, check=True)
    finally:
        subprocess.run(["losetup", "-d", device], check=True)
    table = table_of(image)
    assert table is not None
    (part,) = table.partitions
    assert (part.start_bytes, part.size_bytes, part.name) == (256 * 4096, 1024 * 4096, "boot")


@pytest.mark.parametrize("content", [b"", bytes(4096), b"hello, not a disk\n" * 100])
def test_no_table_is_none(tmp_path: Path, content: bytes) -> None:
    image = tmp_path / "blank.img"
    image.write_bytes(content)
    assert table_of(image) is None


def test_a_partition_past_the_end_of_the_file_is_a_truncated_image(tmp_path: Path) -> None:
    image = partitioned(tmp_path / "cut.img", 16 * MIB, "label: dos\nstart=2048, type=83\n")
    with image.open("r+b") as f:
        f.truncate(10 * MIB)
    with pytest.raises(ImageError, match=r"holds only 10485760.*truncated"):
        table_of(image)


def test_a_gpt_without_its_backup_is_a_truncated_image(tmp_path: Path) -> None:
    image = partitioned(tmp_path / "cut.img", 8 * MIB, "label: gpt\nstart=2048, size=2048\n")
    with image.open("r+b") as f:
        f.truncate(8 * MIB - 4096)
    with pytest.raises(ImageError, match="truncated"):
        table_of(image)


@pytest.mark.parametrize(
    ("offset", "message"),
    [(512 + 40, "GPT header's CRC32"), (1024 + 20, "GPT entry array does not match")],
)
def test_a_flipped_byte_in_the_gpt_fails_its_crc(tmp_path: Path, offset: int, message: str) -> None:
    image = partitioned(tmp_path / "gpt.img", 8 * MIB, "label: gpt\nstart=2048, size=2048\n")
    data = bytearray(image.read_bytes())
    data[offset] ^= 0x01
    image.write_bytes(data)
    with pytest.raises(ImageError, match=message):
        table_of(image)


def mbr(*entries: tuple[int, int, int]) -> bytes:
    """A bare MBR sector with (type, start sector, sectors) entries."""
    sector = bytearray(512)
    for i, (kind, start, count) in enumerate(entries):
        struct.pack_into("<B3sB3sII", sector, 446 + 16 * i, 0, b"", kind, b"", start, count)
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


def test_overlapping_primary_partitions_are_refused() -> None:
    disk = mbr((0x0C, 2048, 4096), (0x83, 4000, 4096)) + bytes(8192 * 512)
    with pytest.raises(ImageError, match="partitions 1 and 2 overlap"):
        read_table(Region(io.BytesIO(disk), 0, len(disk)))


def test_an_extended_partition_is_one_partition_of_its_type() -> None:
    disk = mbr((0x0C, 2048, 2048), (0x05, 4096, 4096)) + bytes(8192 * 512)
    table = read_table(Region(io.BytesIO(disk), 0, len(disk)))
    assert table is not None
    assert [p.type for p in table.partitions] == ["0x0c", "0x05"]


def test_a_protective_mbr_without_a_gpt_header_is_refused() -> None:
    disk = mbr((0xEE, 1, 100)) + bytes(200 * 512)
    with pytest.raises(ImageError, match="no GPT header"):
        read_table(Region(io.BytesIO(disk), 0, len(disk)))


def gpt_head(entries: bytes, count: int, entry_size: int, layout: tuple[int, ...]) -> bytes:
    """A protective MBR and a GPT header with valid CRCs over ``entries`` (at ``layout``'s
    entry LBA); ``layout`` is (my LBA, alternate LBA, first usable, last usable, entries LBA)."""
    my_lba, alternate, first, last, entries_lba = layout
    header = bytearray(struct.pack("<8sIIIIQQQQ16sQIII", b"EFI PART", 0x10000, 92, 0, 0, my_lba,
                                   alternate, first, last, bytes(16), entries_lba, count,
                                   entry_size, zlib.crc32(entries)))  # fmt: skip
    struct.pack_into("<I", header, 16, zlib.crc32(header))
    return mbr((0xEE, 1, 63)) + bytes(header) + bytes(420) + entries


@pytest.mark.parametrize("first_usable", [0, 1, 2])
def test_a_gpt_whose_usable_sectors_cover_its_own_table_is_refused(first_usable: int) -> None:
    # One partition at the first usable sector: over the MBR (0), the header (1) or the entry
    # array (2); the installer writes the table last, so it would overwrite that partition.
    entry = bytes(range(1, 17)) + bytes(16) + struct.pack("<QQ", first_usable, 40) + bytes(80)
    disk = gpt_head(entry, 1, 128, (1, 63, first_usable, 60, 2)) + bytes(64 * 512)
    with pytest.raises(ImageError, match="overlap the partition table itself"):
        read_table(Region(io.BytesIO(disk), 0, len(disk)))
    entry = entry[:32] + struct.pack("<QQ", 3, 40) + bytes(80)  # right after the array: fine
    disk = gpt_head(entry, 1, 128, (1, 63, 3, 60, 2)) + bytes(64 * 512)
    table = read_table(Region(io.BytesIO(disk), 0, len(disk)))
    assert table is not None
    assert [(p.start_bytes, p.end_bytes) for p in table.partitions] == [(3 * 512, 41 * 512)]


LBA = st.integers(min_value=0, max_value=80) | st.integers(min_value=0, max_value=2**64 - 1)


def sound(table: PartitionTable | None, disk: bytes) -> PartitionTable | None:
    """Check what any table read from ``disk`` must be: partitions numbered in order, each
    non-empty, none overlapping another or the table itself (MBR; GPT header and entry array),
    all on the disk."""
    if table is None:
        return None
    assert table.disk_bytes_needed <= len(disk)
    parts = table.partitions
    assert [p.index for p in parts] == sorted({p.index for p in parts})
    assert all(0 < p.start_bytes < p.end_bytes <= table.disk_bytes_needed for p in parts)
    for start, end in table.metadata[:2]:
        assert all(p.end_bytes <= start or end <= p.start_bytes for p in parts)
    ordered = sorted(parts, key=lambda p: p.start_bytes)
    assert all(a.end_bytes <= b.start_bytes for a, b in itertools.pairwise(ordered))
    return table


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=4096),
    st.integers(min_value=0, max_value=300),
    st.sampled_from([0, 64, 128, 136, 256]) | st.integers(min_value=0, max_value=2**32 - 1),
    st.tuples(st.just(1) | LBA, LBA, LBA, LBA, st.just(2) | LBA),
)
def test_garbage_gpts_with_valid_crcs_raise_image_error_only(
    entries: bytes, count: int, size: int, layout: tuple[int, ...]
) -> None:
    disk = gpt_head(entries, count, size, layout) + bytes(64 * 512)
    try:
        table = sound(read_table(Region(io.BytesIO(disk), 0, len(disk))), disk)
    except ImageError:
        return
    assert table is not None
    assert table.kind == "gpt"


@settings(max_examples=300, deadline=None)
@given(st.data(), st.sampled_from([128, 256]), st.integers(min_value=1, max_value=8))
def test_garbage_gpt_entries_raise_image_error_only(
    data: st.DataObject, size: int, count: int
) -> None:
    lbas = st.integers(min_value=0, max_value=80)
    # Random entries, or entries whose sectors are near the usable area (type GUID zero or not).
    entry = st.binary(min_size=size, max_size=size) | st.builds(
        lambda kind, first, last, rest: kind + bytes(16) + struct.pack("<QQ", first, last) + rest,
        st.just(bytes(16)) | st.binary(min_size=16, max_size=16),
        lbas,
        lbas,
        st.binary(min_size=size - 48, max_size=size - 48),
    )
    entries = b"".join(data.draw(st.lists(entry, min_size=count, max_size=count)))
    layout = (1, data.draw(lbas), data.draw(lbas), data.draw(lbas), 2)
    first_usable, last_usable = layout[2:4]
    disk = gpt_head(entries, count, size, layout) + bytes(64 * 512)
    used = []
    for i in range(count):
        type_guid, first, last = struct.unpack_from("<16s16xQQ", entries, i * size)
        if type_guid != bytes(16):
            used.append((i + 1, first, last))
    if any(not first_usable <= first <= last <= last_usable for _, first, last in used):
        with pytest.raises(ImageError):
            read_table(Region(io.BytesIO(disk), 0, len(disk)))
        return
    try:
        table = sound(read_table(Region(io.BytesIO(disk), 0, len(disk))), disk)
    except ImageError:
        return
    assert table is not None
    # Every entry with a type GUID is a partition, at the sectors the entry gives.
    got = [(p.index, p.start_bytes, p.end_bytes) for p in table.partitions]
    assert got == [(i, first * 512, (last + 1) * 512) for i, first, last in used]


_KINDS = st.sampled_from([0x00, 0x0C, 0x83, 0xEE, 0x05]) | st.integers(0, 255)
ENTRY = st.tuples(
    _KINDS,
    st.integers(0, 100) | st.integers(0, 2**32 - 1),
    st.integers(0, 100) | st.integers(0, 2**32 - 1),
)


def _lay_out(specs: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Entries one after the other from sector 1, each ``gap`` sectors after the previous one's
    end: -1 overlaps it by one sector (or starts the first on the MBR), 0 touches it."""
    entries, at = [], 1
    for kind, gap, count in specs:
        start = max(0, at + gap)
        entries.append((kind, start, count))
        at = start + count
    return entries


# Near misses: entries that touch, overlap by one sector, start on the MBR, on a disk of 17
# sectors that holds them all (or random bytes, often too short).
_LAID_OUT = st.lists(
    st.tuples(_KINDS.filter(lambda k: k != 0xEE), st.integers(-1, 1), st.integers(0, 3)),
    max_size=4,
).map(_lay_out)
_REST = st.binary(max_size=8192) | st.just(bytes(16 * 512))


@settings(max_examples=300, deadline=None)
@given(st.lists(ENTRY, max_size=4) | _LAID_OUT, _REST)
def test_garbage_mbrs_raise_image_error_only(
    entries: list[tuple[int, int, int]], rest: bytes
) -> None:
    disk = mbr(*entries) + rest
    assume(all(kind != 0xEE for kind, _, _ in entries))  # protective: the GPT tests above
    # What the table must be: the entries of a type and a size, in slot order, each at the
    # sectors it names; refused when one starts on the MBR itself, two overlap, or the disk
    # is too short for one.
    used = [
        (slot, start * 512, (start + count) * 512, f"0x{kind:02x}")
        for slot, (kind, start, count) in enumerate(entries, start=1)
        if kind and count
    ]
    spans = sorted((start, end) for _, start, end, _ in used)
    refused = (
        any(start == 0 for _, start, _, _ in used)
        or any(b[0] < a[1] for a, b in itertools.pairwise(spans))
        or any(end > len(disk) for _, _, end, _ in used)
    )
    if refused:
        with pytest.raises(ImageError):
            read_table(Region(io.BytesIO(disk), 0, len(disk)))
        return
    table = sound(read_table(Region(io.BytesIO(disk), 0, len(disk))), disk)
    assert table is not None
    assert table.kind == "mbr"
    got = [(p.index, p.start_bytes, p.end_bytes, p.type) for p in table.partitions]
    assert got == used
