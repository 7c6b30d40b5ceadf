"""Block maps (bmap format 2.0, as Debian's ``bmaptool`` reads and writes them).

``compute(raw, info) -> Bmap`` decides which blocks of a raw image must be written to a card and
hashes them; ``write(bmap, path)`` and ``read(path)`` store and load the XML; ``mapped_bytes``
is what a writer copies. ``bmaptool copy --bmap F IMAGE DEST`` accepts what ``write`` makes.

Theory of operation (what ``compute`` maps, in bytes, before rounding out to blocks):

1. The partition table's own bytes (the MBR sector; the protective MBR, GPT headers and both
   entry arrays), always.
2. Inside a FAT or ext4 partition: exactly what its allocation says (:meth:`FatVolume.allocation`,
   :func:`ext4.allocation`), whether or not those bytes are holes in the stored file: a hole
   reads as zeros, and an allocated block of zeros must overwrite what the card held.
3. Inside any other partition (unknown filesystem, swap, an extended partition): every byte,
   holes included, since a zero block of a filesystem we cannot read may matter.
4. Outside the partitions, only the head (blocks ``[0, split_at_block)``: partition table and
   bootloader gap) is mapped, and only where the file holds data (``SEEK_DATA``/``SEEK_HOLE``):
   these are the regions no filesystem claims, where a hole means "nothing here". The rest of
   the unpartitioned space is not mapped. An image without a partition table is all "outside":
   its head and every data extent beyond it are mapped.

Blocks (``block_size`` bytes, the last one possibly short) are mapped when any byte of them is.
Runs of mapped blocks become ranges that never straddle ``split_at_block`` (the installer writes
the head last) and hold at most ``max_range_blocks`` blocks. Each range carries the SHA-256 of
its bytes, up to the end of the image for the last block (what ``bmaptool`` hashes).

The file's ``BmapFileChecksum`` is the SHA-256 of the whole file with that field's value
replaced by 64 ``0`` characters, as ``bmaptool`` checks it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from io import BufferedReader
from pathlib import Path
from typing import BinaryIO

from piman.deploy import ext4
from piman.deploy.errors import ImageError
from piman.deploy.fat import FatVolume
from piman.deploy.images import ImageInfo
from piman.deploy.partitions import Extent, Region

__all__ = ["Bmap", "BmapRange", "compute", "mapped_bytes", "parse", "read", "render", "write"]

VERSION = "2.0"
_READ_CHUNK = 4 << 20
_MAX_FILE = 256 << 20  # a bmap of a 2 TiB image in 4 MiB ranges is about 50 MiB
_ZERO_SUM = "0" * 64
_NUMBER = re.compile(r"[0-9]{1,20}")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_CHECKSUM_FIELD = re.compile(rb"(<BmapFileChecksum>\s*)([0-9A-Fa-f]+)(\s*</BmapFileChecksum>)")


@dataclass(frozen=True, slots=True)
class BmapRange:
    """Blocks ``first`` … ``last`` (inclusive) and the SHA-256 (hex) of their bytes."""

    first: int
    last: int
    sha256: str

    @property
    def blocks(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True, slots=True)
class Bmap:
    """A block map: the image's size, the block size, and the mapped ranges in order."""

    image_size: int
    block_size: int
    ranges: tuple[BmapRange, ...]

    @property
    def blocks_count(self) -> int:
        return -(-self.image_size // self.block_size)

    @property
    def mapped_blocks(self) -> int:
        return sum(r.blocks for r in self.ranges)


def mapped_bytes(bmap: Bmap) -> int:
    """The bytes a writer copies: every mapped block, the last block of the image cut short."""
    total = bmap.mapped_blocks * bmap.block_size
    if bmap.ranges and bmap.ranges[-1].last == bmap.blocks_count - 1:
        total -= bmap.blocks_count * bmap.block_size - bmap.image_size
    return total


def compute(
    raw: Path,
    info: ImageInfo,
    *,
    block_size: int = 4096,
    max_range_blocks: int = 1024,
    split_at_block: int = 256,
) -> Bmap:
    """The block map of ``raw`` (inspected as ``info``); see the module doc for what is mapped."""
    if block_size <= 0 or block_size % 512 or max_range_blocks <= 0 or split_at_block < 0:
        raise ValueError("block_size must be a positive multiple of 512, the limits positive")
    with raw.open("rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size != info.size:
            raise ImageError(f"{raw.name}: the image changed since it was inspected")
        claimed = _claimed(raw, file, info)
        outside = _outside(info, size, split_at_block * block_size)
        data = _data_extents(file.fileno(), size)
        wanted = _union(claimed + _intersect(outside, data))
        blocks = _to_blocks(wanted, block_size)
        spans = _split(blocks, split_at_block, max_range_blocks)
        ranges = tuple(_hashed(file, spans, block_size, size))
    return Bmap(size, block_size, ranges)


def _claimed(raw: Path, file: BinaryIO, info: ImageInfo) -> list[Extent]:
    """Byte ranges mapped whatever the file holds there (rules 1–3)."""
    claimed = list(info.table.metadata) if info.table is not None else []
    for part in info.partitions:
        p = part.partition
        region = Region(file, p.start_bytes, p.size_bytes)
        try:
            if part.filesystem == "fat":
                inside = FatVolume.open(region).allocation()
            elif part.filesystem == "ext4":
                inside = ext4.allocation(region).ranges
            else:
                inside = ((0, p.size_bytes),)
        except ImageError as err:
            what = part.detail or part.filesystem
            raise err.within(f"{raw.name}: partition {p.index} ({what})") from None
        claimed += [(p.start_bytes + s, p.start_bytes + min(e, p.size_bytes)) for s, e in inside]
    return [(min(s, info.size), min(e, info.size)) for s, e in claimed]


def _outside(info: ImageInfo, size: int, head: int) -> list[Extent]:
    """Byte ranges outside every partition that rule 4 considers: the head, or everything when
    there is no partition table."""
    if info.table is None:
        return [(0, size)]
    gaps, at = [], 0
    for p in sorted((q.partition for q in info.partitions), key=lambda q: q.start_bytes):
        if p.start_bytes > at:
            gaps.append((at, p.start_bytes))
        at = max(at, p.end_bytes)
    gaps.append((at, size))
    return _intersect(gaps, [(0, min(head, size))])


def _data_extents(fd: int, size: int) -> list[Extent]:
    """Where the file holds data, by SEEK_DATA/SEEK_HOLE (all of it where they are missing)."""
    extents: list[Extent] = []
    at = 0
    while at < size:
        try:
            start = os.lseek(fd, at, os.SEEK_DATA)
        except OSError as err:
            if err.errno == errno.ENXIO:
                break
            if err.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                return [(0, size)]
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        extents.append((start, end))
        at = end
    return extents


def _union(extents: list[Extent]) -> list[Extent]:
    merged: list[Extent] = []
    for start, end in sorted(e for e in extents if e[0] < e[1]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def _intersect(left: list[Extent], right: list[Extent]) -> list[Extent]:
    """The intersection of two sorted, disjoint extent lists."""
    out: list[Extent] = []
    i = j = 0
    while i < len(left) and j < len(right):
        start, end = max(left[i][0], right[j][0]), min(left[i][1], right[j][1])
        if start < end:
            out.append((start, end))
        if left[i][1] < right[j][1]:
            i += 1
        else:
            j += 1
    return out


def _to_blocks(extents: list[Extent], block_size: int) -> list[tuple[int, int]]:
    """Blocks ``[first, last]`` touched by sorted, disjoint byte extents, merged."""
    blocks: list[tuple[int, int]] = []
    for start, end in extents:
        first, last = start // block_size, (end - 1) // block_size
        if blocks and first <= blocks[-1][1] + 1:
            blocks[-1] = (blocks[-1][0], max(last, blocks[-1][1]))
        else:
            blocks.append((first, last))
    return blocks


def _split(blocks: list[tuple[int, int]], split_at: int, cap: int) -> list[tuple[int, int]]:
    """Runs cut at ``split_at`` and into pieces of at most ``cap`` blocks."""
    spans = []
    for first, last in blocks:
        cuts = [(first, min(last, split_at - 1)), (max(first, split_at), last)]
        for lo, hi in cuts:
            for at in range(lo, hi + 1, cap):
                spans.append((at, min(at + cap - 1, hi)))
    return spans


def _hashed(
    file: BufferedReader, spans: list[tuple[int, int]], block: int, size: int
) -> list[BmapRange]:
    buffer = bytearray(_READ_CHUNK)
    view = memoryview(buffer)
    ranges = []
    for first, last in spans:
        digest = hashlib.sha256()
        at, end = first * block, min((last + 1) * block, size)
        file.seek(at)
        while at < end:
            got = file.readinto(view[: min(_READ_CHUNK, end - at)])
            if not got:
                raise ImageError(f"the image ends at byte {at}, before its mapped blocks")
            digest.update(view[:got])
            at += got
        ranges.append(BmapRange(first, last, digest.hexdigest()))
    return ranges


def render(bmap: Bmap) -> bytes:
    """The bmap file's bytes, ``BmapFileChecksum`` included."""
    mapped = mapped_bytes(bmap)
    percent = 100.0 * bmap.mapped_blocks / bmap.blocks_count if bmap.blocks_count else 0.0
    lines = [
        '<?xml version="1.0" ?>',
        "<!-- Block map of a disk image, made by piman. Only the blocks listed in BlockMap need",
        "     writing; the others hold nothing the image needs. Each Range is 'first-last'",
        "     (inclusive, in blocks) with the SHA-256 of its bytes. -->",
        f'<bmap version="{VERSION}">',
        f"    <!-- Image size: {_human(bmap.image_size)} -->",
        f"    <ImageSize> {bmap.image_size} </ImageSize>",
        f"    <BlockSize> {bmap.block_size} </BlockSize>",
        f"    <BlocksCount> {bmap.blocks_count} </BlocksCount>",
        f"    <!-- Mapped: {_human(mapped)} or {percent:.1f}% -->",
        f"    <MappedBlocksCount> {bmap.mapped_blocks} </MappedBlocksCount>",
        "    <ChecksumType> sha256 </ChecksumType>",
        "    <!-- SHA-256 of this file with the value below replaced by 64 zeros -->",
        f"    <BmapFileChecksum> {_ZERO_SUM} </BmapFileChecksum>",
        "    <BlockMap>",
    ]
    for r in bmap.ranges:
        span = f"{r.first}-{r.last}" if r.first != r.last else f"{r.first}"
        lines.append(f'        <Range chksum="{r.sha256}"> {span} </Range>')
    lines += ["    </BlockMap>", "</bmap>", ""]
    text = "\n".join(lines).encode("ascii")
    checksum = hashlib.sha256(text).hexdigest().encode("ascii")
    return text.replace(_ZERO_SUM.encode("ascii"), checksum, 1)


def write(bmap: Bmap, path: Path) -> None:
    """Write ``bmap`` to ``path`` atomically (a temporary file beside it, renamed)."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(render(bmap))
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def read(path: Path) -> Bmap:
    """Load and check a bmap file (FileNotFoundError when it is missing; ImageError when it is
    not a valid bmap 2.x with sha256 checksums on every range and a matching file checksum)."""
    with path.open("rb") as file:
        data = file.read(_MAX_FILE + 1)
    if len(data) > _MAX_FILE:
        raise ImageError(f"{path.name}: is larger than any bmap piman would read")
    try:
        return parse(data)
    except ImageError as err:
        raise err.within(path.name) from None


def parse(data: bytes) -> Bmap:
    """A bmap from the bytes of a bmap file; see :func:`read`."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as err:
        raise ImageError(f"is not a bmap file (not XML: {err})") from None
    version = root.get("version", "")
    if root.tag != "bmap" or not version.startswith("2."):
        raise ImageError(f"is not a bmap 2.x file (version {version or 'missing'})")
    fields = {}
    for name in ("ImageSize", "BlockSize", "BlocksCount", "MappedBlocksCount"):
        text = (root.findtext(name) or "").strip()
        if not _NUMBER.fullmatch(text):
            raise ImageError(f"has no valid {name}")
        fields[name] = int(text)
    if (root.findtext("ChecksumType") or "").strip() != "sha256":
        raise ImageError("uses a checksum other than sha256")
    match = _CHECKSUM_FIELD.search(data)
    if match is None or len(match.group(2)) != 64:
        raise ImageError("has no valid BmapFileChecksum")
    zeroed = data[: match.start(2)] + b"0" * 64 + data[match.end(2) :]
    if hashlib.sha256(zeroed).hexdigest() != match.group(2).decode("ascii").lower():
        raise ImageError("its BmapFileChecksum does not match: the file was changed or cut")
    image_size, block_size = fields["ImageSize"], fields["BlockSize"]
    if block_size == 0 or fields["BlocksCount"] != -(-image_size // block_size):
        raise ImageError("its BlocksCount does not match ImageSize and BlockSize")
    ranges: list[BmapRange] = []
    for element in root.iterfind("BlockMap/Range"):
        ranges.append(_parse_range(element, ranges[-1].last if ranges else -1))
    bmap = Bmap(image_size, block_size, tuple(ranges))
    if ranges and ranges[-1].last >= bmap.blocks_count:
        raise ImageError("maps blocks past the end of the image")
    if bmap.mapped_blocks != fields["MappedBlocksCount"]:
        raise ImageError("its MappedBlocksCount does not match its ranges")
    return bmap


def _parse_range(element: ET.Element, previous_last: int) -> BmapRange:
    text = (element.text or "").strip()
    first_text, _, last_text = text.partition("-")
    first_text, last_text = first_text.strip(), (last_text.strip() or first_text.strip())
    checksum = element.get("chksum", "")
    numbers = _NUMBER.fullmatch(first_text) and _NUMBER.fullmatch(last_text)
    if not numbers or not _SHA256.fullmatch(checksum):
        raise ImageError(f"has a malformed range {text!r}")
    first, last = int(first_text), int(last_text)
    if last < first or first <= previous_last:
        raise ImageError(f"has a range out of order or overlapping: {text!r}")
    return BmapRange(first, last, checksum.lower())


def _human(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    value, unit = size / 1024, "KiB"
    for bigger in ("MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"
