"""What a raw disk image holds: partitions, filesystems, boot files, OS family, customisation.

``inspect(raw) -> ImageInfo`` reads a raw (uncompressed, possibly sparse) disk image without
mounting it; ``read_boot_file`` and ``extract_boot_files`` read the boot partition's files.
Every problem with the image raises one :class:`ImageError` whose message starts with the
file's name: ``raspios.img: partition 1 (FAT32): the cluster chain of /kernel8.img loops``.

Theory of operation.

1. The partition table (:mod:`~piman.deploy.partitions`) must fit the file: a partition or a
   backup GPT past the end means a truncated image. No table at all is allowed (a bare
   filesystem or a blank file) and gives no partitions.
2. Each partition is probed: a FAT boot sector makes it ``fat`` (then its directory tree must
   read cleanly), an ext superblock makes it ``ext4`` (ext2/3 included; the superblock must be
   sane), anything else is ``other``.
3. The boot partition is the first FAT partition. Its files are listed, and ``cmdline.txt``,
   ``config.txt`` and ``issue.txt`` at its root are read as UTF-8 (undecodable bytes replaced;
   more than 1 MiB is no text file but corruption).
4. OS family: ``raspios`` when ``issue.txt`` says "Raspberry Pi reference" (pi-gen writes it);
   ``ubuntu`` when the root is ``LABEL=writable`` or a partition is labelled ``system-boot`` or
   ``writable``; ``debian`` for Debian's raspi images (``RASPIFIRM``/``RASPIROOT``); else
   ``unknown``.
5. Customisation format (PROTOCOLS.md §6), exactly one: ``cloudinit`` when the boot partition
   holds NoCloud files (``user-data``, ``meta-data``, ``network-config``) or ``cmdline.txt``
   asks for ``ds=nocloud``; else ``firstrun`` for Raspberry Pi OS (or any image that already
   carries ``firstrun.sh``, ``userconf.txt`` or a ``systemd.run=`` on its command line);
   else ``none``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from piman.deploy import ext4
from piman.deploy.errors import ImageError
from piman.deploy.fat import FatVolume
from piman.deploy.fat import probe as probe_fat
from piman.deploy.partitions import Partition, PartitionTable, Region, read_table

__all__ = [
    "Customisation",
    "FsKind",
    "ImageError",
    "ImageInfo",
    "ImagePartition",
    "OsFamily",
    "extract_boot_files",
    "inspect",
    "open_boot_volume",
    "read_boot_file",
]

FsKind = Literal["fat", "ext4", "other"]
OsFamily = Literal["raspios", "ubuntu", "debian", "unknown"]
Customisation = Literal["firstrun", "cloudinit", "none"]

_NOCLOUD_FILES = ("user-data", "meta-data", "network-config")
_FIRSTRUN_FILES = ("firstrun.sh", "userconf.txt")
_MAX_TEXT = 1 << 20  # cmdline.txt, config.txt, issue.txt are a few KiB


@dataclass(frozen=True, slots=True)
class ImagePartition:
    """A partition of an image and the filesystem found in it."""

    partition: Partition
    filesystem: FsKind
    detail: str  # "FAT32", "ext4", "ext2", …; "" for other
    label: str  # the filesystem's volume label; "" when none

    @property
    def index(self) -> int:
        return self.partition.index


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What :func:`inspect` found in a raw image."""

    size: int  # bytes of the raw file
    table: PartitionTable | None
    partitions: tuple[ImagePartition, ...]
    boot_partition: int | None  # Partition.index of the first FAT partition
    boot_files: tuple[str, ...]  # every file of the boot partition: "config.txt", "overlays/…"
    cmdline: str | None  # cmdline.txt, as stored
    config_txt: str | None
    issue: str | None  # issue.txt (pi-gen's build stamp)
    os_family: OsFamily
    customisation: Customisation

    def partition(self, index: int) -> ImagePartition:
        """The partition numbered ``index`` (KeyError when there is none)."""
        for part in self.partitions:
            if part.index == index:
                return part
        raise KeyError(index)


def inspect(raw: Path) -> ImageInfo:
    """Read ``raw`` (a raw disk image) and say what it holds; see the module doc."""
    with _open(raw) as file:
        size = os.fstat(file.fileno()).st_size
        disk = Region(file, 0, size)
        try:
            table = read_table(disk)
        except ImageError as err:
            raise err.within(raw.name) from None
        probed = [_probe(raw, disk, p) for p in (table.partitions if table else ())]
        parts = tuple(part for part, _volume in probed)
        boot, volume = next(((p, v) for p, v in probed if v is not None), (None, None))
        files: tuple[str, ...] = ()
        texts: dict[str, str | None] = {"cmdline.txt": None, "config.txt": None, "issue.txt": None}
        if boot is not None and volume is not None:
            with _translated(raw, boot):
                files = tuple(e.path for e in volume.files())
                for name in texts:
                    entry = volume.find(name)
                    if entry is not None and not entry.is_dir:
                        if entry.size > _MAX_TEXT:
                            raise ImageError(
                                f"/{entry.path} is {entry.size} bytes, not a text file"
                            )
                        data = b"".join(volume.chunks(entry))
                        texts[name] = data.decode("utf-8", errors="replace")
    family = _os_family(parts, texts["cmdline.txt"], texts["issue.txt"])
    return ImageInfo(
        size=size,
        table=table,
        partitions=parts,
        boot_partition=boot.index if boot else None,
        boot_files=files,
        cmdline=texts["cmdline.txt"],
        config_txt=texts["config.txt"],
        issue=texts["issue.txt"],
        os_family=family,
        customisation=_customisation(family, files, texts["cmdline.txt"]),
    )


@contextmanager
def open_boot_volume(raw: Path, info: ImageInfo) -> Iterator[FatVolume | None]:
    """The boot partition of ``raw`` as an open :class:`FatVolume` (``None`` when the image has
    none), for as long as the context lasts. Errors name the file and the partition."""
    if info.boot_partition is None:
        yield None
        return
    part = info.partition(info.boot_partition)
    with _open(raw) as file:
        size = os.fstat(file.fileno()).st_size
        if size != info.size:
            raise ImageError(f"{raw.name}: the image changed since it was inspected")
        with _translated(raw, part):
            p = part.partition
            yield FatVolume.open(Region(file, p.start_bytes, p.size_bytes))


def read_boot_file(raw: Path, info: ImageInfo, path: str) -> bytes | None:
    """The bytes of ``path`` on the boot partition (any case, leading "/" optional), or
    ``None`` when the image has no boot partition or no such file (a directory is no file)."""
    with open_boot_volume(raw, info) as volume:
        if volume is None:
            return None
        entry = volume.find(path)
        if entry is None or entry.is_dir:
            return None
        return b"".join(volume.chunks(entry))


def extract_boot_files(raw: Path, info: ImageInfo, dest_dir: Path) -> tuple[str, ...]:
    """Copy every file and directory of the boot partition under ``dest_dir`` (made when
    missing; existing files are overwritten), keeping subdirectories such as ``overlays/``.
    Returns the files written, as relative paths. Streams each file in runs of clusters."""
    written: list[str] = []
    with open_boot_volume(raw, info) as volume:
        if volume is None:
            return ()
        dest_dir.mkdir(parents=True, exist_ok=True)
        for entry in volume.entries():
            parts = entry.path.split("/")
            if any(p in ("", ".", "..") or "\\" in p for p in parts):
                raise ImageError(f"{raw.name}: the boot file name {entry.path!r} is not safe")
            target = dest_dir.joinpath(*parts)
            if entry.is_dir:
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("wb") as out:
                for chunk in volume.chunks(entry):
                    out.write(chunk)
            written.append(entry.path)
    return tuple(written)


@contextmanager
def _open(raw: Path) -> Iterator[BinaryIO]:
    try:
        file = raw.open("rb")
    except FileNotFoundError:
        raise ImageError(f"{raw.name}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{raw.name}: is a directory, not a disk image") from None
    with file:
        yield file


@contextmanager
def _translated(raw: Path, part: ImagePartition) -> Iterator[None]:
    """ImageErrors inside become ``<file>: partition N (<fs>): …``."""
    try:
        yield
    except ImageError as err:
        what = part.detail or part.filesystem
        raise err.within(f"{raw.name}: partition {part.index} ({what})") from None


def _probe(
    raw: Path, disk: Region, partition: Partition
) -> tuple[ImagePartition, FatVolume | None]:
    """The partition with its filesystem named, and the open volume when it is FAT."""
    region = disk.sub(partition.start_bytes, partition.size_bytes)
    if probe_fat(region):
        with _translated(raw, ImagePartition(partition, "fat", "FAT", "")):
            volume = FatVolume.open(region)
        part = ImagePartition(partition, "fat", volume.kind, volume.label)
        with _translated(raw, part):
            volume.entries()
        return part, volume
    if ext4.probe(region):
        with _translated(raw, ImagePartition(partition, "ext4", "ext", "")):
            sb = ext4.read_superblock(region)
        return ImagePartition(partition, "ext4", sb.version, sb.label), None
    return ImagePartition(partition, "other", "", ""), None


def _os_family(
    parts: tuple[ImagePartition, ...], cmdline: str | None, issue: str | None
) -> OsFamily:
    labels = {p.label.casefold() for p in parts}
    root = re.search(r"(?:^|\s)root=(\S+)", cmdline or "")
    root_spec = root.group(1).casefold() if root else ""
    if issue is not None and "raspberry pi reference" in issue.casefold():
        return "raspios"
    if root_spec == "label=writable" or labels & {"system-boot", "writable"}:
        return "ubuntu"
    if root_spec == "label=raspiroot" or labels & {"raspifirm", "raspiroot"}:
        return "debian"
    return "unknown"


def _customisation(family: OsFamily, files: tuple[str, ...], cmdline: str | None) -> Customisation:
    top = {f.casefold() for f in files if "/" not in f}
    words = (cmdline or "").casefold().split()
    if top & set(_NOCLOUD_FILES) or any(w.startswith("ds=nocloud") for w in words):
        return "cloudinit"
    if family == "raspios" or top & set(_FIRSTRUN_FILES):
        return "firstrun"
    if any(w.startswith("systemd.run=") for w in words):
        return "firstrun"
    return "none"
