"""What a TFTP transfer reads from: byte sources, safe path resolution and a small file cache.

The application hook (:data:`Opener`) gets the requested path and the client's address and
returns a :class:`ByteSource`, or ``None`` for "file not found"; it raises
:class:`AccessViolation` to refuse. :func:`resolve_inside` is the only way paths from the wire
become file-system paths: it refuses NUL bytes, backslashes, ``..`` components and over-long
names, maps absolute names onto the root (like ``tftpd -s``), resolves symlinks and checks
containment by path components (``Path.relative_to``), never by string prefix.

:class:`FileCache` keeps small boot files in memory (Pis ask for the same few files again and
again); larger files are read block by block with ``os.pread`` from one open descriptor.
:class:`NetasciiSource` serves a file in netascii mode, converted a chunk at a time as blocks
are read: never a converted copy of the whole file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from piman.errors import ProtocolError

__all__ = [
    "MAX_COMPONENT",
    "MAX_PATH",
    "NETASCII_CHUNK",
    "AccessViolation",
    "ByteSource",
    "BytesSource",
    "FileCache",
    "FileSource",
    "Memo",
    "NetasciiSource",
    "Opener",
    "RootDirectory",
    "netascii",
    "resolve_inside",
]

logger = logging.getLogger(__name__)

MAX_PATH = 512  # bytes in a requested name
MAX_COMPONENT = 255  # bytes in one path component (NAME_MAX)
_SLOT_BYTES = 41  # what one built datagram costs beyond its bytes (object header + list slot)
NETASCII_CHUNK = 64 * 1024  # bytes of a file converted to netascii at once

Memo = list[bytes | None]
"""One slot per block of a file at one block size, where sessions keep the datagrams they built."""


class AccessViolation(ProtocolError):
    """A requested path is not allowed (answered with TFTP error 2)."""


class ByteSource(Protocol):
    """A file being served: its size and random access to its bytes."""

    @property
    def size(self) -> int: ...

    def read(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset`` (fewer only at the end)."""
        ...

    def close(self) -> None:
        """Release what the source holds (called once the transfer ends)."""
        ...

    def memo(self, blksize: int) -> Memo | None:
        """A :data:`Memo` shared by every transfer of these same bytes at ``blksize``, or None.

        A session stores in slot ``i`` the DATA datagram of block ``i + 1`` the first time it
        builds it; later transfers of the same file send it as it is. Datagrams depend only on
        the bytes, the block size and the block number, so sharing them is safe.
        """
        ...


Opener = Callable[[str, tuple[str, int]], Awaitable[ByteSource | None]]
"""The application hook: (requested path, client address) → a byte source or None."""


class BytesSource:
    """A source over bytes in memory (cached files, generated files)."""

    __slots__ = ("_data", "_entry")

    def __init__(self, data: bytes, entry: _Entry | None = None) -> None:
        self._data = data
        self._entry = entry  # the cache entry these bytes came from, which keeps the memos

    @property
    def size(self) -> int:
        return len(self._data)

    def read(self, offset: int, length: int) -> bytes:
        return self._data[offset : offset + length]

    def close(self) -> None:
        return None

    def memo(self, blksize: int) -> Memo | None:
        return None if self._entry is None else self._entry.memo(blksize)


class FileSource:
    """A source over an open file descriptor, read with ``os.pread`` (no shared offset)."""

    __slots__ = ("_fd", "_size")

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self._size = size

    @property
    def size(self) -> int:
        return self._size

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self._fd, length, offset)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def memo(self, blksize: int) -> Memo | None:
        return None  # a file too large to cache is not doubled in memory either


def netascii(data: bytes) -> bytes:
    """RFC 764 NVT ASCII as TFTP wants it: LF → CR LF, a bare CR → CR NUL."""
    return data.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")


class NetasciiSource:
    """A source served in netascii mode: ``inner`` converted by :func:`netascii` as it is read.

    The conversion maps each byte on its own (CR and LF become two bytes, the rest one), so the
    file converts in independent chunks of :data:`NETASCII_CHUNK` bytes. Making the source
    reads ``inner`` once, a chunk at a time, and notes where each chunk starts once converted:
    that gives the converted size (``tsize``) and random access (a retransmitted window reads
    behind the last block sent). Then a read converts the one or two chunks it falls in; the
    last two stay converted, so sequential blocks convert each chunk once. Memory: two
    converted chunks and one offset per chunk, whatever the size of the file.

    Making it costs a pass over the file (the server does it in a worker thread), once per
    cached file: the cache entry keeps the offsets for the next netascii transfer of it.
    """

    __slots__ = ("_chunks", "_inner", "_marks")

    def __init__(self, inner: ByteSource) -> None:
        self._inner = inner
        entry = inner._entry if isinstance(inner, BytesSource) else None
        marks = None if entry is None else entry.netascii_marks
        if marks is None:
            marks = _netascii_marks(inner)
            if entry is not None:
                entry.netascii_marks = marks
        self._marks = marks
        self._chunks: dict[int, bytes] = {}  # the last two chunks converted, by index

    @property
    def size(self) -> int:
        return self._marks[-1]

    def read(self, offset: int, length: int) -> bytes:
        marks = self._marks
        end = min(offset + length, marks[-1])
        if offset >= end:
            return b""
        index = bisect_right(marks, offset) - 1
        parts: list[bytes] = []
        while offset < end:
            chunk = self._chunk(index)
            start, stop = marks[index], marks[index + 1]
            parts.append(chunk[offset - start : min(end, stop) - start])
            if start + len(chunk) < stop:
                break  # the file shrank since it was opened: a short read
            offset = stop
            index += 1
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _chunk(self, index: int) -> bytes:
        chunks = self._chunks
        chunk = chunks.get(index)
        if chunk is None:
            chunk = netascii(self._inner.read(index * NETASCII_CHUNK, NETASCII_CHUNK))
            if len(chunks) >= 2:
                del chunks[next(iter(chunks))]  # the oldest of the two
            chunks[index] = chunk
        return chunk

    def close(self) -> None:
        self._chunks.clear()
        self._inner.close()

    def memo(self, blksize: int) -> Memo | None:
        return None  # converted datagrams are not the file's


def _netascii_marks(source: ByteSource) -> list[int]:
    """Where each chunk of ``source`` starts once converted; the last entry: the size."""
    marks = [0]
    offset = 0
    while offset < source.size:
        chunk = source.read(offset, NETASCII_CHUNK)
        if not chunk:
            break  # the file shrank since it was opened: serve what there was
        offset += len(chunk)
        marks.append(marks[-1] + len(chunk) + chunk.count(b"\r") + chunk.count(b"\n"))
    return marks


def resolve_inside(root: Path, name: str) -> Path:
    """The file ``name`` names under ``root``; raises :class:`AccessViolation` if it escapes.

    The result is fully resolved (symlinks followed) and may not exist: callers answer
    "not found" then. ``root`` must already be resolved.
    """
    raw = name.encode("utf-8", "surrogateescape")
    if b"\0" in raw:
        raise AccessViolation("NUL byte in file name")
    if "\\" in name:
        raise AccessViolation("backslash in file name")
    if len(raw) > MAX_PATH:
        raise AccessViolation(f"file name of {len(raw)} bytes (limit {MAX_PATH})")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise AccessViolation("'..' in file name")
    if any(len(p.encode("utf-8", "surrogateescape")) > MAX_COMPONENT for p in parts):
        raise AccessViolation("over-long path component")
    candidate = root.joinpath(*parts)
    try:
        resolved = candidate.resolve(strict=False)
    except (OSError, RuntimeError) as err:  # symlink loops
        raise AccessViolation(f"cannot resolve: {err}") from err
    try:
        resolved.relative_to(root)
    except ValueError:
        raise AccessViolation("path leaves the TFTP root") from None
    return resolved


@dataclass(frozen=True, slots=True)
class _Key:
    path: str
    dev: int
    ino: int
    size: int
    mtime_ns: int


class _Entry:
    """A cached file: its bytes and, per block size, the memo of its built datagrams."""

    __slots__ = ("cache", "data", "key", "memos", "netascii_marks")

    def __init__(self, cache: FileCache, key: _Key, data: bytes) -> None:
        self.cache = cache
        self.key = key
        self.data = data
        self.memos: dict[int, Memo] = {}
        self.netascii_marks: list[int] | None = None  # see NetasciiSource

    @property
    def weight(self) -> int:
        """Bytes this entry holds, counting each memo as if it were full."""
        return sum((len(self.data) + _SLOT_BYTES * len(m) for m in self.memos.values()),
                   len(self.data))  # fmt: skip

    def memo(self, blksize: int) -> Memo | None:
        memo = self.memos.get(blksize)
        if memo is None:
            slots = len(self.data) // blksize + 1
            if not self.cache.reserve(self, len(self.data) + _SLOT_BYTES * slots):
                return None
            memo = self.memos.setdefault(blksize, [None] * slots)
        return memo


class FileCache:
    """Opens files for transfers; keeps the contents of small ones in memory (LRU by bytes).

    Each cached file also keeps, per block size asked for, the DATA datagrams transfers built
    from it (:meth:`ByteSource.memo`): when fifty Pis fetch the same ``start4.elf``, each block
    is cut and framed once. Memos count against ``max_total`` like file contents; one that
    does not fit is not made (transfers then build their datagrams as they go).
    """

    def __init__(self, *, max_file: int = 64 << 20, max_total: int = 256 << 20) -> None:
        self.max_file = max_file
        self.max_total = max_total
        self._entries: OrderedDict[_Key, _Entry] = OrderedDict()
        self._loading: dict[_Key, asyncio.Future[_Entry]] = {}
        self._total = 0

    async def open(self, path: Path) -> ByteSource | None:
        """A source for a regular file, or None when it does not exist / is not a file."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            return None
        except OSError as err:
            raise AccessViolation(f"cannot open: {err.strerror}") from err
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                return None
            key = _Key(str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            cached = self._entries.get(key)
            if cached is not None:
                self._entries.move_to_end(key)
                os.close(fd)
                return BytesSource(cached.data, cached)
            if st.st_size > self.max_file:
                return FileSource(fd, st.st_size)
            loading = self._loading.get(key)
            if loading is not None:  # another transfer is reading it: share that read
                os.close(fd)
                entry = await asyncio.shield(loading)
                return BytesSource(entry.data, entry)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
        loading = asyncio.ensure_future(self._load(key, fd, st.st_size))
        self._loading[key] = loading
        entry = await asyncio.shield(loading)
        return BytesSource(entry.data, entry)

    @property
    def total(self) -> int:
        """Bytes held: file contents and memos."""
        return self._total

    def reserve(self, entry: _Entry, nbytes: int) -> bool:
        """Room for ``nbytes`` more in ``entry`` (a new memo)? Taken if so."""
        if self._entries.get(entry.key) is not entry:
            return False  # evicted meanwhile: its transfers go on without a memo
        if self._total + nbytes > self.max_total:
            return False
        self._total += nbytes
        return True

    async def _load(self, key: _Key, fd: int, size: int) -> _Entry:
        try:
            data = await asyncio.to_thread(_read_all, fd, size)
        finally:
            os.close(fd)
            del self._loading[key]
        entry = _Entry(self, key, data)
        self._remember(key, entry)
        return entry

    def _remember(self, key: _Key, entry: _Entry) -> None:
        stale = [k for k in self._entries if k.path == key.path]
        for k in stale:
            self._total -= self._entries.pop(k).weight
        self._entries[key] = entry
        self._total += entry.weight
        while self._total > self.max_total and len(self._entries) > 1:
            _, old = self._entries.popitem(last=False)
            self._total -= old.weight


def _read_all(fd: int, size: int) -> bytes:
    chunks: list[bytes] = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(size - offset, 1 << 20), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


class RootDirectory:
    """The plain hook: serve files from one directory, path-safe, through a cache."""

    def __init__(self, root: Path, cache: FileCache | None = None) -> None:
        self.root = root.resolve()
        self.cache = cache or FileCache()

    async def __call__(self, name: str, client: tuple[str, int]) -> ByteSource | None:
        return await self.cache.open(resolve_inside(self.root, name))
