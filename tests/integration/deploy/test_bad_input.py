"""Bad input to reinstalls, through the real CLI and API: each is one clear line, exit 2 (or the
HTTP status that says it), and nothing half-done is left behind."""

from __future__ import annotations

import lzma
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from piman.sim.image import stand_in_installer_tree
from tests.support import api_token, bearer, free_port, needs_root, needs_tool
from tests.unit.deploy.test_images import build_image

PIMAN = [sys.executable, "-m", "piman"]


def config_file(root: Path, data: Path, http: int = 0) -> Path:
    config = {
        "manager": {
            "address": "198.18.0.1",
            "data_dir": str(data),
            "http": f"127.0.0.1:{http or free_port()}",
        },
        "deploy": {"image_listen": f"127.0.0.1:{free_port()}"},
        "switches": [{"name": "rack1", "driver": "manual"}],
        "nodes": [
            {"name": "pi1", "switch": "rack1", "port": 1, "ip": "198.18.0.11"},
            {"name": "loose", "ip": "198.18.0.12"},  # no switch port: nothing can power it
        ],
    }
    path = root / "piman.yaml"
    path.write_text(yaml.safe_dump(config))
    stand_in_installer_tree(data)  # placeholders: no installer boots here
    return path


def piman(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PIMAN, *args], capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def leftovers(data: Path) -> list[str]:
    envs = data / "environments"
    return sorted(p.name for p in envs.iterdir()) if envs.exists() else []


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return build_image(tmp_path / "lite.img")


def test_a_corrupt_image_is_refused_in_one_line_and_leaves_nothing(
    tmp_path: Path, image: Path
) -> None:
    data = tmp_path / "data"
    config = config_file(tmp_path, data)
    raw = image.read_bytes()
    cut = tmp_path / "cut.img.xz"  # a download that stopped half way
    packed = lzma.compress(raw)
    cut.write_bytes(packed[: len(packed) // 2])
    result = piman("env", "add", str(cut), "--name", "lite", "-c", str(config))
    assert result.returncode == 2
    assert one_line(result).startswith("error: cut.img.xz: ")
    assert "truncated" in result.stderr
    # A table that promises more than the file holds (a truncated raw image).
    short = tmp_path / "short.img"
    short.write_bytes(raw[: len(raw) // 2])
    result = piman("env", "add", str(short), "--name", "lite", "-c", str(config))
    assert result.returncode == 2
    assert "short.img" in one_line(result)
    wrong = piman("env", "add", str(image), "--name", "lite", "--sha256", "0" * 64,
                  "-c", str(config))  # fmt: skip
    assert wrong.returncode == 2
    assert "its SHA-256 is" in one_line(wrong)
    assert leftovers(data) == []
    listed = piman("env", "list", "-c", str(config))
    assert "0 environments" in listed.stdout


def test_a_full_disk_during_import_is_one_line_and_leaves_nothing(
    tmp_path: Path, image: Path
) -> None:
    needs_root()
    needs_tool("mount")
    data = tmp_path / "data"
    data.mkdir()
    # 12 MiB of room for an image with more than that in use: the import runs out of space.
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(data)], check=True)
    try:
        big = build_image(tmp_path / "big.img", root={"data.bin": os.urandom(14 << 20)},
                          root_mib=24)  # fmt: skip
        config = config_file(tmp_path, data)
        result = piman("env", "add", str(big), "--name", "big", "-c", str(config))
        assert result.returncode != 0
        line = one_line(result)
        assert "No space left on device" in line or "no space" in line.lower(), line
        assert leftovers(data) == []
    finally:
        subprocess.run(["umount", str(data)], check=False)


@pytest.fixture
def manager(tmp_path: Path, image: Path) -> Iterator[tuple[str, dict[str, str], Path]]:
    data = tmp_path / "data"
    port = free_port()
    config = config_file(tmp_path, data, port)
    added = piman("env", "add", str(image), "--name", "lite", "-c", str(config))
    assert added.returncode == 0, added.stderr
    log = (tmp_path / "manager.log").open("wb")
    proc = subprocess.Popen([*PIMAN, "server", "-c", str(config)], stdout=log,
                            stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None
            subprocess.run(["sleep", "0.1"], check=True)
        password = (data / "initial-admin-password").read_text().strip()
        yield url, bearer(api_token(url, "admin", password)), config
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()


def test_deploy_refuses_what_cannot_be_done_in_one_line(
    manager: tuple[str, dict[str, str], Path],
) -> None:
    url, headers, config = manager

    def post(body: dict[str, object]) -> httpx.Response:
        return httpx.post(f"{url}/api/v1/deployments", headers=headers, json=body, timeout=10)

    unknown_env = post({"nodes": ["pi1"], "environment": "nope"})
    assert unknown_env.status_code == 404
    assert unknown_env.json()["detail"] == "no environment named 'nope'"
    unknown_node = post({"nodes": ["ghost"], "environment": "lite"})
    assert unknown_node.status_code == 404
    loose = post({"nodes": ["loose"], "environment": "lite"})
    assert loose.status_code == 422
    assert "has no switch port" in loose.json()["detail"]
    # All or none: a bad node in the list starts nothing for the good one.
    mixed = post({"nodes": ["pi1", "loose"], "environment": "lite"})
    assert mixed.status_code == 422
    assert httpx.get(f"{url}/api/v1/deployments", headers=headers).json() == []
    # The CLI says the same in one line, exit 2.
    result = piman("deploy", "loose", "--env", "lite", "--no-wait", "-c", str(config))
    assert result.returncode == 2
    assert "has no switch port" in one_line(result)
    result = piman("reinstall", "rack1", "9", "-c", str(config))
    assert result.returncode == 2
    assert one_line(result) == "error: no node on rack1 port 9"
    first = post({"nodes": ["pi1"], "environment": "lite"})
    assert first.status_code == 201
    again = piman("deploy", "pi1", "--env", "lite", "--no-wait", "-c", str(config))
    assert again.returncode == 2
    assert "already being deployed" in one_line(again)
    removing = piman("env", "remove", "lite", "--yes", "-c", str(config))
    assert removing.returncode == 2
    assert "lite" in one_line(removing)
