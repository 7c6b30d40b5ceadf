"""First-boot files per customisation format: what each format writes, checked by real tools."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from piman.deploy.customise import FIRSTRUN_WORDS, FirstBoot, render, to_tar
from tests.support import needs_tool

HASH = "$6$salt$3Lx5F6zL0m4Dks7tZQwZyO1mZKlwF1QjQ0P6dB2yNnXh3bUoW0Ep6r0a1b2c3d4e5f6g7h8i9j0k"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK0wmN/Cr3JXqmLW7u+g9pTh+wyqDHpSQEIQczXkVx9q ops@lab"
AGENT = {"piman/__init__.py": b"", "piman/monitor/agent/app.py": b"# agent\n"}
CMDLINE = "console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 rootwait"


def boot(**kw: object) -> FirstBoot:
    base: dict[str, object] = {
        "hostname": "rack1-07",
        "instance_id": "piman-42",
        "password_hash": HASH,
        "ssh_keys": (KEY,),
        "timezone": "Europe/Oslo",
        "agent_files": AGENT,
        "agent_token": "scrape-s3cret",
    }
    base.update(kw)
    return FirstBoot(**base)  # type: ignore[arg-type]


def test_firstrun_writes_userconf_ssh_firstrun_and_the_cmdline_words_once() -> None:
    out = render("firstrun", boot(), cmdline=CMDLINE)
    assert out.files["userconf.txt"] == f"pi:{HASH}\n".encode()
    assert out.files["ssh"] == b""
    cmdline = out.files["cmdline.txt"].decode()
    assert cmdline == f"{CMDLINE} {FIRSTRUN_WORDS}\n"
    again = render("firstrun", boot(), cmdline=cmdline)  # reinstall over a customised cmdline
    assert again.files["cmdline.txt"].decode().count("systemd.run=") == 1
    script = out.files["firstrun.sh"].decode()
    assert "NEW_HOSTNAME=rack1-07" in script
    assert KEY in script
    assert "Europe/Oslo" in script
    assert "systemctl enable piman-agent" in script
    assert out.files["piman-agent/agent.env"] == b"PIMAN_AGENT_TOKEN=scrape-s3cret\n"
    assert out.files["piman-agent/piman/monitor/agent/app.py"] == b"# agent\n"
    assert "ExecStart=/usr/bin/python3 -m piman.monitor.agent --port 9110" in (
        out.files["piman-agent/piman-agent.service"].decode()
    )
    assert out.notes == ()


def test_firstrun_script_is_valid_bash_and_removes_itself_from_the_cmdline(
    tmp_path: Path,
) -> None:
    needs_tool("bash")
    out = render("firstrun", boot(ssh_keys=(), timezone=None, agent_files={}), cmdline=CMDLINE)
    script = tmp_path / "firstrun.sh"
    script.write_bytes(out.files["firstrun.sh"])
    check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    # The tail of the script (its clean-up) on a copy of the boot partition.
    (tmp_path / "cmdline.txt").write_bytes(out.files["cmdline.txt"])
    tail = out.files["firstrun.sh"].decode().split('rm -f "$BOOT/firstrun.sh"')[1]
    cleanup = tmp_path / "cleanup.sh"
    cleanup.write_text('BOOT="$(dirname "$(readlink -f "$0")")"\nrm -f "$BOOT/firstrun.sh"' + tail)
    subprocess.run(["bash", str(cleanup)], check=True)
    assert not script.exists()
    assert (tmp_path / "cmdline.txt").read_text().strip() == CMDLINE


def test_cloud_init_files_pass_cloud_inits_own_schema_check(tmp_path: Path) -> None:
    needs_tool("cloud-init")
    out = render("cloudinit", boot(), cmdline=None)
    user_data = tmp_path / "user-data"
    user_data.write_bytes(out.files["user-data"])
    result = subprocess.run(
        ["cloud-init", "schema", "--config-file", str(user_data)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid cloud-config" in result.stdout
    config = yaml.safe_load(out.files["user-data"])
    (user,) = config["users"]
    assert (user["name"], user["passwd"], user["ssh_authorized_keys"]) == ("pi", HASH, [KEY])
    assert user["lock_passwd"] is False
    assert config["hostname"] == "rack1-07"
    assert config["runcmd"]  # the agent is installed and started
    meta = yaml.safe_load(out.files["meta-data"])
    assert meta == {"instance-id": "piman-42", "local-hostname": "rack1-07"}
    assert yaml.safe_load(out.files["network-config"])["network"]["version"] == 2
    assert "cmdline.txt" not in out.files  # cloud-init needs no change there


def test_cloud_init_without_a_password_locks_it_and_refuses_password_ssh() -> None:
    config = yaml.safe_load(
        render("cloudinit", boot(password_hash=None), cmdline=None).files["user-data"]
    )
    assert config["users"][0]["lock_passwd"] is True
    assert "passwd" not in config["users"][0]
    assert config["ssh_pwauth"] is False


def test_an_image_without_a_mechanism_gets_its_files_and_a_note() -> None:
    out = render("none", boot(extra_files={"motd.txt": b"hello"}), cmdline=CMDLINE)
    assert out.files["motd.txt"] == b"hello"
    assert "firstrun.sh" not in out.files
    assert "user-data" not in out.files
    assert out.notes
    assert "not applied" in out.notes[0]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"hostname": "Rack1_07"}, "not a host name"),
        ({"hostname": "-x"}, "not a host name"),
        ({"ssh_keys": ("ssh-ed25519 A\nB",)}, "one non-empty line"),
    ],
)
def test_bad_input_is_one_clear_error(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        boot(**kw)


def test_extra_files_stay_on_the_boot_partition() -> None:
    for path in ("/etc/shadow", "../etc/shadow", "a/../../b"):
        with pytest.raises(ValueError, match="relative path"):
            render("none", boot(extra_files={path: b"x"}), cmdline=None)
    with pytest.raises(ValueError, match="not a customisation format"):
        render("ignition", boot(), cmdline=None)


def test_the_tar_extracts_with_busybox_to_the_same_files(tmp_path: Path) -> None:
    needs_tool("busybox")
    files = render("firstrun", boot(), cmdline=CMDLINE).files
    archive = tmp_path / "files.tar"
    archive.write_bytes(to_tar(files))
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["busybox", "tar", "-xf", str(archive), "-C", str(out)], check=True)
    for path, data in files.items():
        assert (out / path).read_bytes() == data, path
    assert to_tar(files) == to_tar(dict(reversed(list(files.items()))))  # deterministic
