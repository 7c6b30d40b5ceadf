"""Partition tables of raw disk images: MBR (primary partitions) and GPT, read-only.

``read_table(region) -> PartitionTable | None`` over a :class:`Region` (a bounds-checked window
of an open file, also what the filesystem readers take). Every failure raises
:class:`~piman.deploy.errors.ImageError` and nothing else, with a message that does not name the
file (the caller adds it).

Theory of operation.

1. Sector 0 must end in ``55 aa`` and every one of its four entries must have a boot flag of
   ``0x00`` or ``0x80``; otherwise the image has no partition table (``None``: a bare filesystem,
   a blank file). An entry with type ``0x00`` or no sectors is unused.
2. An entry of type ``0xee`` makes the MBR protective: the table is the GPT whose header sits at
   LBA 1. The sector size is 512, or 4096 when the header is found at byte 4096 instead.
   The header's CRC32 and the CRC32 of its entry array must match, the header must describe
   itself as LBA 1, and entries must lie in the usable area; anything else is an ImageError.
   Entries whose type GUID is zero are unused. The backup header is not read, but the space it
   and its entry array occupy is reported as table metadata.
3. Otherwise the table is an MBR of up to four primary partitions (an extended partition is
   reported as one partition of type ``0x05``/``0x0f``/``0x85``; the logical partitions in it
   are not read). Primary partitions must not overlap each other or sector 0.
4. ``disk_bytes_needed`` is where the last thing the table describes ends (a partition, or the
   backup GPT). It must not exceed the region: a shorter file is a truncated image.

Partitions are numbered as Linux numbers them: MBR slots 1–4, GPT entry index + 1.
"""

from __future__ import annotations

import itertools
import struct
import uuid
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Literal

from piman.deploy.errors import ImageError

__all__ = [
    "GPT_PROTECTIVE",
    "Extent",
    "Partition",
    "PartitionTable",
    "Region",
    "read_table",
]

Extent = tuple[int, int]
"""A byte range ``[start, end)``."""

GPT_PROTECTIVE = 0xEE
_MBR_ENTRY = struct.Struct("<B3sB3sII")  # boot flag, CHS start, type, CHS end, LBA start, count
_GPT_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")  # UEFI 2.10 §5.3.2, 92 bytes
_GPT_ENTRY = struct.Struct("<16s16sQQQ72s")  # UEFI 2.10 §5.3.3, 128 bytes
_MAX_GPT_ARRAY = 1 << 20  # bytes; 128 entries of 128 bytes is 16 KiB


class Region:
    """A window ``[offset, offset + size)`` of an open binary file, read with bounds checks.

    :meth:`read` raises :class:`ImageError` for a read outside the window or one that the file
    cannot satisfy (it ends early), never returns short data.
    """

    __slots__ = ("file", "offset", "size")

    def __init__(self, file: BinaryIO, offset: int, size: int) -> None:
        self.file = file
        self.offset = offset
        self.size = size

    def read(self, at: int, length: int) -> bytes:
        """``length`` bytes at ``at`` (relative to the window)."""
        if at < 0 or length < 0 or at + length > self.size:
            raise ImageError(
                f"a read of {length} bytes at byte {at} falls outside its {self.size} bytes"
            )
        self.file.seek(self.offset + at)
        data = self.file.read(length)
        if len(data) != length:
            raise ImageError(f"the file ends at byte {self.offset + at + len(data)}, too early")
        return data

    def sub(self, at: int, size: int) -> Region:
        """The window ``[at, at + size)`` of this one."""
        if at < 0 or size < 0 or at + size > self.size:
            raise ImageError(f"{size} bytes at byte {at} fall outside the {self.size} bytes held")
        return Region(self.file, self.offset + at, size)


@dataclass(frozen=True, slots=True)
class Partition:
    """One partition: where it lies (bytes from the start of the disk) and what it claims to be."""

    index: int  # 1-based, as Linux numbers it (mmcblk0p<index>)
    start_bytes: int
    size_bytes: int
    type: str  # MBR: "0x0c"; GPT: the type GUID, lower case ("c12a7328-f81f-…")
    name: str  # GPT partition name; "" on MBR

    @property
    def end_bytes(self) -> int:
        return self.start_bytes + self.size_bytes


@dataclass(frozen=True, slots=True)
class PartitionTable:
    """A disk's partition table."""

    kind: Literal["mbr", "gpt"]
    partitions: tuple[Partition, ...]
    disk_bytes_needed: int  # the smallest disk that holds everything the table describes
    metadata: tuple[Extent, ...]  # the bytes the table itself occupies (MBR, GPT headers, arrays)
    disk_id: str  # MBR: "0x1234abcd"; GPT: the disk GUID


def read_table(region: Region) -> PartitionTable | None:
    """The partition table at the start of ``region``, or ``None`` when there is none."""
    if region.size < 512:
        return None
    mbr = region.read(0, 512)
    if mbr[510:512] != b"\x55\xaa":
        return None
    entries = [_MBR_ENTRY.unpack_from(mbr, 446 + 16 * i) for i in range(4)]
    if any(flag not in (0x00, 0x80) for flag, *_ in entries):
        return None
    if any(kind == GPT_PROTECTIVE for _flag, _chs, kind, _chs2, _start, _count in entries):
        table = _read_gpt(region)
    else:
        table = _read_mbr(mbr, entries)
    if table.disk_bytes_needed > region.size:
        raise ImageError(
            f"the partition table describes {table.disk_bytes_needed} bytes but the image holds "
            f"only {region.size}: it is truncated"
        )
    return table


def _read_mbr(mbr: bytes, entries: list[tuple[int, bytes, int, bytes, int, int]]) -> PartitionTable:
    partitions = []
    for slot, (_flag, _chs, kind, _chs2, start, count) in enumerate(entries, start=1):
        if kind == 0 or count == 0:
            continue
        if start == 0:
            raise ImageError(f"MBR partition {slot} starts at sector 0, over the partition table")
        partitions.append(Partition(slot, start * 512, count * 512, f"0x{kind:02x}", ""))
    _check_overlaps(partitions)
    needed = max([512, *(p.end_bytes for p in partitions)])
    disk_id = struct.unpack_from("<I", mbr, 440)[0]
    return PartitionTable("mbr", tuple(partitions), needed, ((0, 512),), f"0x{disk_id:08x}")


def _read_gpt(region: Region) -> PartitionTable:
    for sector in (512, 4096):
        if region.size >= 2 * sector and region.read(sector, 8) == b"EFI PART":
            break
    else:
        raise ImageError("the MBR is protective (type 0xee) but no GPT header follows it")
    raw = region.read(sector, _GPT_HEADER.size)
    (_sig, _rev, header_size, header_crc, _res, my_lba, alternate_lba, first_usable, last_usable,
     disk_guid, entries_lba, count, entry_size, entries_crc) = _GPT_HEADER.unpack(raw)  # fmt: skip
    if not _GPT_HEADER.size <= header_size <= sector:
        raise ImageError(f"the GPT header claims an impossible size of {header_size} bytes")
    header = bytearray(region.read(sector, header_size))
    header[16:20] = b"\0\0\0\0"
    if zlib.crc32(header) != header_crc:
        raise ImageError("the GPT header's CRC32 does not match: the header is corrupt")
    if my_lba != 1:
        raise ImageError(f"the GPT header says it sits at LBA {my_lba}, not 1")
    if entry_size < _GPT_ENTRY.size or entry_size % 8 or count * entry_size > _MAX_GPT_ARRAY:
        raise ImageError(f"the GPT entry array ({count} × {entry_size} bytes) is not valid")
    if entries_lba < 2 or not first_usable <= last_usable:
        raise ImageError("the GPT header's layout (entry array, usable area) is not valid")
    array_start, array_bytes = entries_lba * sector, count * entry_size
    if array_start + array_bytes > region.size:
        raise ImageError(
            f"the GPT entry array ends at byte {array_start + array_bytes}, past the end of the "
            f"image ({region.size} bytes): it is truncated"
        )
    array = region.read(array_start, array_bytes)
    if zlib.crc32(array) != entries_crc:
        raise ImageError("the CRC32 of the GPT entry array does not match: the table is corrupt")
    usable = (first_usable * sector, (last_usable + 1) * sector)
    for start, end in ((0, 2 * sector), (array_start, array_start + array_bytes)):
        if start < end and start < usable[1] and usable[0] < end:
            raise ImageError("the GPT header's usable sectors overlap the partition table itself")
    partitions = []
    for i in range(count):
        type_guid, _unique, first, last, _attrs, name = _GPT_ENTRY.unpack_from(
            array, i * entry_size
        )
        if type_guid == bytes(16):
            continue
        if not first_usable <= first <= last <= last_usable:
            raise ImageError(f"GPT partition {i + 1} lies outside the disk's usable sectors")
        text = name.decode("utf-16-le", errors="replace").split("\0", 1)[0]
        guid = str(uuid.UUID(bytes_le=type_guid))
        partitions.append(Partition(i + 1, first * sector, (last - first + 1) * sector, guid, text))
    _check_overlaps(partitions)
    # The backup header normally sits at the last sector, its array just before it.
    backup_end = (alternate_lba + 1) * sector
    backup = ((last_usable + 1) * sector, backup_end)
    if alternate_lba <= last_usable:
        backup = (alternate_lba * sector, backup_end)
    metadata = ((0, sector * 2), (array_start, array_start + array_bytes), backup)
    ends = [backup[1], array_start + array_bytes, *(p.end_bytes for p in partitions)]
    disk_guid_text = str(uuid.UUID(bytes_le=disk_guid))
    return PartitionTable("gpt", tuple(partitions), max(ends), metadata, disk_guid_text)


def _check_overlaps(partitions: list[Partition]) -> None:
    ordered = sorted(partitions, key=lambda p: p.start_bytes)
    for left, right in itertools.pairwise(ordered):
        if right.start_bytes < left.end_bytes:
            raise ImageError(f"partitions {left.index} and {right.index} overlap")
