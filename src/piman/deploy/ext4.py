"""Which blocks of an ext2/3/4 filesystem are in use, from its superblock, group descriptors and
block bitmaps (read-only, over a :class:`~piman.deploy.partitions.Region`).

``probe(region)`` says whether the superblock magic is there ("not ext" otherwise);
``read_superblock(region)`` decodes and checks it; ``allocation(region)`` gives the byte ranges
of the region that hold data. Every failure raises :class:`~piman.deploy.errors.ImageError` and
nothing else. Layout and checksums follow the kernel's ``Documentation/filesystems/ext4``
(``ondisk/globals``, ``group_descr``, ``checksums``) and e2fsprogs' ``openfs.c``.

Theory of operation. The answer must never leave out a block the filesystem needs: a block we
cannot prove free counts as used. So:

- The superblock must be sane (block size 1 KiB–64 KiB, groups that cover ``blocks_count``, a
  filesystem no larger than its partition, a matching checksum under ``metadata_csum``) or the
  image is corrupt (ImageError).
- The whole filesystem counts as in use when the journal needs recovery (``needs_recovery``:
  the bitmaps on disk may be older than the data), when it is an external journal, or when it
  has an incompatible or read-only-compatible feature this module does not know (the meaning
  of its bitmaps is then uncertain).
- Group descriptors are found as e2fsprogs finds them (``meta_bg`` included), 32 or
  ``s_desc_size`` bytes each (``64bit``). A group counts as fully in use when its descriptor's
  checksum fails (``metadata_csum``: crc32c; ``gdt_csum``: crc16), when it is flagged
  ``BLOCK_UNINIT`` (its bitmap was never written; the kernel would compute it), when its bitmap
  lies outside the filesystem, or when the bitmap's own checksum fails (``metadata_csum``).
- Otherwise a set bit of the bitmap marks a block (a cluster under ``bigalloc``) in use. The
  bitmaps cover every metadata block of a group (superblock backups, descriptors, reserved GDT,
  bitmaps, inode tables wherever ``flex_bg`` put them, the journal): nothing is added by hand,
  except the first 2 KiB of the region (boot block and primary superblock) always.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Literal

from piman.deploy.errors import ImageError
from piman.deploy.partitions import Extent, Region

__all__ = ["ExtAllocation", "ExtSuperblock", "allocation", "probe", "read_superblock"]

_MAGIC = 0xEF53
_COMPAT_JOURNAL, _COMPAT_SPARSE_SUPER2 = 0x4, 0x200
_INCOMPAT_RECOVER, _INCOMPAT_JOURNAL_DEV, _INCOMPAT_META_BG = 0x4, 0x8, 0x10
_INCOMPAT_EXTENTS, _INCOMPAT_64BIT, _INCOMPAT_FLEX_BG, _INCOMPAT_CSUM_SEED = (
    0x40,
    0x80,
    0x200,
    0x2000,
)
# filetype, recover, meta_bg, extents, 64bit, mmp, flex_bg, ea_inode, dirdata, csum_seed,
# largedir, inline_data, encrypt, casefold: none changes what a block bitmap means.
_INCOMPAT_KNOWN = 0x2 | 0x4 | 0x10 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x1000 | 0x2000
_INCOMPAT_KNOWN |= 0x4000 | 0x8000 | 0x10000 | 0x20000
_RO_SPARSE_SUPER, _RO_GDT_CSUM, _RO_BIGALLOC, _RO_METADATA_CSUM = 0x1, 0x10, 0x200, 0x400
# sparse_super, large_file, btree_dir, huge_file, gdt_csum, dir_nlink, extra_isize, quota,
# bigalloc, metadata_csum, readonly, project, shared_blocks, verity, orphan_present (not the
# snapshot or replica experiments, whose blocks we cannot vouch for).
_RO_KNOWN = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x20 | 0x40 | 0x100 | 0x200 | 0x400 | 0x1000
_RO_KNOWN |= 0x2000 | 0x4000 | 0x8000 | 0x10000
_BG_BLOCK_UNINIT = 0x2
_SET_BITS = re.compile(rb"\xff+|[^\x00]")


@dataclass(frozen=True, slots=True)
class ExtSuperblock:
    """What the superblock says about the layout (only what allocation needs, plus names)."""

    version: Literal["ext2", "ext3", "ext4"]
    block_size: int
    cluster_ratio: int  # blocks per cluster (bigalloc), else 1
    blocks_count: int
    first_data_block: int
    blocks_per_group: int
    group_count: int
    desc_size: int  # 32, or s_desc_size under 64bit
    compat: int
    incompat: int
    ro_compat: int
    first_meta_bg: int
    backup_bgs: tuple[int, int]  # sparse_super2
    inodes_per_group: int
    inode_size: int
    reserved_gdt_blocks: int  # room for the descriptor table to grow (resize_inode)
    csum_seed: int  # crc32c seed of metadata checksums
    uuid: bytes
    label: str

    @property
    def size_bytes(self) -> int:
        return self.blocks_count * self.block_size


@dataclass(frozen=True, slots=True)
class ExtAllocation:
    """The byte ranges of the filesystem's region in use, and how sure we are of them."""

    ranges: tuple[Extent, ...]  # sorted, merged, relative to the region
    uncertain_groups: tuple[int, ...]  # groups counted fully in use for want of a trusted bitmap
    whole: bool  # the whole filesystem counted in use (journal to replay, unknown feature)


def probe(region: Region) -> bool:
    """Whether the ext2/3/4 superblock magic sits at byte 1080 of ``region``."""
    return region.size >= 2048 and region.read(1080, 2) == struct.pack("<H", _MAGIC)


def read_superblock(region: Region) -> ExtSuperblock:
    """The superblock at byte 1024 of ``region``, checked for sanity."""
    if not probe(region):
        raise ImageError("not an ext2/3/4 filesystem (no superblock magic)")
    sb = region.read(1024, 1024)
    (_inodes, blocks_lo, _r, _free, _free_inodes, first_data, log_block, log_cluster,
     per_group, clusters_per_group) = struct.unpack_from("<10I", sb)  # fmt: skip
    compat, incompat, ro_compat = struct.unpack_from("<3I", sb, 0x5C)
    stored_crc = struct.unpack_from("<I", sb, 0x3FC)[0]
    if ro_compat & _RO_METADATA_CSUM and crc32c(sb[:0x3FC]) != stored_crc:
        raise ImageError("the ext4 superblock's checksum does not match: it is corrupt")
    if log_block > 6 or (ro_compat & _RO_BIGALLOC and not log_block <= log_cluster <= 29):
        raise ImageError(f"the ext superblock gives an impossible block size (log {log_block})")
    block_size = 1024 << log_block
    ratio = 1 << (log_cluster - log_block) if ro_compat & _RO_BIGALLOC else 1
    blocks = blocks_lo
    desc_size = 32
    if incompat & _INCOMPAT_64BIT:
        blocks |= struct.unpack_from("<I", sb, 0x150)[0] << 32
        desc_size = struct.unpack_from("<H", sb, 0xFE)[0]
        if desc_size < 64 or desc_size > block_size or desc_size & (desc_size - 1):
            raise ImageError(f"the ext superblock gives an impossible descriptor size {desc_size}")
    if ratio > 1:
        per_group = clusters_per_group * ratio
    if per_group < 8 or per_group % 8 or per_group > 8 * block_size * ratio or first_data >= blocks:
        raise ImageError("the ext superblock describes impossible block groups")
    if blocks * block_size > region.size:
        raise ImageError(
            f"the ext filesystem is {blocks * block_size} bytes but its partition holds "
            f"{region.size}"
        )
    uuid = sb[0x68:0x78]
    seed = struct.unpack_from("<I", sb, 0x270)[0]
    version: Literal["ext2", "ext3", "ext4"] = "ext2"
    if incompat & (_INCOMPAT_EXTENTS | _INCOMPAT_64BIT | _INCOMPAT_FLEX_BG):
        version = "ext4"
    elif compat & _COMPAT_JOURNAL:
        version = "ext3"
    return ExtSuperblock(
        version=version,
        block_size=block_size,
        cluster_ratio=ratio,
        blocks_count=blocks,
        first_data_block=first_data,
        blocks_per_group=per_group,
        group_count=-(-(blocks - first_data) // per_group),
        desc_size=desc_size,
        compat=compat,
        incompat=incompat,
        ro_compat=ro_compat,
        first_meta_bg=struct.unpack_from("<I", sb, 0x104)[0],
        backup_bgs=struct.unpack_from("<2I", sb, 0x24C),
        inodes_per_group=struct.unpack_from("<I", sb, 0x28)[0],
        inode_size=struct.unpack_from("<H", sb, 0x58)[0]
        if struct.unpack_from("<I", sb, 0x4C)[0]
        else 128,
        reserved_gdt_blocks=struct.unpack_from("<H", sb, 0xCE)[0],
        csum_seed=seed if incompat & _INCOMPAT_CSUM_SEED else crc32c(uuid),
        uuid=uuid,
        label=sb[0x78:0x88].split(b"\0", 1)[0].decode("utf-8", errors="replace"),
    )


def allocation(region: Region) -> ExtAllocation:
    """The byte ranges of ``region`` that the ext filesystem in it uses (see the module doc)."""
    sb = read_superblock(region)
    fs_bytes = sb.size_bytes
    unknown = sb.incompat & ~_INCOMPAT_KNOWN or sb.ro_compat & ~_RO_KNOWN
    if unknown or sb.incompat & (_INCOMPAT_RECOVER | _INCOMPAT_JOURNAL_DEV):
        return ExtAllocation(((0, fs_bytes),), (), True)
    head = max(2048, (sb.first_data_block + 1) * sb.block_size)
    ranges: list[Extent] = [(0, min(fs_bytes, head))]
    uncertain: list[int] = []
    tables: list[tuple[int, int]] | None = None  # every group's bitmaps and inode table
    for group in range(sb.group_count):
        first = sb.first_data_block + group * sb.blocks_per_group
        last = min(first + sb.blocks_per_group, sb.blocks_count)  # exclusive
        used = _group_usage(region, sb, group, first, last)
        if used is _UNINIT:
            if tables is None:
                tables = _group_tables(region, sb)
            used = _uninit_usage(sb, group, first, last, tables)
        if used is None:
            uncertain.append(group)
            used = [(first, last)]
        for start, end in used:
            _append(ranges, start * sb.block_size, end * sb.block_size)
    return ExtAllocation(tuple(ranges), tuple(uncertain), False)


_UNINIT: list[tuple[int, int]] = []  # _group_usage's answer for a BLOCK_UNINIT group


def _group_usage(
    region: Region, sb: ExtSuperblock, group: int, first: int, last: int
) -> list[tuple[int, int]] | None:
    """Block ranges ``[start, end)`` in use in one group, ``None`` when its bitmap cannot be
    trusted, or :data:`_UNINIT` when the group's bitmap was never written (BLOCK_UNINIT)."""
    desc = _descriptor(region, sb, group)
    if desc is None:
        return None
    flags = struct.unpack_from("<H", desc, 0x12)[0]
    bitmap_block = struct.unpack_from("<I", desc, 0)[0]
    if sb.desc_size >= 64:
        bitmap_block |= struct.unpack_from("<I", desc, 0x20)[0] << 32
    if flags & _BG_BLOCK_UNINIT:
        return _UNINIT
    if not sb.first_data_block <= bitmap_block < sb.blocks_count:
        return None
    clusters = sb.blocks_per_group // sb.cluster_ratio
    bitmap = region.read(bitmap_block * sb.block_size, clusters // 8)
    if sb.ro_compat & _RO_METADATA_CSUM:
        crc = crc32c(bitmap, sb.csum_seed)
        stored = struct.unpack_from("<H", desc, 0x18)[0]
        if sb.desc_size >= 0x3C:
            stored |= struct.unpack_from("<H", desc, 0x38)[0] << 16
        else:
            crc &= 0xFFFF
        if crc != stored:
            return None
    used: list[tuple[int, int]] = []
    ratio = sb.cluster_ratio
    for match in _SET_BITS.finditer(bitmap):
        at = match.start()
        if len(match.group()) > 1 or bitmap[at] == 0xFF:
            bits = [(at * 8, match.end() * 8)]
        else:
            bits = [(at * 8 + i, at * 8 + i + 1) for i in range(8) if bitmap[at] >> i & 1]
        for lo, hi in bits:
            start, end = first + lo * ratio, min(first + hi * ratio, last)
            if start < end:
                if used and used[-1][1] == start:
                    used[-1] = (used[-1][0], end)
                else:
                    used.append((start, end))
    return used


def _group_tables(region: Region, sb: ExtSuperblock) -> list[tuple[int, int]] | None:
    """Every group's block bitmap, inode bitmap and inode table as block ranges (flex_bg puts
    them in other groups than their own); None when a descriptor cannot be trusted."""
    table_blocks = -(-sb.inodes_per_group * sb.inode_size // sb.block_size)
    out: list[tuple[int, int]] = []
    for group in range(sb.group_count):
        desc = _descriptor(region, sb, group)
        if desc is None:
            return None
        block_bitmap, inode_bitmap, inode_table = struct.unpack_from("<3I", desc, 0)
        if sb.desc_size >= 64:
            hi = struct.unpack_from("<3I", desc, 0x20)
            block_bitmap |= hi[0] << 32
            inode_bitmap |= hi[1] << 32
            inode_table |= hi[2] << 32
        out += [(block_bitmap, block_bitmap + 1), (inode_bitmap, inode_bitmap + 1),
                (inode_table, inode_table + table_blocks)]  # fmt: skip
    return out


def _uninit_usage(
    sb: ExtSuperblock, group: int, first: int, last: int, tables: list[tuple[int, int]] | None
) -> list[tuple[int, int]] | None:
    """What a BLOCK_UNINIT group holds, as the kernel's ``ext4_init_block_bitmap`` computes
    it: its superblock backup, descriptor table and reserved descriptor blocks when it has a
    backup, and whatever group's bitmaps and inode table lie in it. None (the whole group)
    under meta_bg or bigalloc, whose layouts this does not compute, or untrusted descriptors."""
    if tables is None or sb.incompat & _INCOMPAT_META_BG or sb.cluster_ratio > 1:
        return None
    spans: list[tuple[int, int]] = []
    if _has_superblock(sb, group):
        gdt = -(-sb.group_count * sb.desc_size // sb.block_size)
        spans.append((first, first + 1 + gdt + sb.reserved_gdt_blocks))
    spans += [(a, b) for a, b in tables if a < last and b > first]
    used: list[tuple[int, int]] = []
    for a, b in sorted((max(a, first), min(b, last)) for a, b in spans):
        if used and a <= used[-1][1]:
            used[-1] = (used[-1][0], max(b, used[-1][1]))
        else:
            used.append((a, b))
    return used


def _descriptor(region: Region, sb: ExtSuperblock, group: int) -> bytes | None:
    """Group ``group``'s descriptor, or ``None`` when it fails its checksum."""
    per_block = sb.block_size // sb.desc_size
    index, slot = divmod(group, per_block)
    adjust = 1 if index == 0 and sb.block_size == 1024 and sb.cluster_ratio > 1 else 0
    if not sb.incompat & _INCOMPAT_META_BG or index < sb.first_meta_bg:
        block = sb.first_data_block + index + 1 + adjust
    else:
        leader = per_block * index
        block = sb.first_data_block + leader * sb.blocks_per_group + adjust
        block += 1 if _has_superblock(sb, leader) else 0
    if block >= sb.blocks_count:
        return None
    desc = region.read(block * sb.block_size + slot * sb.desc_size, sb.desc_size)
    stored = struct.unpack_from("<H", desc, 0x1E)[0]
    number = struct.pack("<I", group)
    rest = desc[0x20:] if sb.incompat & _INCOMPAT_64BIT else b""
    if sb.ro_compat & _RO_METADATA_CSUM:
        crc = crc32c(desc[:0x1E] + b"\0\0" + rest, crc32c(number, sb.csum_seed)) & 0xFFFF
    elif sb.ro_compat & _RO_GDT_CSUM:
        crc = crc16(desc[:0x1E] + rest, crc16(number, crc16(sb.uuid)))
    else:
        return desc
    return desc if crc == stored else None


def _has_superblock(sb: ExtSuperblock, group: int) -> bool:
    """Whether ``group`` holds a superblock backup (e2fsprogs' ``ext2fs_bg_has_super``)."""
    if group == 0:
        return True
    if sb.compat & _COMPAT_SPARSE_SUPER2:
        return group in sb.backup_bgs
    if group <= 1 or not sb.ro_compat & _RO_SPARSE_SUPER:
        return True
    if not group & 1:
        return False
    for base in (3, 5, 7):
        power = base
        while power < group:
            power *= base
        if power == group:
            return True
    return False


def _append(ranges: list[Extent], start: int, end: int) -> None:
    if ranges and start <= ranges[-1][1]:
        ranges[-1] = (ranges[-1][0], max(end, ranges[-1][1]))
    else:
        ranges.append((start, end))


def _table(poly: int, width: int) -> tuple[int, ...]:
    table = []
    for n in range(256):
        value = n
        for _ in range(8):
            value = (value >> 1) ^ poly if value & 1 else value >> 1
        table.append(value & ((1 << width) - 1))
    return tuple(table)


_CRC32C = _table(0x82F63B78, 32)  # Castagnoli, reflected
_CRC16 = _table(0xA001, 16)  # CRC-16/ANSI (IBM), reflected: Linux's lib/crc16.c


def crc32c(data: bytes, seed: int = 0xFFFFFFFF) -> int:
    """The kernel's ``crc32c(seed, data)`` as ext4 uses it: no final inversion."""
    crc, table = seed, _CRC32C
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


def crc16(data: bytes, seed: int = 0xFFFF) -> int:
    """Linux's ``crc16(seed, data)`` (``gdt_csum`` group descriptors)."""
    crc, table = seed, _CRC16
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc
