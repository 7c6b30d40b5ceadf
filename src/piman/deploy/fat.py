"""A read-only FAT12/16/32 reader over a :class:`~piman.deploy.partitions.Region`.

``probe(region)`` says whether a region starts with a FAT boot sector; ``FatVolume.open(region)``
reads the boot sector and the first FAT; then :meth:`FatVolume.entries` lists every file and
directory (VFAT long names), :meth:`FatVolume.read` returns a file's bytes by path (matched
case-insensitively, as FAT does, on the long or the short name) and
:meth:`FatVolume.allocation` gives the byte ranges of the region that hold data. Every failure
raises :class:`~piman.deploy.errors.ImageError` and nothing else.

Theory of operation.

- Geometry (Microsoft's FAT specification, "FAT: General Overview of On-Disk Format" §3–4):
  reserved sectors, then ``fats`` copies of the FAT, then (FAT12/16) the fixed root directory,
  then the data clusters numbered from 2. As Linux does, a BPB whose 16-bit FAT size is 0 is
  FAT32; otherwise fewer than 4085 clusters is FAT12, else FAT16. The cluster count is clamped to
  what the FAT can describe. The filesystem must fit in the region.
- A cluster chain follows FAT entries from a first cluster until an end-of-chain mark
  (≥ 0xff8, 0xfff8, 0x0ffffff8). Free, reserved, bad or out-of-range entries inside a chain,
  and loops, are corruption. A file's chain must cover its size; a longer chain is tolerated
  (Linux reads only what the size asks for).
- A directory is a sequence of 32-byte entries ending at the first entry whose name starts with
  0x00 or at the end of its chain. Deleted entries (0xe5) and the volume label are skipped.
  Long-name entries (attribute 0x0f) are collected in descending order and apply to the next
  short entry when their checksum matches its 8.3 name; otherwise the short name is used, in
  lower case where the NT case bits say so. Two entries of one directory whose names are
  equal ignoring case are corruption, as are names holding ``/`` or NUL, and a directory
  cluster reached twice.
- Allocation: every byte before the data area (reserved sectors, FATs, fixed root directory),
  and every cluster whose FAT entry is not 0. Bad clusters (marked in the FAT) count as in use,
  which is harmless: they hold nothing that matters and writing them is what a copy does.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import groupby
from typing import Literal

from piman.deploy.errors import ImageError
from piman.deploy.partitions import Extent, Region

__all__ = ["FatEntry", "FatVolume", "probe"]

_BPB = struct.Struct("<3s8sHBHBHHBHHHII")  # jump, OEM, bytes/sector … total sectors (32-bit)
_DIRENT = struct.Struct("<11sBBBHHHHHHHI")  # name, attr, NT case, …, cluster hi, …, lo, size
_ATTR_LFN, _ATTR_DIR, _ATTR_LABEL = 0x0F, 0x10, 0x08
_MAX_DIR_BYTES = 65536 * 32  # the specification's limit on one directory
_FAT_BITS = {"FAT12": 12, "FAT16": 16, "FAT32": 32}
_EOC = {"FAT12": 0xFF8, "FAT16": 0xFFF8, "FAT32": 0x0FFFFFF8}
_RUN_BYTES = 4 << 20
_U16 = "H"
_U32 = "I" if array("I").itemsize == 4 else "L"


@dataclass(frozen=True, slots=True)
class FatEntry:
    """A file or directory of a FAT volume."""

    path: str  # "/"-separated from the root, no leading "/": "overlays/vc4-kms-v3d.dtbo"
    size: int  # bytes; 0 for directories
    is_dir: bool
    first_cluster: int  # 0 for an empty file
    short_name: str  # the 8.3 name as stored: "VC4-KM~1.DTB"


def probe(region: Region) -> bool:
    """Whether ``region`` starts with a plausible FAT boot sector (jump, BPB values, ``55 aa``)."""
    if region.size < 512:
        return False
    boot = region.read(0, 512)
    jump, _oem, bps, spc, reserved, fats, *_rest = _BPB.unpack_from(boot)
    return (
        boot[510:512] == b"\x55\xaa"
        and (jump[0] == 0xE9 or (jump[0] == 0xEB and jump[2] == 0x90))
        and bps in (512, 1024, 2048, 4096)
        and spc in (1, 2, 4, 8, 16, 32, 64, 128)
        and reserved >= 1
        and 1 <= fats <= 4
        and boot[21] in (0xF0, *range(0xF8, 0x100))
    )


class FatVolume:
    """An open FAT volume. Build it with :meth:`open`."""

    def __init__(
        self,
        region: Region,
        kind: Literal["FAT12", "FAT16", "FAT32"],
        sector: int,
        cluster: int,
        data_start: int,
        root_dir: Extent | None,
        root_cluster: int,
        clusters: int,
        fat: array[int],
        label: str,
    ) -> None:
        self.region = region
        self.kind: Literal["FAT12", "FAT16", "FAT32"] = kind
        self.sector_size = sector
        self.cluster_size = cluster
        self.data_start = data_start  # byte where cluster 2 starts
        self._root_dir = root_dir  # FAT12/16: the fixed root directory
        self._root_cluster = root_cluster  # FAT32
        self.clusters = clusters  # data clusters: numbers 2 … clusters + 1
        self._fat = fat
        self.label = label
        self._entries: tuple[FatEntry, ...] | None = None

    @classmethod
    def open(cls, region: Region) -> FatVolume:
        """Read the boot sector and the first FAT of the volume at the start of ``region``."""
        if not probe(region):
            raise ImageError("no FAT boot sector (jump, BPB or 55 aa signature missing)")
        boot = region.read(0, 512)
        (_jump, _oem, bps, spc, reserved, fats, root_entries, total16, _media, fat16, _spt,
         _heads, _hidden, total32) = _BPB.unpack_from(boot)  # fmt: skip
        fat32_size, root_cluster = struct.unpack_from("<I4xI", boot, 36)
        fat_sectors = fat16 or fat32_size
        total = total16 or total32
        root_sectors = 0 if fat16 == 0 else -(-root_entries * 32 // bps)
        data_sector = reserved + fats * fat_sectors + root_sectors
        if fat_sectors == 0 or total <= data_sector:
            raise ImageError("the FAT boot sector describes no data area")
        if total * bps > region.size:
            raise ImageError(
                f"the FAT filesystem is {total * bps} bytes but its partition holds {region.size}"
            )
        clusters = (total - data_sector) // spc
        kind: Literal["FAT12", "FAT16", "FAT32"]
        kind = "FAT32" if fat16 == 0 else ("FAT12" if clusters < 4085 else "FAT16")
        clusters = min(clusters, fat_sectors * bps * 8 // _FAT_BITS[kind] - 2)
        if clusters < 1:
            raise ImageError(f"the {kind} table is too small to describe any cluster")
        fat = _decode_fat(region.read(reserved * bps, _fat_bytes(kind, clusters + 2)), kind)
        ext = 64 if kind == "FAT32" else 36  # the extended BPB: drive, reserved, 0x29, id, label
        label = ""
        if boot[ext + 2] == 0x29 and boot[ext + 7 : ext + 18] != b"NO NAME    ":
            label = boot[ext + 7 : ext + 18].decode("cp437").rstrip()
        root_dir = None
        if kind != "FAT32":
            start = (reserved + fats * fat_sectors) * bps
            root_dir = (start, start + root_sectors * bps)
        elif not 2 <= root_cluster < clusters + 2:
            raise ImageError(f"the FAT32 root directory cluster {root_cluster} does not exist")
        return cls(region, kind, bps, bps * spc, data_sector * bps, root_dir, root_cluster,
                   clusters, fat, label)  # fmt: skip

    # -- clusters ---------------------------------------------------------------------------

    def chain(self, first: int, what: str) -> Iterator[int]:
        """The clusters of the chain starting at ``first``; ``what`` names it in errors."""
        eoc, seen, cluster = _EOC[self.kind], set(), first
        while True:
            if not 2 <= cluster < self.clusters + 2:
                raise ImageError(f"the cluster chain of {what} reaches cluster {cluster}")
            if cluster in seen:
                raise ImageError(f"the cluster chain of {what} loops")
            seen.add(cluster)
            yield cluster
            cluster = self._fat[cluster] & 0x0FFFFFFF
            if cluster >= eoc:
                return

    def _runs(self, first: int, needed: int, what: str) -> Iterator[tuple[int, int]]:
        """(first cluster, count) of contiguous runs of a chain, at most ``needed`` clusters in
        all and at most 4 MiB per run."""
        limit = max(1, _RUN_BYTES // self.cluster_size)
        run_start, run_len = first, 0
        for taken, cluster in enumerate(self.chain(first, what), start=1):
            if run_len and (cluster != run_start + run_len or run_len == limit):
                yield run_start, run_len
                run_start, run_len = cluster, 0
            run_len += 1
            if taken == needed:
                break
        yield run_start, run_len

    def _cluster_at(self, cluster: int) -> int:
        return self.data_start + (cluster - 2) * self.cluster_size

    # -- directories ------------------------------------------------------------------------

    def entries(self) -> tuple[FatEntry, ...]:
        """Every file and directory, parents before children, in directory order."""
        if self._entries is None:
            self._entries = tuple(self._walk())
        return self._entries

    def files(self) -> tuple[FatEntry, ...]:
        """Every file (not directories)."""
        return tuple(e for e in self.entries() if not e.is_dir)

    def find(self, path: str) -> FatEntry | None:
        """The entry at ``path`` ("/"-separated; leading "/" optional; any case), or ``None``."""
        wanted = path.strip("/").casefold()
        for entry in self.entries() if wanted else ():
            if entry.path.casefold() == wanted:
                return entry
        return None

    def _walk(self) -> Iterator[FatEntry]:
        seen: set[int] = set()
        if self._root_dir is not None:
            start, end = self._root_dir
            root = self.region.read(start, end - start)
        else:
            root = self._directory_bytes(self._root_cluster, "", seen)
        pending: deque[tuple[str, bytes]] = deque([("", root)])
        while pending:
            parent, data = pending.popleft()
            names: set[str] = set()
            for name, short, attr, first, size in _parse_directory(data, self.kind == "FAT32"):
                path = f"{parent}{name}"
                if name.casefold() in names:
                    raise ImageError(f"the directory /{parent} holds {name!r} twice")
                names.add(name.casefold())
                if attr & _ATTR_DIR:
                    content = self._directory_bytes(first, path, seen) if first else b""
                    pending.append((f"{path}/", content))
                    yield FatEntry(path, 0, True, first, short)
                else:
                    yield FatEntry(path, size, False, first, short)

    def _directory_bytes(self, first: int, path: str, seen: set[int]) -> bytes:
        """A directory's clusters; ``seen`` holds every directory cluster read so far."""
        parts = []
        for start, count in self._runs(first, _MAX_DIR_BYTES // self.cluster_size + 1, f"/{path}"):
            for cluster in range(start, start + count):
                if cluster in seen:
                    raise ImageError(f"the directory /{path} shares clusters with another")
                seen.add(cluster)
            parts.append(self.region.read(self._cluster_at(start), count * self.cluster_size))
        data = b"".join(parts)
        if len(data) > _MAX_DIR_BYTES:
            raise ImageError(f"the directory /{path} is longer than FAT allows")
        return data

    # -- files ------------------------------------------------------------------------------

    def chunks(self, entry: FatEntry) -> Iterator[bytes]:
        """The bytes of a file, in runs of contiguous clusters (at most 4 MiB each)."""
        if entry.is_dir:
            raise ImageError(f"/{entry.path} is a directory")
        left = entry.size
        if left == 0:
            return
        if entry.first_cluster == 0:
            raise ImageError(f"/{entry.path} has {left} bytes but no clusters")
        needed = -(-left // self.cluster_size)
        for start, count in self._runs(entry.first_cluster, needed, f"/{entry.path}"):
            length = min(count * self.cluster_size, left)
            yield self.region.read(self._cluster_at(start), length)
            left -= length
        if left:
            raise ImageError(f"the cluster chain of /{entry.path} is shorter than its size")

    def read(self, path: str) -> bytes:
        """The bytes of the file at ``path`` (matched as :meth:`find` does), all in memory."""
        entry = self.find(path)
        if entry is None:
            raise ImageError(f"/{path.strip('/')}: no such file")
        return b"".join(self.chunks(entry))

    # -- allocation -------------------------------------------------------------------------

    def allocation(self) -> tuple[Extent, ...]:
        """Byte ranges of the region in use: everything before the data area, then every
        cluster whose FAT entry is not 0 (FAT32's reserved top bits included). Sorted, merged."""
        ranges: list[Extent] = [(0, self.data_start)]
        cluster = 2
        for used, run in groupby(self._fat[2 : self.clusters + 2], key=bool):
            length = sum(1 for _ in run)
            if used:
                start = self._cluster_at(cluster)
                end = start + length * self.cluster_size
                if start == ranges[-1][1]:
                    ranges[-1] = (ranges[-1][0], end)
                else:
                    ranges.append((start, end))
            cluster += length
        return tuple(ranges)


def _fat_bytes(kind: str, entries: int) -> int:
    return {"FAT12": (entries * 3 + 1) // 2, "FAT16": entries * 2, "FAT32": entries * 4}[kind]


def _decode_fat(raw: bytes, kind: str) -> array[int]:
    """The FAT as one integer per entry, exactly as stored (FAT32's top four bits included)."""
    if kind == "FAT12":
        padded = raw + b"\0"
        return array(_U32, ((padded[n + n // 2] | padded[n + n // 2 + 1] << 8) >> (4 * (n & 1))
                           & 0xFFF for n in range(len(raw) * 2 // 3)))  # fmt: skip
    values = array(_U16 if kind == "FAT16" else _U32)
    values.frombytes(raw)
    if sys.byteorder == "big":
        values.byteswap()
    return values


def _short_name(raw: bytes, case: int) -> tuple[str, str]:
    """(as stored "NAME.EXT", as shown with the NT lower-case bits applied)."""
    raw = (b"\xe5" + raw[1:]) if raw[0] == 0x05 else raw
    base, ext = raw[:8].decode("cp437").rstrip(), raw[8:].decode("cp437").rstrip()
    stored = f"{base}.{ext}" if ext else base
    base = base.lower() if case & 0x08 else base
    ext = ext.lower() if case & 0x10 else ext
    return stored, (f"{base}.{ext}" if ext else base)


def _lfn_checksum(raw: bytes) -> int:
    total = 0
    for byte in raw:
        total = (((total & 1) << 7) + (total >> 1) + byte) & 0xFF
    return total


def _parse_directory(data: bytes, fat32: bool) -> Iterator[tuple[str, str, int, int, int]]:
    """(name, short name, attributes, first cluster, size) of each live entry but . and .."""
    pieces: list[bytes] = []
    following, checksum = -1, -1  # the order the next long-name entry must have
    for at in range(0, len(data) - 31, 32):
        name, attr, case, *_times, hi, _wtime, _wdate, lo, size = _DIRENT.unpack_from(data, at)
        if name[0] == 0x00:
            return
        if name[0] == 0xE5 or (attr & _ATTR_LABEL and attr & 0x3F != _ATTR_LFN):
            pieces, following = [], -1
            continue
        if attr & 0x3F == _ATTR_LFN:
            order = name[0] & 0x1F
            if name[0] & 0x40:
                pieces, following, checksum = [], order, data[at + 13]
            if order and order == following and data[at + 13] == checksum:
                part = data[at + 1 : at + 11] + data[at + 14 : at + 26] + data[at + 28 : at + 32]
                pieces.insert(0, part)
                following -= 1
            else:
                pieces, following = [], -1
            continue
        stored, shown = _short_name(name, case)
        if following == 0 and pieces and _lfn_checksum(name) == checksum:
            shown = b"".join(pieces).decode("utf-16-le", errors="replace").split("\0", 1)[0]
        pieces, following = [], -1
        if stored in (".", ".."):
            continue
        if not shown or "/" in shown or "\0" in shown or shown in (".", ".."):
            raise ImageError(f"a directory entry has an invalid name {shown!r}")
        yield shown, stored, attr, (hi << 16 | lo) if fat32 else lo, size
