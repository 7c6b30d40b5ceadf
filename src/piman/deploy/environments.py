"""Environments: OS images imported once, inspected, mapped, and kept ready to stream.

``data_dir/environments/<name>/`` holds ``image.img`` (the raw disk image, sparse) and
``image.bmap`` (its block map, bmap 2.0: what installers write and verify). The store keeps what
inspection found (:class:`~piman.fleet.records.EnvironmentRecord`). :meth:`EnvironmentLibrary.add`
is all or nothing: it works in ``data_dir/environments/.<name>.partial/`` and renames the
directory into place only once the image is imported, inspected and mapped and the record is
stored; any failure (a corrupt source, a full disk, Ctrl-C) removes the partial directory.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from piman.deploy import bmap as bmaps
from piman.deploy.errors import ImageError
from piman.deploy.images import ImageInfo, inspect
from piman.deploy.sources import import_source
from piman.errors import ConflictError, NotFoundError, PimanError
from piman.fleet.ports import EnvironmentRepository
from piman.fleet.records import EnvironmentRecord

__all__ = ["HEAD_BLOCKS", "MAX_RANGE_BLOCKS", "EnvironmentLibrary", "check_name"]

logger = logging.getLogger(__name__)

HEAD_BLOCKS = 256  # the first MiB (4 KiB blocks): partition table and boot gap, written last
MAX_RANGE_BLOCKS = 1024  # 4 MiB ranges: what an installer fetches, checks and writes at once
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")

Progress = Callable[[str, int, int | None], None]
"""(phase, done, total): phases ``import``, ``inspect``, ``map``."""


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(
            f"{name!r} is not an environment name (lower-case letters, digits, . _ -; at most 64)"
        )
    return name


class EnvironmentLibrary:
    """Environments on disk and in the store."""

    def __init__(self, data_dir: Path, repo: EnvironmentRepository) -> None:
        self.root = data_dir / "environments"
        self.repo = repo

    def image(self, name: str) -> Path:
        return self.root / name / "image.img"

    def bmap_path(self, name: str) -> Path:
        return self.root / name / "image.bmap"

    async def add(
        self,
        name: str,
        source: Path,
        *,
        created_by: str,
        description: str = "",
        expect_sha256: str | None = None,
        on_progress: Progress | None = None,
    ) -> EnvironmentRecord:
        """Import ``source`` as environment ``name``; ConflictError when the name is taken."""
        check_name(name)
        if not await asyncio.to_thread(source.is_file):
            raise NotFoundError(f"{source}: no such file")
        try:
            await self.repo.get(name)
        except NotFoundError:
            pass
        else:
            raise ConflictError(f"an environment named {name!r} exists (remove it first)")
        final = self.root / name
        if final.exists():
            raise ConflictError(f"{final} exists but no environment is recorded: remove it")
        partial = self.root / f".{name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True, mode=0o700)
        try:
            record = await asyncio.to_thread(
                self._build, name, source, partial, created_by, description, expect_sha256,
                on_progress,
            )  # fmt: skip
            partial.rename(final)
            try:
                await self.repo.add(record)
            except BaseException:
                shutil.rmtree(final, ignore_errors=True)
                raise
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        logger.info(
            "environment %s imported from %s: %s, %d bytes (%d mapped), %s, customisation %s",
            name, source.name, record.os_family, record.image_size, record.mapped_bytes,
            record.table, record.customisation,
        )  # fmt: skip
        return record

    def _build(
        self,
        name: str,
        source: Path,
        work: Path,
        created_by: str,
        description: str,
        expect_sha256: str | None,
        on_progress: Progress | None,
    ) -> EnvironmentRecord:
        raw = work / "image.img"

        def imported(done: int, total: int | None) -> None:
            if on_progress is not None:
                on_progress("import", done, total)

        info_src = import_source(source, raw, expect_sha256=expect_sha256, on_progress=imported)
        if on_progress is not None:
            on_progress("inspect", 0, None)
        try:
            info: ImageInfo = inspect(raw)
            if on_progress is not None:
                on_progress("map", 0, info.size)
            block_map = bmaps.compute(
                raw, info, max_range_blocks=MAX_RANGE_BLOCKS, split_at_block=HEAD_BLOCKS
            )
        except ImageError as err:  # named after our work file: name the user's source instead
            text = str(err).removeprefix(f"{raw.name}: ")
            raise ImageError(f"{source.name}: {text}") from None
        bmaps.write(block_map, work / "image.bmap")
        if on_progress is not None:
            on_progress("map", info.size, info.size)
        return EnvironmentRecord(
            name=name,
            source=source.name,
            source_sha256=info_src.source_sha256,
            kind=info_src.kind,
            image_size=info.size,
            image_sha256=info_src.raw_sha256,
            mapped_bytes=bmaps.mapped_bytes(block_map),
            table=info.table.kind if info.table is not None else "none",
            os_family=info.os_family,
            customisation=info.customisation,
            boot_files=tuple(info.boot_files),
            cmdline=info.cmdline,
            description=description,
            created_at=datetime.now(UTC),
            created_by=created_by,
        )

    async def remove(self, name: str) -> None:
        await self.repo.remove(name)  # NotFoundError, ConflictError while deploying
        shutil.rmtree(self.root / name, ignore_errors=True)

    def load_bmap(self, name: str) -> bmaps.Bmap:
        path = self.bmap_path(name)
        try:
            return bmaps.read(path)
        except FileNotFoundError:
            raise PimanError(f"environment {name}: {path} is missing (import it again)") from None
