"""``POST /api/v1/environments``: an OS image uploaded from a browser becomes an environment.

The body is the image file itself (``application/octet-stream``, with a Content-Length, so the
browser's upload progress is exact), at most ``deploy.max_upload`` bytes. It is streamed to a
private file under ``data_dir/environments/.uploads/`` and then imported exactly as
``piman env add`` does (:meth:`piman.deploy.environments.EnvironmentLibrary.add`: inspected,
mapped, all or nothing); the upload is removed afterwards whatever happens. Operators and
admins only; the import goes to the audit log.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, BinaryIO

from fastapi import APIRouter, HTTPException, Query, Request

from piman.deploy.environments import EnvironmentLibrary, check_name
from piman.deploy.errors import ImageError
from piman.web.api.deploy import EnvironmentOut
from piman.web.deps import Ctx
from piman.web.security import Operator

__all__ = ["router"]

router = APIRouter(tags=["deploy"])

FLUSH = 1 << 20  # bytes gathered before each write to the upload file
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _file_name(given: str) -> str:
    """The uploaded file's base name, made safe to create (the import names it in errors)."""
    name = _SAFE.sub("_", given.replace("\\", "/").rsplit("/", 1)[-1]).lstrip(".")
    return name[:128] or "upload.img"


@router.post(
    "/environments",
    response_model=EnvironmentOut,
    status_code=201,
    summary="Upload an OS image (the request body) and import it as an environment",
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "The image file: raw, or compressed with xz, gzip or zstd",
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
    responses={
        409: {"description": "An environment of that name exists"},
        413: {"description": "Larger than deploy.max_upload"},
        422: {"description": "A bad name, or not an image piman can deploy"},
    },
)
async def upload_environment(
    request: Request,
    principal: Operator,
    ctx: Ctx,
    name: Annotated[str, Query(max_length=64, description="The new environment's name")],
    filename: Annotated[str, Query(max_length=255)] = "upload.img",
    description: Annotated[str, Query(max_length=500)] = "",
) -> EnvironmentOut:
    try:
        check_name(name)
    except ValueError as err:
        raise HTTPException(422, str(err)) from None
    limit = ctx.config.deploy.max_upload if ctx.config.deploy is not None else 0
    declared = int(request.headers.get("content-length", "0") or 0)
    if declared <= 0:
        raise HTTPException(422, "send the image as the request body")
    if declared > limit:
        raise HTTPException(413, f"an upload has at most {limit} bytes (deploy.max_upload)")
    uploads = ctx.config.manager.data_dir / "environments" / ".uploads"
    await asyncio.to_thread(uploads.mkdir, parents=True, exist_ok=True, mode=0o700)
    work = Path(await asyncio.to_thread(tempfile.mkdtemp, dir=uploads))
    try:
        path = work / _file_name(filename)
        received = await _receive(request, path, limit)
        if received != declared:
            raise HTTPException(400, f"the upload ended after {received} of {declared} bytes")
        library = EnvironmentLibrary(ctx.config.manager.data_dir, ctx.store.environments)
        try:
            record = await library.add(
                name, path, created_by=principal.user, description=description
            )
        except ImageError as err:
            await ctx.store.audit.add(principal.actor, "env.add", name, "failed", str(err))
            raise HTTPException(422, str(err)) from None
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)
    await ctx.store.audit.add(
        principal.actor, "env.add", name, "ok", f"uploaded {path.name}, {received} bytes"
    )
    return EnvironmentOut.of(record)


async def _receive(request: Request, path: Path, limit: int) -> int:
    """Stream the body to ``path``; 413 as soon as it passes ``limit``."""
    received = 0
    pending: list[bytes] = []
    size = 0
    out: BinaryIO = await asyncio.to_thread(path.open, "wb")
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise HTTPException(413, f"an upload has at most {limit} bytes")
            pending.append(chunk)
            size += len(chunk)
            if size >= FLUSH:
                await asyncio.to_thread(out.write, b"".join(pending))
                pending, size = [], 0
        if pending:
            await asyncio.to_thread(out.write, b"".join(pending))
    finally:
        await asyncio.to_thread(out.close)
    return received
