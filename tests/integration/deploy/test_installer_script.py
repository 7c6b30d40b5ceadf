"""installer.sh under the host's busybox against a fake manager: the node's half of
docs/boot-protocol.md, one behaviour per test.

:class:`FakeManager` is the manager's half for one deployment: a one-time token, the plan, the
image (``?end=<b>`` with ``Range: bytes=<a>-`` answered 206, or 200 from byte 0 without a
Range), progress (204, or 410 once told to cancel), files.tar and the result. It records every
request, counts the image bytes it served per plan range, and can cut downloads, answer 503 or
serve a corrupt range. The target disk is a regular file filled with ``FILL``, so every byte the
installer did not write is known.

Writes are counted without trusting the installer's log. A ``dd`` shim on PATH would never run:
Debian's busybox sh runs its own applets before anything on PATH (FEATURE_SH_STANDALONE). So the
installer runs under ``strace`` (openat and lseek only): every write opens the target for writing
and seeks to its offset (a ``dd``, or the ``dd`` that moves wget's output before it streams a
run), and the tests read those from the trace.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import secrets
import shutil
import socket
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Collection
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from piman.deploy.installer import SOURCES_DIR
from tests.support import needs_root, needs_tool

INSTALLER = SOURCES_DIR / "installer.sh"
BLOCK = 4096
HEAD_BLOCKS = 256  # 1 MiB: the partition table, written last
MAX_RANGE_BLOCKS = 1024
RUN_BYTES = 64 * (1 << 20)  # installer.sh: one request per run of adjacent ranges
MIB = 1 << 20
FILL = 0xA5  # the target's bytes before the installer runs
DEPLOYMENT = 42
FILES = {
    "cmdline.txt": b"console=serial0,115200 root=LABEL=root rootwait\n",
    "ssh": b"",
    "piman/node.txt": b"name=pi-07\n",
    "piman/remove": b"kernel8.img\n",  # deleted from partition 1 after the tar, then itself
}
KEPT = {name: data for name, data in FILES.items() if name != "piman/remove"}


# --- the image and its plan -------------------------------------------------------------


@dataclass(frozen=True)
class PlanRange:
    """One ``range`` line of the plan: blocks first..last, bytes [start, end)."""

    index: int
    first: int
    last: int
    start: int
    end: int
    sha256: str

    @property
    def in_head(self) -> bool:
        return self.first < HEAD_BLOCKS


def plan_ranges(image: bytes) -> list[PlanRange]:
    """The image's mapped (non-zero) blocks as plan ranges, as a bmap gives them: at most
    MAX_RANGE_BLOCKS long, none straddling HEAD_BLOCKS; the last block may be short."""
    blocks = -(-len(image) // BLOCK)
    spans: list[tuple[int, int]] = []
    first: int | None = None
    for b in range(blocks + 1):
        chunk = image[b * BLOCK : (b + 1) * BLOCK]
        mapped = b < blocks and chunk != bytes(len(chunk))
        if first is not None and (not mapped or b - first == MAX_RANGE_BLOCKS or b == HEAD_BLOCKS):
            spans.append((first, b - 1))
            first = None
        if mapped and first is None:
            first = b
    ranges = []
    for index, (a, z) in enumerate(spans):
        start, end = a * BLOCK, min((z + 1) * BLOCK, len(image))
        digest = hashlib.sha256(image[start:end]).hexdigest()
        ranges.append(PlanRange(index, a, z, start, end, digest))
    return ranges


def make_image(work: Path) -> bytes:
    """A small Pi-like disk image (12 MiB): an MBR, a FAT boot partition at 1 MiB and an ext4
    root at 5 MiB holding random data, so the plan has gaps and a range cut at 1024 blocks."""
    needs_tool("sfdisk", "mkfs.vfat", "mcopy", "mke2fs")
    rng = random.Random(20240607)
    boot, root = work / "boot", work / "root"
    boot.mkdir()
    (root / "etc").mkdir(parents=True)
    (boot / "config.txt").write_text("arm_64bit=1\nkernel=kernel8.img\n")
    (boot / "kernel8.img").write_bytes(rng.randbytes(300_000))
    (root / "etc" / "hostname").write_text("pi-07\n")
    (root / "data.bin").write_bytes(rng.randbytes(4_300_000))  # 1050 blocks: cut at 1024
    p1, p2, disk = work / "p1.img", work / "p2.img", work / "image.img"

    def run(tool: str, *args: str, stdin: str | None = None) -> None:
        path = shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
        subprocess.run(
            [path or tool, *args], check=True, capture_output=True, input=stdin, text=True
        )

    run("mkfs.vfat", "-C", "-n", "BOOT", str(p1), "4096")
    run("mcopy", "-i", str(p1), str(boot / "config.txt"), str(boot / "kernel8.img"), "::")
    run("mke2fs", "-q", "-F", "-t", "ext4", "-O", "^has_journal", "-b", "4096", "-L", "root",
        "-d", str(root), str(p2), "7M")  # fmt: skip
    with disk.open("wb") as f:
        f.truncate(12 * MIB)
    table = "label: dos\nstart=2048, size=8192, type=c\nstart=10240, size=14336, type=83\n"
    run("sfdisk", "-q", str(disk), stdin=table)
    image = bytearray(disk.read_bytes())
    image[1 * MIB : 5 * MIB] = p1.read_bytes()
    image[5 * MIB : 12 * MIB] = p2.read_bytes()
    return bytes(image)


def files_tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


# --- the fake manager -------------------------------------------------------------------


@dataclass
class Seen:
    """One request the fake answered."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int = 0

    def json(self) -> Any:
        return json.loads(self.body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeManager


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        self.server.fake.answer(self)

    def do_POST(self) -> None:
        self.server.fake.answer(self)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class FakeManager:
    """The manager's half of docs/boot-protocol.md for deployment 42, on 127.0.0.1.

    ``node_host`` is the address the node reaches this server at (10.0.2.2 from a QEMU guest),
    used in the plan's image URL. ``cuts={index: n}`` closes the connection after n bytes the
    first time range ``index`` is asked for from its start (range 0 starts the head);
    ``busy=(index, n)`` answers the
    first n requests for range ``index`` with 503 (a manager restarting); ``corrupt`` ranges are
    served with one byte changed; ``cancel_at`` answers the n-th progress report (from 1) with
    410 Gone.
    """

    def __init__(
        self,
        image: bytes,
        *,
        resume: int = 0,
        progress_every: int = 1,
        token_used: bool = False,
        cuts: dict[int, int] | None = None,
        busy: tuple[int, int] | None = None,
        corrupt: Collection[int] = (),
        corrupt_once: Collection[int] = (),
        cancel_at: int | None = None,
        node_host: str = "127.0.0.1",
        files: dict[str, bytes] = FILES,
    ) -> None:
        self.image = image
        self.ranges = plan_ranges(image)
        self.token = "tok-" + secrets.token_hex(8)
        self.session = "ses-" + secrets.token_urlsafe(12)
        self.resume, self.progress_every = resume, progress_every
        self.token_used, self.busy, self.corrupt = token_used, busy, set(corrupt)
        self.corrupt_once = set(corrupt_once)  # served corrupt the first time only
        self.cuts = dict(cuts or {})
        self.cancel_at, self.node_host = cancel_at, node_host
        self.tar = files_tar(files)
        self.served = [0] * len(self.ranges)  # image bytes sent, per plan range
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeManager:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    @property
    def url(self) -> str:
        return f"http://{self.node_host}:{self.port}"

    def plan(self) -> str:
        lines = [
            "piman-plan 1",
            f"deployment {DEPLOYMENT}",
            f"session {self.session}",
            f"image {self.url}/deploy/{DEPLOYMENT}/image",
            f"image_bytes {len(self.image)}",
            f"block_bytes {BLOCK}",
            f"head_blocks {HEAD_BLOCKS}",
            f"resume {self.resume}",
            f"progress_every {self.progress_every}",
            *(f"range {r.first} {r.last} {r.sha256}" for r in self.ranges),
            "end",
        ]
        return "\n".join(lines) + "\n"

    # what the tests read

    def progress(self) -> list[dict[str, Any]]:
        return [s.json() for s in self.requests if s.path.endswith("/progress")]

    def result(self) -> dict[str, Any] | None:
        results = [s.json() for s in self.requests if s.path.endswith("/result")]
        assert len(results) <= 1, results
        return results[0] if results else None

    def image_requests(self) -> list[Seen]:
        return [s for s in self.requests if s.path.partition("?")[0].endswith("/image")]

    # the protocol

    def answer(self, h: _Handler) -> None:
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        seen = Seen(h.command, h.path, dict(h.headers.items()), body)
        with self._lock:
            self.requests.append(seen)
        auth = h.headers.get("Authorization", "")
        here = f"/boot/v1/deployments/{DEPLOYMENT}"
        if (h.command, h.path) == ("POST", "/boot/v1/hello"):
            if auth != f"Bearer {self.token}":
                self._reply(h, seen, 403, b"unknown token\n")
            elif self.token_used:
                self._reply(h, seen, 403, b"token already used\n")
            else:
                self.token_used = True
                self._reply(h, seen, 200, self.plan().encode())
        elif auth != f"Bearer {self.session}":
            self._reply(h, seen, 403, b"not this deployment's session\n")
        elif h.command == "GET" and h.path.startswith(f"/deploy/{DEPLOYMENT}/image"):
            self._image(h, seen)
        elif (h.command, h.path) == ("POST", f"{here}/progress"):
            count = len(self.progress())
            self._reply(h, seen, 410 if count == self.cancel_at else 204)
        elif (h.command, h.path) == ("GET", f"{here}/files.tar"):
            self._reply(h, seen, 200, self.tar, "application/x-tar")
        elif (h.command, h.path) == ("POST", f"{here}/result"):
            self._reply(h, seen, 204)
        else:
            self._reply(h, seen, 404, b"no such route\n")

    def _image(self, h: _Handler, seen: Seen) -> None:
        """``?end=<b>`` caps the answer; ``Range: bytes=<a>-`` starts it (206), else
        ``?start=<a>`` (200), else byte 0."""
        size = len(self.image)
        query = re.fullmatch(
            rf"/deploy/{DEPLOYMENT}/image(?:\?(?:start=(\d+)&)?end=(\d+))?", h.path
        )
        asked = re.fullmatch(r"bytes=(\d+)-", h.headers.get("Range", "bytes=0-"))
        if query is None or asked is None or (query[1] is not None and "Range" in h.headers):
            self._reply(h, seen, 400, b"bad image request\n")
            return
        a = int(query[1] if query[1] is not None else asked[1])
        b = min(int(query[2]), size - 1) if query[2] is not None else size - 1
        if a > b:
            self._reply(h, seen, 416, b"", extra={"Content-Range": f"bytes */{size}"})
            return
        if self.busy is not None and self.busy[1] > 0 and a == self.ranges[self.busy[0]].start:
            self.busy = (self.busy[0], self.busy[1] - 1)
            self._reply(h, seen, 503, b"restarting\n")
            return
        data = bytearray(self.image[a : b + 1])
        for r in self.ranges:
            if (
                (r.index in self.corrupt or r.index in self.corrupt_once)
                and a < r.end
                and r.start <= b
            ):
                data[max(r.start, a) - a] ^= 0xFF
                self.corrupt_once.discard(r.index)
        send = len(data)
        cut = next((i for i in self.cuts if self.ranges[i].start == a), None)
        if cut is not None:
            send = self.cuts.pop(cut)
        seen.status = 206 if "Range" in h.headers else 200
        h.send_response(seen.status)
        if seen.status == 206:
            h.send_header("Content-Range", f"bytes {a}-{b}/{size}")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(bytes(data[:send]))
        h.wfile.flush()
        for r in self.ranges:
            self.served[r.index] += max(0, min(a + send, r.end) - max(a, r.start))
        if cut is not None:  # the connection drops in the middle of the body
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)

    def _reply(
        self,
        h: _Handler,
        seen: Seen,
        status: int,
        body: bytes = b"",
        content_type: str = "text/plain",
        extra: dict[str, str] | None = None,
    ) -> None:
        seen.status = status
        h.send_response(status)
        for name, value in (extra or {}).items():
            h.send_header(name, value)
        if status != 204:
            h.send_header("Content-Type", content_type)
            h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)


# --- running the installer --------------------------------------------------------------


@dataclass
class Run:
    """What one installer run did: its exit code, console, and its writes on the target."""

    code: int
    console: str
    write_opens: int = 0  # opens of the target for writing (by dd, or for wget's stream)
    seeks: list[int] = field(default_factory=list)  # the byte offset of each write, in order


def busybox_bin(where: Path, openssl: bool = True) -> Path:
    """A PATH of busybox applets and openssl (what the initramfs has); without ``openssl``,
    busybox applets only (the installer then hashes with busybox's sha256sum)."""
    needs_tool("busybox", *(["openssl"] if openssl else []))
    busybox = Path(shutil.which("busybox") or "busybox").resolve()
    where.mkdir(exist_ok=True)
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True)
    for name in applets.stdout.split():
        if not (where / name).exists():
            (where / name).symlink_to(busybox)
    if openssl and not (where / "openssl").exists():
        (where / "openssl").symlink_to(Path(shutil.which("openssl") or "openssl").resolve())
    return where


def run_installer(
    fake: FakeManager, target: Path, work: Path, token: str | None = None, openssl: bool = True
) -> Run:
    """installer.sh under busybox sh and strace, as the initramfs would run it, in test mode."""
    needs_tool("strace")
    work.mkdir(exist_ok=True)
    cmdline = work / "cmdline"
    cmdline.write_text(
        f"console=ttyAMA0 piman.url={fake.url} piman.token={token or fake.token} "
        f"piman.node=pi-07 piman.disk={target}\n"
    )
    path = busybox_bin(work / "bin", openssl)
    env = {
        "PATH": str(path),
        "PIMAN_CMDLINE": str(cmdline),
        "PIMAN_NO_NET": "1",
        "PIMAN_NO_REBOOT": "1",
        "PIMAN_TMP": str(work / "tmp"),
        "PIMAN_RETRY_SECONDS": "15",
        "PIMAN_RETRY_PAUSE": "0.2",
    }
    trace = work / "strace.log"
    strace = shutil.which("strace") or "strace"
    done = subprocess.run(
        [strace, "-f", "-qq", "-y", "--seccomp-bpf", "-e", "trace=openat,lseek", "-o",
         str(trace), str(path / "sh"), str(INSTALLER)],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    run = Run(done.returncode, done.stdout + done.stderr)
    disk = re.escape(os.path.realpath(target))
    for line in trace.read_text().splitlines():
        # dd's and the shell's (<>) opens create; losetup's (customise, as root) does not
        if re.search(rf'openat\(.*"{re.escape(str(target))}", O_(WRONLY|RDWR)\|O_CREAT', line):
            run.write_opens += 1
        seek = re.search(rf"lseek\(1<{disk}>, (\d+), SEEK_CUR", line)  # or "<unfinished ...>"
        if seek and int(seek[1]) > 0:  # 0: wget asking where its output stands
            run.seeks.append(int(seek[1]))
    return run


def blank_target(path: Path, size: int) -> bytes:
    data = bytes([FILL]) * size
    path.write_bytes(data)
    return data


def assert_holds_image(target: bytes, fake: FakeManager) -> None:
    head = HEAD_BLOCKS * BLOCK
    assert target[:head] == fake.image[:head], "the head differs"
    for r in fake.ranges:
        assert target[r.start : r.end] == fake.image[r.start : r.end], f"range {r.index} differs"


def body_ranges(ranges: list[PlanRange]) -> list[PlanRange]:
    """The plan's ranges outside the head (what resume and ranges_done count)."""
    return [r for r in ranges if not r.in_head]


def runs_of(ranges: list[PlanRange]) -> list[list[PlanRange]]:
    """The runs the installer fetches and writes with one request each: adjacent
    ranges (the next starts at the block after the last), at most RUN_BYTES together."""
    runs: list[list[PlanRange]] = []
    for r in ranges:
        if runs and runs[-1][-1].last + 1 == r.first and r.end - runs[-1][0].start <= RUN_BYTES:
            runs[-1].append(r)
        else:
            runs.append([r])
    return runs


def run_starts(ranges: list[PlanRange]) -> list[int]:
    """The byte offset each run is written at, in order."""
    return [run[0].start for run in runs_of(ranges)]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    data = make_image(tmp_path_factory.mktemp("image"))
    ranges = plan_ranges(data)
    assert len([r for r in ranges if not r.in_head]) >= 5, ranges
    assert any(r.last - r.first + 1 == MAX_RANGE_BLOCKS for r in ranges), "no range cut at 1024"
    return data


def _kernel_mounts_vfat() -> bool:
    return "vfat" in Path("/proc/filesystems").read_text()


# --- the behaviours ---------------------------------------------------------------------


def test_writes_verifies_and_reports_the_image(image: bytes, tmp_path: Path) -> None:
    target = tmp_path / "sd.img"
    blank_target(target, len(image) + MIB)
    with FakeManager(image) as fake:
        run = run_installer(fake, target, tmp_path / "work")
    assert run.code == 0, run.console
    # the console goes on to the end (a stream's redirections must not swallow the log)
    assert run.console.rstrip().endswith("piman-installer: done: rebooting"), run.console
    written = target.read_bytes()
    assert_holds_image(written, fake)
    assert written[len(image) :] == bytes([FILL]) * MIB, "wrote past the image"
    # every range fetched once, written once: one request and one dd per run of adjacent
    # ranges (plus the erase and the head)
    body = body_ranges(fake.ranges)
    assert any(len(run) > 1 for run in runs_of(body)), "no adjacent ranges in the test image"
    assert fake.served == [r.end - r.start for r in fake.ranges]
    assert run.seeks == run_starts(body)
    assert run.write_opens == len(run.seeks) + 2
    head = [r for r in fake.ranges if r.in_head]
    assert len(fake.image_requests()) == len(head) + len(runs_of(body))
    reports = fake.progress()
    assert reports[0]["step"] == "hello"
    final = [p for p in reports if p["step"] == "write_image"][-1]
    assert final["ranges_done"] == len(body_ranges(fake.ranges))
    assert final["bytes_total"] == sum(r.end - r.start for r in fake.ranges)
    assert {"hello", "write_image", "verify", "customise"} <= {p["step"] for p in reports}
    result = fake.result()
    assert result is not None
    assert result["ok"] is True, result
    assert result["bytes_written"] == final["bytes_total"]
    assert fake.requests[-1].path.endswith("/result")
    if result.get("customise") == "skipped":  # a regular file needs root and a vfat kernel
        if os.geteuid() != 0:
            assert "not root" in result["reason"]
        else:
            assert not _kernel_mounts_vfat(), result
            assert "vfat" in result["reason"]
    else:
        needs_tool("mtype")
        for name, data in KEPT.items():
            shown = subprocess.run(
                ["mtype", "-i", f"{target}@@{MIB}", f"::{name}"], capture_output=True, check=True
            )
            assert shown.stdout == data, name
        for gone in ("piman/remove", "kernel8.img"):
            shown = subprocess.run(["mtype", "-i", f"{target}@@{MIB}", f"::{gone}"],
                                   capture_output=True, check=False)  # fmt: skip
            assert shown.returncode != 0, gone


def test_cut_downloads_resume_where_they_stopped(image: bytes, tmp_path: Path) -> None:
    target = tmp_path / "sd.img"
    blank_target(target, len(image))
    body = body_ranges(plan_ranges(image))
    big = max(runs_of(body), key=lambda run: run[-1].end - run[0].start)
    assert len(big) > 1
    assert big[0].end - big[0].start > 1_000_000
    with FakeManager(image, cuts={0: 1000, big[0].index: 1_000_000}) as fake:
        run = run_installer(fake, target, tmp_path / "work")
    assert run.code == 0, run.console
    asked = [(s.path.partition("?")[2], s.headers.get("Range"), s.status)
             for s in fake.image_requests()]  # fmt: skip
    # the head (checked before it is written): fetched into a file, continued with a Range
    head_end = f"end={fake.ranges[0].end - 1}"  # the head's first range: the partition table
    assert asked[:2] == [(head_end, None, 200), (head_end, "bytes=1000-", 206)]
    # the body: streamed onto the disk, one request for the whole run of adjacent ranges; a cut
    # stream goes on from the byte where wget's last write ended: nothing is fetched or written
    # twice
    big_end = big[-1].end - 1
    again = big[0].start + 1_000_000
    assert (f"start={big[0].start}&end={big_end}", None, 200) in asked
    assert (f"start={again}&end={big_end}", None, 200) in asked
    assert fake.served == [r.end - r.start for r in fake.ranges], "image bytes fetched twice"
    assert run.seeks == sorted([*run_starts(body), again]), "a range was written twice"
    assert_holds_image(target.read_bytes(), fake)
    result = fake.result()
    assert result is not None
    assert result["ok"] is True


def test_manager_restarting_is_waited_for(image: bytes, tmp_path: Path) -> None:
    target = tmp_path / "sd.img"
    blank_target(target, len(image))
    body = body_ranges(plan_ranges(image))
    second = runs_of(body)[1][0]  # the first range of the second request for the body
    with FakeManager(image, busy=(second.index, 3)) as fake:
        run = run_installer(fake, target, tmp_path / "work")
    assert run.code == 0, run.console
    asked = [s.status for s in fake.image_requests() if f"start={second.start}&" in s.path]
    assert asked == [503, 503, 503, 200]
    assert sorted(set(run.seeks)) == run_starts(body)  # the dd of each 503 got no byte to write
    assert fake.served == [r.end - r.start for r in fake.ranges]
    assert_holds_image(target.read_bytes(), fake)


@pytest.mark.parametrize("openssl", [True, False], ids=["openssl", "busybox-sha256sum"])
def test_a_range_corrupted_on_the_way_is_found_by_verify_and_repaired(
    image: bytes, tmp_path: Path, openssl: bool
) -> None:
    target = tmp_path / "sd.img"
    blank_target(target, len(image))
    body = body_ranges(plan_ranges(image))
    bad = max(runs_of(body), key=len)[-1]  # not the first range of its run
    with FakeManager(image, corrupt_once={bad.index}) as fake:
        run = run_installer(fake, target, tmp_path / "work", openssl=openssl)
    assert run.code == 0, run.console
    assert ("hashing: openssl and sha256sum" in run.console) is openssl
    assert f"range {bad.index} reads back different: fetching it again (1)" in run.console
    # written with its run, read back different, fetched alone and written again
    assert run.seeks == [*run_starts(body), bad.start]
    assert fake.served[bad.index] == 2 * (bad.end - bad.start)
    assert_holds_image(target.read_bytes(), fake)
    result = fake.result()
    assert result is not None
    assert result["ok"] is True


def test_a_range_that_stays_corrupt_fails_verify_and_the_card_does_not_boot(
    image: bytes, tmp_path: Path
) -> None:
    target = tmp_path / "sd.img"
    blank_target(target, len(image))
    body = body_ranges(plan_ranges(image))
    bad = max(runs_of(body), key=len)[-1]
    with FakeManager(image, corrupt={bad.index}) as fake:
        run = run_installer(fake, target, tmp_path / "work")
    assert run.code == 1, run.console
    result = fake.result()
    assert result is not None
    assert result["ok"] is False
    assert result["step"] == "verify"
    assert f"range {bad.index} (blocks {bad.first}-{bad.last})" in result["reason"]
    assert run.seeks == run_starts(body)  # the repair fetch is checked first: never written
    written = target.read_bytes()
    assert written[:BLOCK] == bytes(BLOCK), "the head must not be written after a failure"


@pytest.mark.parametrize("case", ["wrong", "reused"])
def test_refused_hello_leaves_the_disk_untouched(image: bytes, tmp_path: Path, case: str) -> None:
    target = tmp_path / "sd.img"
    before = blank_target(target, len(image))
    with FakeManager(image, token_used=case == "reused") as fake:
        token = "tok-not-this-one" if case == "wrong" else None
        run = run_installer(fake, target, tmp_path / "work", token=token)
    assert run.code == 2, run.console
    assert "hello refused (HTTP 403)" in run.console
    assert target.read_bytes() == before
    assert run.write_opens == 0
    assert [(s.method, s.path, s.status) for s in fake.requests] == [
        ("POST", "/boot/v1/hello", 403)
    ]


def test_image_larger_than_the_disk_is_refused_before_erasing(image: bytes, tmp_path: Path) -> None:
    target = tmp_path / "sd.img"
    before = blank_target(target, len(image) - MIB)
    with FakeManager(image) as fake:
        run = run_installer(fake, target, tmp_path / "work")
    assert run.code == 1, run.console
    assert target.read_bytes() == before
    assert run.write_opens == 0
    assert fake.image_requests() == []
    result = fake.result()
    assert result is not None
    assert result["ok"] is False
    assert result["step"] == "hello"
    assert "larger than" in result["reason"]


def test_a_disk_that_refuses_writes_fails_at_once(image: bytes, tmp_path: Path) -> None:
    """A write error is the disk's, not the network's: reported at once, never asked again."""
    needs_root()  # a small tmpfs: the target's holes cannot be filled past its size
    needs_tool("mount", "umount")
    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(full)], check=True)
    try:
        target = full / "sd.img"
        with target.open("wb") as f:
            f.truncate(len(image))  # sparse: the size check passes, the writes do not fit
        with FakeManager(image) as fake:
            run = run_installer(fake, target, tmp_path / "work")
    finally:
        subprocess.run(["umount", str(full)], check=True)
    assert run.code == 1, run.console
    assert "going on in" not in run.console, "a write error was taken for a network one"
    result = fake.result()
    assert result is not None
    assert result["ok"] is False
    assert result["step"] == "write_image"
    assert "No space left on device" in result["reason"], result
    streams = [s.path for s in fake.image_requests() if "?start=" in s.path]
    assert len(streams) == len(set(streams)), "the run that could not be written was asked again"


def test_resume_skips_the_ranges_already_written(image: bytes, tmp_path: Path) -> None:
    target = tmp_path / "sd.img"
    disk = bytearray(blank_target(target, len(image)))
    body = body_ranges(plan_ranges(image))
    done, spoilt = body[:3], body[1]
    for r in done:  # what the interrupted run wrote and synced
        disk[r.start : r.end] = image[r.start : r.end]
    disk[spoilt.end - 1] ^= 0xFF  # what the card kept wrong: this run reads the ranges back
    target.write_bytes(disk)
    with FakeManager(image, resume=3) as fake:
        run = run_installer(fake, target, tmp_path / "work")
    assert run.code == 0, run.console
    assert f"range {spoilt.index} reads back different: fetching it again (1)" in run.console
    for r in fake.ranges:
        fetched = r.end - r.start if r not in done or r == spoilt else 0
        assert fake.served[r.index] == fetched, r
    assert run.seeks == [*run_starts(body[3:]), spoilt.start]
    assert fake.progress()[0]["ranges_done"] == 3
    assert_holds_image(target.read_bytes(), fake)
    result = fake.result()
    assert result is not None
    assert result["ok"] is True


def test_cancelled_deployment_stops_at_once(image: bytes, tmp_path: Path) -> None:
    target = tmp_path / "sd.img"
    blank_target(target, len(image))
    with FakeManager(image, cancel_at=2) as fake:  # the first report while writing
        run = run_installer(fake, target, tmp_path / "work")
    assert run.code == 3, run.console
    assert "cancelled (410 Gone)" in run.console
    gone = [s for s in fake.requests if s.status == 410]
    assert len(gone) == 1
    assert fake.requests[-1] is gone[0], "asked for more after 410"
    # every write is a run streamed from a request made before the 410, none after it
    streamed = [int(s.path.partition("?start=")[2].partition("&")[0])
                for s in fake.image_requests() if "?start=" in s.path]  # fmt: skip
    assert run.seeks == streamed, "wrote what it had not asked for before the 410"
    written = [one for one in runs_of(body_ranges(fake.ranges)) if one[0].start in run.seeks]
    assert len(written) == len(run.seeks)
    # ranges_done counts the ranges read back, which may trail the writes (background reader)
    assert gone[0].json()["ranges_done"] <= sum(map(len, written))
    assert fake.result() is None
    assert target.read_bytes()[:BLOCK] == bytes(BLOCK), "the head was written"


def test_customise_is_skipped_with_a_reason_without_root(image: bytes) -> None:
    needs_root()  # to run the installer as nobody
    needs_tool("setpriv", "busybox")
    shared = Path(tempfile.mkdtemp(prefix="piman-nobody-"))  # pytest's tmp_path is root's only
    try:
        shared.chmod(0o777)
        target = shared / "sd.img"
        blank_target(target, len(image))
        target.chmod(0o666)
        script = shared / "installer.sh"
        shutil.copyfile(INSTALLER, script)
        with FakeManager(image) as fake:
            (shared / "cmdline").write_text(
                f"piman.url={fake.url} piman.token={fake.token} piman.disk={target}\n"
            )
            env = {
                "PATH": str(busybox_bin(shared / "bin")),
                "PIMAN_CMDLINE": str(shared / "cmdline"),
                "PIMAN_NO_NET": "1",
                "PIMAN_NO_REBOOT": "1",
                "PIMAN_TMP": str(shared / "tmp"),
            }
            done = subprocess.run(
                [shutil.which("setpriv") or "setpriv", "--reuid=65534", "--regid=65534",
                 "--clear-groups", str(shared / "bin" / "sh"), str(script)],
                env=env, capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert_holds_image(target.read_bytes(), fake)
        assert fake.result() == {
            "ok": True,
            "bytes_written": sum(r.end - r.start for r in fake.ranges),
            "customise": "skipped",
            "reason": f"not root: partition 1 of the regular file {target} needs a loop device",
        }
    finally:
        shutil.rmtree(shared)
