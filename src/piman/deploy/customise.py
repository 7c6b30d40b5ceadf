"""First-boot customisation: the files the installer puts on a node's boot partition (pure).

:func:`render` turns a :class:`FirstBoot` (hostname, user, keys, agent …) into the files of the
environment's customisation format (PROTOCOLS.md §4, rpi-imager's ``init_format``):

- ``firstrun`` — Raspberry Pi OS Bookworm and earlier: ``firstrun.sh``, run once by systemd from
  ``cmdline.txt`` (``systemd.run=/boot/firstrun.sh systemd.run_success_action=reboot
  systemd.unit=kernel-command-line.target``); it sets the hostname, the user's keys, the
  timezone, installs the agent, then removes itself and its words from ``cmdline.txt``.
  ``userconf.txt`` (``user:<crypt hash>``) makes the user; an empty ``ssh`` enables sshd.
- ``cloudinit`` — Raspberry Pi OS Trixie, Ubuntu: NoCloud ``user-data`` (``#cloud-config``),
  ``meta-data`` (``instance-id`` unique per deployment, so cloud-init runs again after a
  reinstall) and ``network-config`` (DHCP on the wired interface).
- ``none`` — images without a first-boot mechanism: only the extra files and the agent's files;
  the caller is told what could not be applied (:attr:`Rendered.notes`).

The agent (``piman agent``, standard library only) travels as its Python files under
``piman-agent/`` on the boot partition with its systemd unit; first boot copies them to
``/opt/piman-agent`` and enables the unit. The fleet's scrape token, when there is one, goes to
``/etc/default/piman-agent`` (mode 0600), never into a world-readable file.

Nothing here reads a clock, a file or the network: the caller passes the agent's files in.
"""

from __future__ import annotations

import io
import json
import re
import shlex
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "FIRSTRUN_WORDS",
    "FORMATS",
    "FirstBoot",
    "Rendered",
    "render",
    "to_tar",
]

FORMATS = ("firstrun", "cloudinit", "none")
FIRSTRUN_WORDS = (
    "systemd.run=/boot/firstrun.sh systemd.run_success_action=reboot "
    "systemd.unit=kernel-command-line.target"
)
_HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_AGENT_DIR = "piman-agent"


@dataclass(frozen=True, slots=True)
class FirstBoot:
    """What a node gets at its first boot after a deployment."""

    hostname: str
    instance_id: str  # unique per deployment (cloud-init runs again for a new one)
    user: str = "pi"
    password_hash: str | None = None  # crypt(3), never a password
    ssh_keys: tuple[str, ...] = ()
    enable_ssh: bool = True
    timezone: str | None = None
    keyboard: str | None = None
    locale: str | None = None
    agent_files: Mapping[str, bytes] = field(default_factory=dict)  # path → bytes, for /opt
    agent_token: str | None = None
    agent_port: int = 9110
    extra_files: Mapping[str, bytes] = field(default_factory=dict)  # on the boot partition

    def __post_init__(self) -> None:
        if not _HOSTNAME.match(self.hostname):
            raise ValueError(
                f"{self.hostname!r} is not a host name (lower-case letters, digits and -, "
                "at most 63)"
            )
        for key in self.ssh_keys:
            if "\n" in key or not key.strip():
                raise ValueError("an SSH key is one non-empty line")


@dataclass(frozen=True, slots=True)
class Rendered:
    """The files for the boot partition, and what the format could not do."""

    files: dict[str, bytes]
    notes: tuple[str, ...] = ()


def render(fmt: str, boot: FirstBoot, *, cmdline: str | None) -> Rendered:
    """The boot-partition files of ``fmt`` for ``boot``; ``cmdline`` is the image's own."""
    if fmt not in FORMATS:
        raise ValueError(f"{fmt!r} is not a customisation format ({', '.join(FORMATS)})")
    files: dict[str, bytes] = {}
    notes: list[str] = []
    if boot.agent_files:
        for path, data in boot.agent_files.items():
            files[f"{_AGENT_DIR}/{path}"] = data
        files[f"{_AGENT_DIR}/piman-agent.service"] = _agent_unit(boot).encode()
        if boot.agent_token:
            files[f"{_AGENT_DIR}/agent.env"] = f"PIMAN_AGENT_TOKEN={boot.agent_token}\n".encode()
    if fmt == "firstrun":
        files.update(_firstrun(boot, cmdline))
    elif fmt == "cloudinit":
        files.update(_cloudinit(boot))
    else:
        notes.append(
            "this image has no first-boot mechanism (firstrun or cloud-init): hostname, user, "
            "keys and the agent are not applied; its files are on the boot partition only"
        )
    for path, data in boot.extra_files.items():
        if path.startswith("/") or ".." in path.split("/"):
            raise ValueError(f"{path!r}: extra files go on the boot partition, by relative path")
        files[path] = data
    return Rendered(files, tuple(notes))


def _agent_unit(boot: FirstBoot) -> str:
    return (
        "[Unit]\n"
        "Description=piman node agent (Prometheus metrics and events)\n"
        "After=network-online.target\n"
        "Wants=network-online.target\n\n"
        "[Service]\n"
        "Type=simple\n"
        "EnvironmentFile=-/etc/default/piman-agent\n"
        "Environment=PYTHONPATH=/opt/piman-agent\n"
        f"ExecStart=/usr/bin/python3 -m piman.monitor.agent --port {boot.agent_port}\n"
        "Restart=always\n"
        "RestartSec=5\n"
        "DynamicUser=yes\n"
        "SupplementaryGroups=video\n"
        "NoNewPrivileges=yes\n"
        "ProtectSystem=strict\n"
        "ProtectHome=read-only\n"
        "PrivateTmp=yes\n"
        "MemoryMax=64M\n\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def _q(value: str) -> str:
    return shlex.quote(value)


def _firstrun(boot: FirstBoot, cmdline: str | None) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    if boot.password_hash:
        files["userconf.txt"] = f"{boot.user}:{boot.password_hash}\n".encode()
    if boot.enable_ssh:
        files["ssh"] = b""
    base = " ".join((cmdline or "").split())
    base = base.replace(FIRSTRUN_WORDS, "").strip()
    files["cmdline.txt"] = f"{base} {FIRSTRUN_WORDS}\n".lstrip().encode()
    lines = [
        "#!/bin/bash",
        "# Written by piman for the first boot after a reinstall; it removes itself.",
        "set +e",
        'BOOT="$(dirname "$(readlink -f "$0")")"',
        f"NEW_HOSTNAME={_q(boot.hostname)}",
        "CURRENT_HOSTNAME=$(cat /etc/hostname | tr -d ' \\t\\n\\r')",
        "if [ -x /usr/lib/raspberrypi-sys-mods/imager_custom ]; then",
        '  /usr/lib/raspberrypi-sys-mods/imager_custom set_hostname "$NEW_HOSTNAME"',
        "else",
        '  echo "$NEW_HOSTNAME" > /etc/hostname',
        '  sed -i "s/127.0.1.1.*$CURRENT_HOSTNAME/127.0.1.1\\t$NEW_HOSTNAME/g" /etc/hosts',
        "fi",
        f"FIRSTUSER={_q(boot.user)}",
    ]
    if boot.ssh_keys:
        keys = "\n".join(boot.ssh_keys)
        lines += [
            'FIRSTUSERHOME=$(getent passwd "$FIRSTUSER" | cut -d: -f6)',
            'if [ -z "$FIRSTUSERHOME" ]; then FIRSTUSERHOME="/home/$FIRSTUSER"; fi',
            'install -o "$FIRSTUSER" -m 700 -d "$FIRSTUSERHOME/.ssh" 2>/dev/null \\',
            '  || install -m 700 -d "$FIRSTUSERHOME/.ssh"',
            "cat > \"$FIRSTUSERHOME/.ssh/authorized_keys\" <<'PIMAN_KEYS'",
            keys,
            "PIMAN_KEYS",
            'chown "$FIRSTUSER:" "$FIRSTUSERHOME/.ssh/authorized_keys" 2>/dev/null',
            'chmod 600 "$FIRSTUSERHOME/.ssh/authorized_keys"',
        ]
    if boot.enable_ssh:
        lines.append("systemctl enable ssh 2>/dev/null || systemctl enable sshd 2>/dev/null")
    if boot.timezone:
        lines += [
            f"rm -f /etc/localtime; echo {_q(boot.timezone)} > /etc/timezone",
            "dpkg-reconfigure -f noninteractive tzdata 2>/dev/null",
        ]
    if boot.keyboard:
        lines.append(
            f"sed -i 's/^XKBLAYOUT=.*/XKBLAYOUT=\"{boot.keyboard}\"/' /etc/default/keyboard"
        )
    if boot.locale:
        lines.append(f"update-locale LANG={_q(boot.locale)} 2>/dev/null")
    if boot.agent_files:
        lines += _install_agent_lines()
    lines += [
        'rm -f "$BOOT/firstrun.sh"',
        f"sed -i 's| {FIRSTRUN_WORDS}||g' \"$BOOT/cmdline.txt\"",
        "exit 0",
    ]
    files["firstrun.sh"] = ("\n".join(lines) + "\n").encode()
    return files


def _install_agent_lines() -> list[str]:
    return [
        f'if [ -d "$BOOT/{_AGENT_DIR}" ]; then',
        "  rm -rf /opt/piman-agent && mkdir -p /opt/piman-agent",
        f'  cp -r "$BOOT/{_AGENT_DIR}/piman" /opt/piman-agent/',
        f'  install -m 644 "$BOOT/{_AGENT_DIR}/piman-agent.service" '
        "/etc/systemd/system/piman-agent.service",
        f'  if [ -f "$BOOT/{_AGENT_DIR}/agent.env" ]; then',
        f'    install -m 600 "$BOOT/{_AGENT_DIR}/agent.env" /etc/default/piman-agent',
        "  fi",
        f'  rm -rf "$BOOT/{_AGENT_DIR}"',
        "  systemctl enable piman-agent",
        "fi",
    ]


def _cloudinit(boot: FirstBoot) -> dict[str, bytes]:
    user: dict[str, object] = {
        "name": boot.user,
        "groups": ["adm", "dialout", "sudo", "video", "plugdev", "users"],
        "shell": "/bin/bash",
        "sudo": "ALL=(ALL) NOPASSWD:ALL",
        "lock_passwd": boot.password_hash is None,
    }
    if boot.password_hash:
        user["passwd"] = boot.password_hash
    if boot.ssh_keys:
        user["ssh_authorized_keys"] = list(boot.ssh_keys)
    config: dict[str, object] = {
        "hostname": boot.hostname,
        "manage_etc_hosts": True,
        "users": [user],
        "ssh_pwauth": boot.password_hash is not None,
    }
    if boot.timezone:
        config["timezone"] = boot.timezone
    if boot.locale:
        config["locale"] = boot.locale
    if boot.keyboard:
        config["keyboard"] = {"layout": boot.keyboard}
    if boot.agent_files:
        config["runcmd"] = [["sh", "-c", _cloudinit_agent_script()]]
    # JSON is YAML: cloud-init reads this exactly, and nothing here needs a YAML writer.
    user_data = "#cloud-config\n" + json.dumps(config, indent=2, sort_keys=True) + "\n"
    meta = f"instance-id: {boot.instance_id}\nlocal-hostname: {boot.hostname}\n"
    network = (
        "network:\n  version: 2\n  ethernets:\n    wired:\n"
        '      match: {name: "e*"}\n      dhcp4: true\n      optional: true\n'
    )
    files = {
        "user-data": user_data.encode(),
        "meta-data": meta.encode(),
        "network-config": network.encode(),
    }
    if boot.enable_ssh:  # Raspberry Pi OS turns sshd on for this file, cloud-init or not
        files["ssh"] = b""
    return files


def _cloudinit_agent_script() -> str:
    return (
        "for b in /boot/firmware /boot; do "
        f'if [ -d "$b/{_AGENT_DIR}" ]; then '
        "rm -rf /opt/piman-agent && mkdir -p /opt/piman-agent && "
        f'cp -r "$b/{_AGENT_DIR}/piman" /opt/piman-agent/ && '
        f'install -m 644 "$b/{_AGENT_DIR}/piman-agent.service" '
        "/etc/systemd/system/piman-agent.service && "
        f'{{ [ ! -f "$b/{_AGENT_DIR}/agent.env" ] || '
        f'install -m 600 "$b/{_AGENT_DIR}/agent.env" /etc/default/piman-agent; }} && '
        f'rm -rf "$b/{_AGENT_DIR}" && systemctl daemon-reload && '
        "systemctl enable --now piman-agent; fi; done"
    )


def to_tar(files: Mapping[str, bytes]) -> bytes:
    """An uncompressed ustar archive of ``files`` (busybox tar extracts it), sorted, mtime 0."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        dirs: set[str] = set()
        for path in sorted(files):
            parts = path.split("/")
            for i in range(1, len(parts)):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o755
                    tar.addfile(info)
            data = files[path]
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = 0o755 if path.endswith(".sh") else 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()
