"""The manager needs no root: its own user and three capabilities, as its systemd unit runs it.

``src/piman/packaging/piman.service`` runs ``piman server`` as the user ``piman`` with
``CAP_NET_BIND_SERVICE`` (ports 67 and 69), ``CAP_NET_RAW`` (``SO_BINDTODEVICE``) and
``CAP_NET_ADMIN`` (the ARP entry before a unicast DHCP reply) as ambient capabilities, and the
rest of root's taken away. The unit passes ``systemd-analyze verify``; then the test does what the
unit does without systemd (none runs here): ``setpriv`` (util-linux) starts the whole manager
(DHCP, TFTP, HTTP) in a :class:`~tests.integration.netlab.NetLab` namespace as ``nobody`` with
just those capabilities, its data directory made and owned as ``StateDirectory=`` makes it, its
configuration and TFTP root root's and read-only. A real Pi-side client then boots from it:
busybox ``udhcpc`` gets an address, tftp-hpa fetches a file, curl reaches the HTTP API.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.integration.netlab import SERVER_IP, NetLab
from tests.support import free_port, needs_root, needs_tool

UNIT = Path(__file__).resolve().parents[3] / "src" / "piman" / "packaging" / "piman.service"
USER = 65534  # nobody / nogroup: no capability, no group, owns nothing of the host
ALL_CAPS = ("net_bind_service", "net_raw", "net_admin")  # the unit's, as setpriv spells them
CAP_BITS = (1 << 10) | (1 << 12) | (1 << 13)  # CAP_NET_BIND_SERVICE, CAP_NET_ADMIN, CAP_NET_RAW
BOOTCODE = os.urandom(50_000)


def unit_service_section() -> dict[str, str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return dict(parser["Service"])


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """As shipped, in a root of its own (its ExecStart must exist there); no warning at all."""
    needs_tool("systemd-analyze")
    root = tmp_path / "root"
    (root / "usr" / "lib" / "systemd").mkdir(parents=True)
    shutil.copytree(
        "/usr/lib/systemd/system", root / "usr" / "lib" / "systemd" / "system", symlinks=True
    )
    (root / "etc" / "systemd" / "system").mkdir(parents=True)
    unit = root / "etc" / "systemd" / "system" / "piman.service"
    shutil.copy(UNIT, unit)
    exec_start = unit_service_section()["ExecStart"].split()[0]
    stub = root / exec_start.lstrip("/")
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)

    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"--root={root}", str(unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_the_unit_grants_only_the_network_capabilities_and_sandboxes() -> None:
    service = unit_service_section()
    wanted = {"CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_NET_ADMIN"}
    assert set(service["AmbientCapabilities"].split()) == wanted
    assert set(service["CapabilityBoundingSet"].split()) == wanted
    assert service["User"] == "piman"
    assert (service["StateDirectory"], service["StateDirectoryMode"]) == ("piman", "0700")
    assert service["ProtectSystem"] == "strict"
    assert service["PrivateTmp"] == service["NoNewPrivileges"] == "yes"


# --- the manager as the unit runs it, in network namespaces ---------------------------------------


@pytest.fixture(scope="module", autouse=True)
def python_reachable_by_others() -> Iterator[None]:
    """The unprivileged user must reach this Python, its packages and piman: a checkout in a
    0700 directory (``mktemp -d``, as a CI's clean clone may be) hides them. Each directory on
    the way that others cannot enter gets ``o+x`` (enter, not list) for this module's tests,
    and its mode back afterwards."""
    import piman

    changed: list[tuple[Path, int]] = []
    if os.geteuid() == 0:
        for target in (Path(sys.prefix), Path(piman.__file__).resolve().parent):
            for directory in [target, *target.parents]:
                mode = directory.stat().st_mode
                if directory.is_dir() and not mode & stat.S_IXOTH:
                    changed.append((directory, stat.S_IMODE(mode)))
                    directory.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
    try:
        yield
    finally:
        for directory, mode in reversed(changed):
            directory.chmod(mode)


@pytest.fixture
def lab() -> Iterator[NetLab]:
    needs_root()
    needs_tool("ip", "ss", "setpriv", "busybox", "tftp", "curl")
    probe = subprocess.run(
        as_user(ALL_CAPS, sys.executable, "-c", "import piman.manager, piman.web.server"),
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if probe.returncode != 0:
        pytest.skip(f"this Python cannot be run by an unprivileged user: {probe.stderr[-300:]}")
    made = NetLab(clients=1)
    try:
        with made:
            made.tmp.chmod(0o755)  # /etc/piman and /srv/tftp of this lab: root's, readable by all
            yield made
    finally:
        shutil.rmtree(made.tmp, ignore_errors=True)


def as_user(caps: tuple[str, ...], *argv: str) -> list[str]:
    """``argv`` as ``nobody`` with only ``caps`` (ambient, and the bounding set), no new
    privileges, no supplementary groups: what ``User=``, ``AmbientCapabilities=``,
    ``CapabilityBoundingSet=`` and ``NoNewPrivileges=`` do."""
    keep = "".join(f",+{cap}" for cap in caps)
    return [
        "setpriv", f"--reuid={USER}", f"--regid={USER}", "--clear-groups",
        f"--inh-caps=-all{keep}", f"--ambient-caps=-all{keep}", f"--bounding-set=-all{keep}",
        "--no-new-privs", *argv,
    ]  # fmt: skip


def state_directory(lab: NetLab) -> Path:
    """/var/lib/piman as ``StateDirectory=piman`` makes it: 0700, owned by the service's user."""
    state = lab.tmp / "var-lib"
    state.mkdir(mode=0o755)
    data_dir = state / "piman"
    data_dir.mkdir(mode=0o700)
    os.chown(data_dir, USER, USER)
    return data_dir


def manager_config(lab: NetLab, data_dir: Path, http_port: int) -> Path:
    """DHCP and TFTP on the lab's eth0, HTTP on the provisioning address; a TFTP root of root's
    (read-only to the manager, as ProtectSystem=strict leaves /srv) holding bootcode.bin."""
    tftp_root = lab.tmp / "tftp"
    tftp_root.mkdir(mode=0o755)
    (tftp_root / "bootcode.bin").write_bytes(BOOTCODE)
    (tftp_root / "bootcode.bin").chmod(0o644)
    config = lab.write_config(
        {
            "manager": {"data_dir": str(data_dir), "http": f"{SERVER_IP}:{http_port}",
                        "log_level": "INFO"},
            "dhcp": {"mode": "authoritative", "pool": "198.18.0.100-198.18.0.199",
                     "router": SERVER_IP, "listen": None},
            "tftp": {"enabled": True, "root": str(tftp_root)},
        }
    )  # fmt: skip
    config.chmod(0o644)
    return config


@contextmanager
def running_manager(
    lab: NetLab, config: Path, caps: tuple[str, ...]
) -> Iterator[subprocess.Popen[bytes]]:
    """`piman server` in the server namespace as ``nobody`` with ``caps``, under umask 022 (the
    usual one, not the unit's UMask=0077); SIGTERM after the block, which must end it cleanly."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8"}
    umask = os.umask(0o022)
    try:
        with (lab.tmp / "manager.log").open("wb") as log:
            proc = lab.popen(
                lab.server,
                *as_user(caps, sys.executable, "-m", "piman", "server", "--config", str(config)),
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd="/",
            )  # fmt: skip
    finally:
        os.umask(umask)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, lab.manager_log()


def status_of(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def wait_until(lab: NetLab, proc: subprocess.Popen[bytes], done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 60
    while not done():
        assert proc.poll() is None, f"piman server exited:\n{lab.manager_log()}"
        assert time.monotonic() < deadline, f"still waiting:\n{lab.manager_log()}"
        time.sleep(0.2)


def listening(lab: NetLab, *sockets: tuple[str, int]) -> Callable[[], bool]:
    """Whether something listens on each (``-Hlun`` UDP / ``-Hltn`` TCP, port) in the server."""

    def check() -> bool:
        return all(
            lab.run(lab.server, "ss", flags, "sport", f"= :{port}").stdout.strip()
            for flags, port in sockets
        )

    return check


def udhcpc(lab: NetLab) -> dict[str, str]:
    """busybox udhcpc in the client's namespace, broadcast flag clear (as a Pi's boot ROM), so
    the reply is unicast to the offered address; what its bound event said. Sets the address."""
    record = lab.tmp / "lease"
    script = lab.tmp / "udhcpc-event.sh"
    script.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = bound ]; then\n'
        '  ip addr add "$ip/${mask:-24}" dev "$interface"\n'
        f'  echo "ip=$ip serverid=$serverid router=$router" > {record}\n'
        "fi\n"
    )
    script.chmod(0o755)
    dhcp = lab.run(lab.clients[0], "busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "4",
                   "-T", "2", "-s", str(script), check=False, timeout=60)  # fmt: skip
    assert record.exists(), dhcp.stdout + dhcp.stderr + lab.manager_log()
    return dict(word.split("=", 1) for word in record.read_text().split())


def test_the_manager_boots_a_client_as_an_unprivileged_user_with_three_capabilities(
    lab: NetLab,
) -> None:
    data_dir = state_directory(lab)
    config = manager_config(lab, data_dir, http_port=80)
    client = lab.clients[0]
    with running_manager(lab, config, ALL_CAPS) as proc:
        wait_until(lab, proc, listening(lab, ("-Hlun", 67), ("-Hlun", 69), ("-Hltn", 80)))
        status = status_of(proc.pid)  # `ip netns exec` and setpriv exec: the same process
        assert status["Uid"].split()[:2] == [str(USER)] * 2
        assert int(status["CapEff"], 16) == CAP_BITS
        assert int(status["CapBnd"], 16) == CAP_BITS

        # A real DHCP client gets an address (the server wrote the ARP entry for its reply).
        lease = udhcpc(lab)
        assert re.fullmatch(r"198\.18\.0\.1\d\d", lease["ip"]), lease
        assert (lease["serverid"], lease["router"]) == (SERVER_IP, SERVER_IP)
        assert lab.address_of(client) == lease["ip"]

        # A real TFTP client fetches a boot file from port 69.
        out = lab.tmp / "bootcode.out"
        tftp = lab.run(client, "tftp", SERVER_IP, "-m", "binary", "-c", "get", "bootcode.bin",
                       str(out), check=False, timeout=60)  # fmt: skip
        assert out.exists(), tftp.stdout + tftp.stderr + lab.manager_log()
        assert out.read_bytes() == BOOTCODE

        # The HTTP API, on port 80 of the provisioning address.
        health = lab.run(client, "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                         f"http://{SERVER_IP}/healthz", check=False, timeout=60)  # fmt: skip
        assert health.stdout == "200", health.stderr

    said = lab.manager_log()
    assert "Traceback" not in said, said
    assert " ERROR " not in said, said
    assert "cannot set ARP entry" not in said, said
    # Everything the manager wrote is its user's; data_dir and the secrets in it are private
    # (under umask 022: the unit's UMask=0077 is not what makes them so).
    for path in [data_dir, *data_dir.rglob("*")]:
        info = path.stat()
        assert (info.st_uid, info.st_gid) == (USER, USER), path
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    for name in ("piman.db", "logs/piman.log", "session.key", "local.key",
                 "initial-admin-password"):  # fmt: skip
        assert stat.S_IMODE((data_dir / name).stat().st_mode) == 0o600, name


def test_without_cap_net_admin_dhcp_still_answers_by_broadcast_and_says_why_in_one_line(
    lab: NetLab,
) -> None:
    config = manager_config(lab, state_directory(lab), http_port=8000)
    with running_manager(lab, config, ("net_bind_service",)) as proc:
        wait_until(lab, proc, listening(lab, ("-Hlun", 67), ("-Hlun", 69), ("-Hltn", 8000)))
        lease = udhcpc(lab)
        assert lab.address_of(lab.clients[0]) == lease["ip"]

    said = lab.manager_log()
    assert "Traceback" not in said, said
    lines = [line for line in said.splitlines() if "cannot set ARP entry" in line]
    assert lines, said
    assert all(line.endswith("Operation not permitted") for line in lines), lines


def test_without_capabilities_each_privileged_service_says_why_in_one_line(lab: NetLab) -> None:
    config = manager_config(lab, state_directory(lab), http_port=80)
    wanted = [
        "service dhcp failed: DHCP cannot listen on 0.0.0.0:67 on interface eth0: "
        "Permission denied",
        "service tftp failed: TFTP cannot listen on 0.0.0.0:69 on interface eth0: "
        "Permission denied",
        f"service http failed: cannot listen on {SERVER_IP}:80 for HTTP: Permission denied",
    ]
    with running_manager(lab, config, ()) as proc:
        wait_until(lab, proc, lambda: all(line in lab.manager_log() for line in wanted))

    said = lab.manager_log()
    assert "Traceback" not in said, said
    for line in said.splitlines():
        assert line.startswith(("logging to ", "error: ")) or re.match(r"\d\d:\d\d:\d\d ", line), (
            line
        )


@pytest.fixture
def world_readable_tmp() -> Iterator[Path]:
    """A temporary directory others may enter (pytest's tmp_path is under a 0700 one)."""
    path = Path(tempfile.mkdtemp(prefix="piman-lp-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_a_data_dir_it_may_not_create_is_one_line_and_exit_1(world_readable_tmp: Path) -> None:
    """No StateDirectory= (started by hand as a user that owns nothing): one line, exit 1."""
    needs_root()
    needs_tool("setpriv")
    config = world_readable_tmp / "piman.yaml"
    data_dir = world_readable_tmp / "var-lib" / "piman"
    data_dir.parent.mkdir(mode=0o755)  # root's, as /var/lib is
    config.write_text(
        f"manager: {{address: {SERVER_IP}, network: 198.18.0.0/24, data_dir: {data_dir},"
        f" http: '127.0.0.1:{free_port()}'}}\n"
    )
    config.chmod(0o644)
    result = subprocess.run(
        as_user((), sys.executable, "-m", "piman", "server", "--config", str(config)),
        capture_output=True, text=True, timeout=120, check=False, cwd="/",
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8"},
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"error: cannot create data_dir {data_dir}: Permission denied"
    ), result.stderr
