"""What `piman server` leaves on disk is for its own user only, whatever the umask.

``data_dir`` holds the database (password hashes, token digests, audit log), the metrics store
and the logs (which name nodes, users and addresses): under the usual umask 022 they came out
0755/0644, readable by every account on the manager machine. The server runs here as a real
process started with umask 022.
"""

from __future__ import annotations

import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.support import free_port

CONFIG = """\
manager:
  address: 198.18.0.1
  network: 198.18.0.0/24
  data_dir: {data_dir}
  http: "127.0.0.1:{port}"
monitoring: {{scrape_interval: 15s}}
"""

PRIVATE_FILES = [
    "piman.db",
    "metrics.db",
    "logs/piman.log",
    "session.key",
    "local.key",
    "initial-admin-password",
]


def mode(path: Path) -> str:
    return oct(stat.S_IMODE(path.stat().st_mode))


@contextmanager
def running_server(tmp: Path, data_dir: Path) -> Iterator[Path]:
    """`piman server` under umask 022, from when its metrics store exists until SIGTERM after the
    block; yields its stderr's file."""
    port = free_port()
    config = tmp / "piman.yaml"
    config.write_text(CONFIG.format(data_dir=data_dir, port=port))
    stderr = tmp / "stderr.log"
    with stderr.open("wb") as err:
        proc = subprocess.Popen(
            ["sh", "-c", 'umask 022 && exec "$0" "$@"', sys.executable, "-m", "piman", "server",
             "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, stderr.read_text()
            assert time.monotonic() < deadline, stderr.read_text()
            try:
                up = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                up = False
            if up and (data_dir / "metrics.db-wal").exists():
                break
            time.sleep(0.2)
        yield stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_new_data_dir_and_everything_secret_in_it_are_private(tmp_path: Path) -> None:
    data_dir = tmp_path / "state" / "piman"  # neither exists yet: the server makes both
    with running_server(tmp_path, data_dir) as stderr:
        assert mode(data_dir.parent) == "0o700", stderr.read_text()
        assert mode(data_dir) == "0o700"
        assert mode(data_dir / "logs") == "0o700"
        got = {name: mode(data_dir / name) for name in PRIVATE_FILES}
        assert got == dict.fromkeys(PRIVATE_FILES, "0o600")
        # SQLite's companions (write-ahead log, shared memory) while the databases are open
        companions = {
            p.name: mode(p) for p in data_dir.iterdir() if p.suffix in (".db-wal", ".db-shm")
        }
        assert companions == {
            f"{db}.db-{kind}": "0o600" for db in ("piman", "metrics") for kind in ("wal", "shm")
        }


def test_an_older_data_dir_readable_by_others_is_made_private(tmp_path: Path) -> None:
    data_dir = tmp_path / "piman"
    (data_dir / "logs").mkdir(parents=True)
    with running_server(tmp_path, data_dir):
        pass
    for name in ("piman.db", "metrics.db", "logs/piman.log"):  # as an older piman left them
        (data_dir / name).chmod(0o644)

    with running_server(tmp_path, data_dir) as stderr:
        got = {name: mode(data_dir / name) for name in PRIVATE_FILES}
        said = stderr.read_text()
        assert got == dict.fromkeys(PRIVATE_FILES, "0o600"), said
    for name in ("piman.db", "metrics.db", "logs/piman.log"):
        assert f"{data_dir / name} was readable by others (0644); now 0600" in said, said
    assert "Traceback" not in said
