"""Importing what users have into a sparse raw disk image.

``import_source(src, dest) -> SourceInfo`` accepts a raw ``.img``, an ``.img.xz``/``.img.gz``/
``.img.zst``, a PiSeduce-style tar holding one ``.img`` (plain or compressed), or a
root-filesystem tarball (``rootfs.tgz``, ``.tar[.gz|.xz|.zst]``), and leaves a raw image at
``dest``. Every problem raises one :class:`ImageError` line that starts with the source's name.

Theory of operation.

1. What the source is comes from its bytes, never its name: the magic number gives the
   compression (gzip ``1f 8b``, xz ``fd 37 7a 58 5a 00``, zstd ``28 b5 2f fd`` or a skippable
   frame); ``ustar`` at byte 257 of the decompressed data makes it a tar; the first tar member
   that decides makes it a PiSeduce tar (a regular file named ``*.img``) or a root filesystem
   (a top-level ``etc``, ``usr``, ``bin``, ``sbin``, ``lib`` or ``var``). A tar with neither is
   refused.
2. Everything streams: the source is read once in 1 MiB pieces (hashed, counted for
   ``on_progress(done, total)``; the sniffing of step 1 reads a little of it once more), and
   decompressors return bounded pieces (zstd is fed 2 KiB at a time, which bounds a piece at
   64 MiB even for long runs of zeros). Concatenated gzip members, xz streams and zstd frames are
   read in turn; zero padding after them is allowed, anything else is trailing garbage. A stream
   that ends inside a member is truncated.
3. The image is written to a temporary file beside ``dest`` with every all-zero 4 KiB block
   left as a hole (a seek), then fsynced and renamed over ``dest``. On any failure, Ctrl-C
   included, the temporary file (and for a root filesystem the work directory) is removed.
4. ``expect_sha256`` is checked against the source's SHA-256 before the rename (for a root
   filesystem, before the image is built).
5. A root filesystem is extracted by GNU tar and becomes an MBR image with a 256 MiB FAT32
   boot partition (the tarball's ``/boot/firmware``, else ``/boot``) and an ext4 root sized to
   the content with headroom: see :mod:`piman.deploy.rootfs`. Its raw SHA-256 is then read back.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import re
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, Protocol

import zstandard

from piman.deploy import rootfs
from piman.deploy.errors import ImageError

__all__ = ["Compression", "Progress", "SourceInfo", "SourceKind", "import_source"]

Compression = Literal["none", "gzip", "xz", "zstd"]
SourceKind = Literal["img", "gz", "xz", "zst", "piseduce", "rootfs"]
Progress = Callable[[int, int | None], None]
"""``on_progress(source_bytes_done, source_bytes_total)``."""

_CHUNK = 1 << 20  # source bytes per read
_OUT = 4 << 20  # largest decompressed piece asked of zlib and lzma
_ZSTD_FEED = 2048  # compressed bytes per zstd call: at most ~64 MiB out
_BLOCK = 4096  # the unit of sparseness
_ZERO_BLOCK = bytes(_BLOCK)
_MAGIC: tuple[tuple[bytes, Compression], ...] = (
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)
_KIND: dict[Compression, SourceKind] = {"none": "img", "gzip": "gz", "xz": "xz", "zstd": "zst"}
_ROOT_MARKERS = frozenset({"etc", "usr", "bin", "sbin", "lib", "var"})


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """What was imported."""

    kind: SourceKind
    compression: Compression
    source_bytes: int
    source_sha256: str  # of the file as given: what ``--sha256`` checks
    raw_size: int
    raw_sha256: str
    member: str | None = None  # piseduce: the image's name inside the tar


def import_source(
    src: Path,
    dest: Path,
    *,
    expect_sha256: str | None = None,
    on_progress: Progress | None = None,
) -> SourceInfo:
    """Import ``src`` as a sparse raw image at ``dest``; see the module doc."""
    expected = _expected_digest(src, expect_sha256)
    try:
        total = src.stat().st_size
        with src.open("rb") as file:
            head = file.read(8)
    except FileNotFoundError:
        raise ImageError(f"{src.name}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{src.name}: is a directory, not an image") from None
    if not head:
        raise ImageError(f"{src.name}: is empty")
    compression = _compression(head)
    kind, member = _sniff(src, compression)
    fd, temp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    temp = Path(temp_name)
    try:
        os.fchmod(fd, 0o644)  # an OS image is no secret; the image server reads it
        with os.fdopen(fd, "r+b") as out, src.open("rb") as file:
            source = _Source(file, total, on_progress)
            if kind == "rootfs":
                work = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".d"))
                try:
                    rootfs.extract(src.name, _decompress(source, compression, src.name), work)
                    _check_digest(src, source, expected)
                    rootfs.build_image(src.name, work, temp)
                finally:
                    shutil.rmtree(work, ignore_errors=True)
                raw_size, raw_sha = _hash_file(temp)
            else:
                plain = kind == "img" and compression == "none"  # raw bytes are the source's
                writer = _SparseWriter(out, hashing=not plain)
                decoded = _decompress(source, compression, src.name)
                if kind == "piseduce":
                    _copy_tar_member(src.name, decoded, writer)
                else:
                    for piece in decoded:
                        writer.write(piece)
                raw_size, raw_sha = writer.finish()
                raw_sha = source.sha256.hexdigest() if plain else raw_sha
                _check_digest(src, source, expected)
            out.flush()
            os.fsync(out.fileno())
        temp.replace(dest)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_dir(dest.parent)
    final_kind: SourceKind = kind if kind in ("piseduce", "rootfs") else _KIND[compression]
    return SourceInfo(
        kind=final_kind,
        compression=compression,
        source_bytes=source.done,
        source_sha256=source.sha256.hexdigest(),
        raw_size=raw_size,
        raw_sha256=raw_sha,
        member=member,
    )


# -- checksums and files -------------------------------------------------------------------------


def _expected_digest(src: Path, text: str | None) -> str | None:
    if text is None:
        return None
    digest = text.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ImageError(f"{src.name}: {text!r} is not a SHA-256 (64 hexadecimal digits)")
    return digest


def _check_digest(src: Path, source: _Source, expected: str | None) -> None:
    actual = source.sha256.hexdigest()
    if expected is not None and actual != expected:
        raise ImageError(f"{src.name}: its SHA-256 is {actual}, not the expected {expected}")


def _compression(head: bytes) -> Compression:
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if len(head) >= 4 and head[0] & 0xF0 == 0x50 and head[1:4] == b"\x2a\x4d\x18":
        return "zstd"  # a skippable frame first (pzstd writes one)
    return "none"


def _hash_file(path: Path) -> tuple[int, str]:
    """(size, SHA-256) of a sparse file: holes are hashed as zeros without being read, which
    halves the time for a fresh root-filesystem image (mostly holes)."""
    digest, buffer, zeros = hashlib.sha256(), bytearray(_OUT), bytes(_OUT)
    with path.open("rb") as file:
        size, at = os.fstat(file.fileno()).st_size, 0
        while at < size:
            try:
                data = min(os.lseek(file.fileno(), at, os.SEEK_DATA), size)
            except OSError:  # ENXIO: only a hole is left (or SEEK_DATA is not supported)
                data = size if at else 0
            if data == at:
                hole = min(os.lseek(file.fileno(), at, os.SEEK_HOLE), size)
                file.seek(at)
                while at < hole and (got := file.readinto(memoryview(buffer)[: hole - at])):
                    digest.update(memoryview(buffer)[:got])
                    at += got
            else:
                for start in range(at, data, _OUT):
                    digest.update(memoryview(zeros)[: min(_OUT, data - start)])
                at = data
    return size, digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Source:
    """The source file read once in pieces: hashed, counted, reported."""

    def __init__(self, file: BinaryIO, total: int | None, on_progress: Progress | None) -> None:
        self.file, self.total, self.on_progress = file, total, on_progress
        self.sha256 = hashlib.sha256()
        self.done = 0

    def __iter__(self) -> Iterator[bytes]:
        if self.on_progress is not None:
            self.on_progress(0, self.total)
        while data := self.file.read(_CHUNK):
            self.sha256.update(data)
            self.done += len(data)
            if self.on_progress is not None:
                self.on_progress(self.done, self.total)
            yield data


# -- decompression -------------------------------------------------------------------------------


class _Member(Protocol):
    """One gzip member, xz stream or zstd frame being decompressed."""

    eof: bool
    unused: bytes  # input after the end of the member

    def push(self, data: bytes) -> Iterator[bytes]: ...


class _Gzip:
    def __init__(self) -> None:
        self.d, self.eof, self.unused = zlib.decompressobj(31), False, b""

    def push(self, data: bytes) -> Iterator[bytes]:
        while True:
            out = self.d.decompress(data, _OUT)
            if out:
                yield out
            if self.d.eof:
                self.eof, self.unused = True, self.d.unused_data
                return
            data = self.d.unconsumed_tail
            if not data and len(out) < _OUT:
                return


class _Xz:
    def __init__(self) -> None:
        self.d, self.eof, self.unused = lzma.LZMADecompressor(lzma.FORMAT_XZ), False, b""

    def push(self, data: bytes) -> Iterator[bytes]:
        while True:
            out = self.d.decompress(data, _OUT)
            data = b""
            if out:
                yield out
            if self.d.eof:
                self.eof, self.unused = True, self.d.unused_data
                return
            if self.d.needs_input:
                return


class _Zstd:
    def __init__(self) -> None:
        self.d, self.eof = zstandard.ZstdDecompressor().decompressobj(), False
        self.unused = b""

    def push(self, data: bytes) -> Iterator[bytes]:
        for at in range(0, len(data), _ZSTD_FEED):
            out = self.d.decompress(data[at : at + _ZSTD_FEED])
            if out:
                yield out
            if self.d.eof:
                self.eof, self.unused = True, self.d.unused_data + data[at + _ZSTD_FEED :]
                return


_MEMBERS: dict[Compression, Callable[[], _Member]] = {"gzip": _Gzip, "xz": _Xz, "zstd": _Zstd}
_LABEL: dict[Compression, str] = {"gzip": "gzip", "xz": "xz", "zstd": "zstd", "none": ""}


def _decompress(source: _Source, compression: Compression, name: str) -> Iterator[bytes]:
    """The decompressed bytes of ``source``, member after member (see the module doc)."""
    if compression == "none":
        yield from source
        return
    member: _Member | None = None
    finished = padding = False
    label, carry = _LABEL[compression], b""
    try:
        for chunk in source:
            data, carry = carry + chunk, b""
            while data:
                if member is None and finished:
                    if padding or data[0] == 0:
                        if data.strip(b"\0"):
                            raise ImageError(f"{name}: garbage follows the {label} data")
                        padding = True
                        break
                    if len(data) < 8:  # too short to tell a member's magic: wait for more
                        carry = data
                        break
                    if _compression(data[:8]) != compression:
                        raise ImageError(f"{name}: garbage follows the {label} data")
                if member is None:
                    member = _MEMBERS[compression]()
                yield from member.push(data)
                data = b""
                if member.eof:
                    data, member, finished = member.unused, None, True
    except (zlib.error, lzma.LZMAError, zstandard.ZstdError, EOFError) as err:
        where = f"near byte {source.done}"
        raise ImageError(f"{name}: the {label} data is corrupt {where} ({err})") from None
    if carry:
        raise ImageError(f"{name}: garbage follows the {label} data")
    if member is not None or not finished:
        raise ImageError(f"{name}: the {label} stream is truncated (ends at {source.done} bytes)")


# -- writing sparse ------------------------------------------------------------------------------


class _SparseWriter:
    """Writes a stream to a file, leaving every all-zero 4 KiB block as a hole; hashes it.

    Pieces go straight to the file in whole blocks (no copy when a piece is block-aligned, as
    1 MiB source reads and 4 MiB decompressor outputs are); only a ragged tail waits."""

    def __init__(self, out: BinaryIO, *, hashing: bool = True) -> None:
        self.out, self.pending, self.size, self.hashing = out, b"", 0, hashing
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes) -> None:
        if self.hashing:
            self.sha256.update(data)
        if self.pending:
            data, self.pending = self.pending + data, b""
        whole = len(data) - len(data) % _BLOCK
        if whole:
            self._emit(data, whole)
        if whole < len(data):
            self.pending = data[whole:]

    def finish(self) -> tuple[int, str]:
        """Writes what is left, sets the file's length; (size, SHA-256 of all bytes, or of
        nothing when not ``hashing``)."""
        if self.pending:
            self._emit(self.pending, len(self.pending))
            self.pending = b""
        self.out.truncate(self.size)
        return self.size, self.sha256.hexdigest()

    def _emit(self, data: bytes, length: int) -> None:
        """Writes ``data[:length]`` at the current end, skipping its all-zero blocks."""
        view, start = memoryview(data), None  # start of the current run of data blocks
        for at in range(0, length, _BLOCK):
            end = min(at + _BLOCK, length)
            zero = data[at:end] == (_ZERO_BLOCK if end - at == _BLOCK else bytes(end - at))
            if zero and start is not None:
                self._put(view[start:at], self.size + start)
                start = None
            elif not zero and start is None:
                start = at
        if start is not None:
            self._put(view[start:length], self.size + start)
        self.size += length

    def _put(self, data: memoryview, at: int) -> None:
        self.out.seek(at)
        self.out.write(data)


# -- tar sources ---------------------------------------------------------------------------------


class _Stream:
    """A read-only file object over decompressed pieces (what ``tarfile`` reads in "r|" mode)."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self.pieces, self.buffer, self.at = pieces, b"", 0

    def read(self, size: int = -1) -> bytes:
        parts, want = [], size if size >= 0 else 1 << 62
        while want > 0:
            if self.at >= len(self.buffer):
                piece = next(self.pieces, None)
                if piece is None:
                    break
                self.buffer, self.at = piece, 0
            part = self.buffer[self.at : self.at + want]
            self.at += len(part)
            want -= len(part)
            parts.append(part)
        return b"".join(parts)

    def peek(self, size: int) -> bytes:
        """The next ``size`` bytes (fewer at the end), left to be read."""
        while len(self.buffer) - self.at < size:
            piece = next(self.pieces, None)
            if piece is None:
                break
            self.buffer, self.at = self.buffer[self.at :] + piece, 0
        return self.buffer[self.at : self.at + size]

    def drain(self) -> None:
        """Reads (and so checks) the rest of the stream."""
        for _piece in self.pieces:
            pass


def _members(name: str, stream: _Stream) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    try:
        with tarfile.open(fileobj=stream, mode="r|", bufsize=_CHUNK) as archive:  # type: ignore[call-overload]
            for info in archive:
                yield archive, info
    except tarfile.TarError as err:
        raise ImageError(f"{name}: the tar archive is corrupt or truncated ({err})") from None


def _sniff(
    src: Path, compression: Compression
) -> tuple[Literal["img", "piseduce", "rootfs"], str | None]:
    """What the source holds (module doc, step 1), from a first look at its beginning."""
    with src.open("rb") as file:
        stream = _Stream(_decompress(_Source(file, None, None), compression, src.name))
        head = stream.peek(512)
        if len(head) < 512 or head[257:262] != b"ustar":
            return "img", None
        for _archive, info in _members(src.name, stream):
            path = info.name.lstrip("/")
            while path.startswith("./"):
                path = path[2:]
            if info.isfile() and path.lower().endswith(".img"):
                return "piseduce", path
            if path.split("/", 1)[0] in _ROOT_MARKERS:
                return "rootfs", None
    raise ImageError(
        f"{src.name}: the tar archive holds neither a disk image (*.img) nor a root filesystem"
    )


def _copy_tar_member(name: str, pieces: Iterator[bytes], writer: _SparseWriter) -> None:
    """Streams the one ``*.img`` member of a tar into ``writer``; the rest is read and checked."""
    stream, found = _Stream(pieces), None
    for archive, info in _members(name, stream):
        if not (info.isfile() and info.name.lower().endswith(".img")):
            continue
        if found is not None:
            raise ImageError(f"{name}: the tar archive holds two images, {found} and {info.name}")
        found = info.name
        member = archive.extractfile(info)
        if member is None:
            raise ImageError(f"{name}: the tar member {info.name} cannot be read")
        with member:
            try:
                while data := member.read(_OUT):
                    writer.write(data)
            except tarfile.TarError as err:
                raise ImageError(
                    f"{name}: the tar member {info.name} is cut short ({err})"
                ) from None
    stream.drain()
