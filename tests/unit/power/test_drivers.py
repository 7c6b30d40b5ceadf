"""Drivers other than SNMP, the registry, profiles, SNMP settings, overlay and MAC mapping."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from piman.config.models import Config, NodeSettings
from piman.config.overlay import apply_overlay
from piman.config.power import SnmpSettings, SwitchSettings
from piman.errors import ConfigError, PowerConnError, PowerFatalError
from piman.fleet.lifecycle import PowerState
from piman.fleet.ssh import SshResult, SshTarget
from piman.inventory.bridge import FdbEntry, compare, yaml_fixes
from piman.power.base import ManualActionRequired
from piman.power.command import CommandDriver
from piman.power.manual import ManualDriver, SshRebootDriver
from piman.power.profiles import PROFILES
from piman.power.registry import DriverRegistry, default_registry
from piman.power.snmp import SnmpTarget
from piman.power.webhook import WebhookDriver


def test_registry_refuses_duplicate_names() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        DriverRegistry([("x", ManualDriver), ("x", ManualDriver)])
    assert default_registry().names == ["command", "manual", "snmp-poe", "ssh-reboot", "webhook"]


def test_registry_names_the_switch_for_an_unknown_driver() -> None:
    sw = SwitchSettings(name="rack1", driver="none")
    with pytest.raises(PowerFatalError, match=r"rack1.*none"):
        default_registry().build(sw, {})


@pytest.mark.parametrize(
    ("profile", "group", "port", "admin", "on", "off"),
    [
        ("rfc3621", 1, 5, "1.3.6.1.2.1.105.1.1.1.3.1.5", 1, 2),
        ("rfc3621", 2, 49, "1.3.6.1.2.1.105.1.1.1.3.2.49", 1, 2),
        ("netgear", 1, 3, "1.3.6.1.4.1.4526.11.16.1.1.1.3.1.3", 1, 2),
        ("tplink", 1, 7, "1.3.6.1.4.1.11863.6.56.1.1.2.1.1.2.7", 1, 0),
        ("cisco", 1, 2, "1.3.6.1.2.1.105.1.1.1.3.1.2", 1, 2),
    ],
)
def test_profiles_map_ports_to_oids_and_values(
    profile: str, group: int, port: int, admin: str, on: int, off: int
) -> None:
    p = PROFILES[profile]
    assert p.admin_oid(group, port) == admin
    assert p.value_for(PowerState.ON) == on
    assert p.value_for(PowerState.OFF) == off
    assert p.admin_state(on) is PowerState.ON
    assert p.admin_state(off) is PowerState.OFF
    assert p.admin_state(77) is PowerState.UNKNOWN


def test_snmp_v3_keys_come_from_files_and_env_and_never_show(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "auth").write_text("file-secret-1\n")
    monkeypatch.setenv("PIMAN_TEST_PRIV", "env-secret-22")
    settings = SnmpSettings.model_validate(
        {
            "version": 3,
            "user": "piman",
            "auth": {"protocol": "SHA-512", "key_file": str(tmp_path / "auth")},
            "priv": {"protocol": "aes256", "key_env": "PIMAN_TEST_PRIV"},
        }
    )
    target = SnmpTarget.from_settings("rack1", "198.18.0.254", settings)
    assert target.auth_key == "file-secret-1"
    assert target.priv_key == "env-secret-22"
    assert target.auth_protocol == "sha512"
    assert "secret" not in repr(target)


def test_snmp_bad_settings_are_fatal_and_name_the_switch() -> None:
    with pytest.raises(PowerFatalError, match=r"rack1.*snmp.user"):
        SnmpTarget.from_settings("rack1", "198.18.0.254", SnmpSettings(version="3"))
    short = SnmpSettings.model_validate({"version": "3", "user": "u", "auth": {"key": "short"}})
    with pytest.raises(PowerFatalError, match="8 characters"):
        SnmpTarget.from_settings("rack1", "198.18.0.254", short)
    env = SnmpSettings.model_validate(
        {"version": "3", "user": "u", "auth": {"key_env": "PIMAN_NOT_SET_ANYWHERE"}}
    )
    with pytest.raises(PowerFatalError, match="PIMAN_NOT_SET_ANYWHERE"):
        SnmpTarget.from_settings("rack1", "198.18.0.254", env)


def test_cisco_vlan_community_form() -> None:
    target = SnmpTarget.from_settings("c", "198.18.0.9", SnmpSettings(), vlan=10)
    assert target.community == "private@10"


async def test_command_driver_runs_the_argv_template_without_a_shell(tmp_path: Path) -> None:
    out = tmp_path / "out"
    script = "import sys; open(sys.argv[1], 'a').write(' '.join(sys.argv[2:]) + '\\n')"
    sw = SwitchSettings(
        name="relays",
        driver="command",
        command=[
            sys.executable,
            "-c",
            script,
            str(out),
            "{switch}",
            "{port}",
            "{state}",
            "{node}",
            "$(touch pwned)",
        ],
    )
    nodes = {3: NodeSettings(name="lab-3", switch="relays", port=3)}
    driver = CommandDriver(sw, nodes)
    await driver.set_port(3, PowerState.OFF)
    await driver.set_port(3, PowerState.ON)
    assert out.read_text().splitlines() == [
        "relays 3 off lab-3 $(touch pwned)",
        "relays 3 on lab-3 $(touch pwned)",
    ]
    assert (await driver.get_port(3)).admin is PowerState.ON
    assert not (tmp_path / "pwned").exists()


async def test_command_driver_exit_codes_decide_retry() -> None:
    fail = [sys.executable, "-c", "import sys; sys.stderr.write('relay busy\\n'); sys.exit(75)"]
    with pytest.raises(PowerConnError, match="relay busy"):
        await CommandDriver(SwitchSettings(name="r", driver="command", command=fail)).set_port(
            1, PowerState.ON
        )
    fatal = [sys.executable, "-c", "import sys; sys.exit(3)"]
    with pytest.raises(PowerFatalError, match="exited 3"):
        await CommandDriver(SwitchSettings(name="r", driver="command", command=fatal)).set_port(
            1, PowerState.ON
        )
    with pytest.raises(PowerFatalError, match="cannot run"):
        await CommandDriver(
            SwitchSettings(name="r", driver="command", command=["/nonexistent/relay"])
        ).set_port(1, PowerState.ON)


async def test_webhook_driver_posts_json_with_token() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(503 if len(seen) == 2 else 204)

    sw = SwitchSettings.model_validate(
        {
            "name": "unifi",
            "driver": "webhook",
            "webhook_url": "http://hook.test/poe",
            "webhook_token": "t0ken",
        }
    )
    driver = WebhookDriver(sw, {}, transport=httpx.MockTransport(handler))
    await driver.set_port(4, PowerState.OFF)
    assert json.loads(seen[0].content) == {
        "switch": "unifi",
        "address": None,
        "port": 4,
        "node": None,
        "state": "off",
    }
    assert seen[0].headers["authorization"] == "Bearer t0ken"
    with pytest.raises(PowerConnError, match="503"):
        await driver.set_port(4, PowerState.ON)
    await driver.close()


async def test_manual_and_ssh_reboot_tell_the_operator() -> None:
    nodes = {2: NodeSettings(name="lab-2", switch="bench", port=2, ip="198.18.0.12")}
    with pytest.raises(ManualActionRequired, match=r"lab-2.*off by hand"):
        await ManualDriver(SwitchSettings(name="bench", driver="manual"), nodes).set_port(
            2, PowerState.OFF
        )
    ssh = SshRebootDriver(SwitchSettings(name="bench", driver="ssh-reboot"), nodes)
    with pytest.raises(ManualActionRequired, match="cannot switch a node on"):
        await ssh.set_port(2, PowerState.ON)


class FakeSsh:
    """An SshHandle that answers every command with ``result`` and records what it was asked."""

    def __init__(self, **result: Any) -> None:
        self.result = result
        self.asked: list[tuple[SshTarget, str]] = []

    async def targets(self, nodes: Sequence[str]) -> list[SshTarget]:
        return [SshTarget(n, "198.18.0.12", 22, "pimanlab") for n in nodes]

    async def run(self, targets: Sequence[SshTarget], command: str, **kw: Any) -> list[SshResult]:
        self.asked += [(t, command) for t in targets]
        return [SshResult(t.name, t.host, **self.result) for t in targets]

    def stream(self, *a: Any, **kw: Any) -> AsyncIterator[SshResult]:
        raise NotImplementedError


NODES = {2: NodeSettings(name="lab-2", switch="bench", port=2, ip="198.18.0.12")}


async def test_ssh_reboot_runs_reboot_as_root_or_through_sudo() -> None:
    fake = FakeSsh(exit_status=0)
    sw = SwitchSettings(name="bench", driver="ssh-reboot")
    await default_registry(ssh=fake).build(sw, NODES).set_port(2, PowerState.OFF)
    await SshRebootDriver(sw, NODES, ssh=fake).reboot(2)
    (target, off), (_, reboot) = fake.asked
    assert (target.name, target.user) == ("lab-2", "pimanlab")
    assert off == 'if [ "$(id -u)" = 0 ]; then poweroff; else sudo -n poweroff; fi'
    assert reboot == 'if [ "$(id -u)" = 0 ]; then reboot; else sudo -n reboot; fi'
    # a switch's explicit ssh_user wins over the node's
    sw_user = SwitchSettings(name="bench", driver="ssh-reboot", ssh_user="admin")
    await SshRebootDriver(sw_user, NODES, ssh=fake).reboot(2)
    assert fake.asked[-1][0].user == "admin"


async def test_ssh_reboot_counts_a_cut_connection_as_done() -> None:
    lost = FakeSsh(exit_status=None, error="connection lost while the command ran")
    sw = SwitchSettings(name="bench", driver="ssh-reboot")
    await SshRebootDriver(sw, NODES, ssh=lost).reboot(2)  # no error


@pytest.mark.parametrize(
    ("result", "error", "match"),
    [
        ({"exit_status": None, "error": "connection refused"}, PowerConnError, "refused"),
        (
            {"exit_status": 1, "stderr": "sudo: a password is required\n"},
            PowerFatalError,
            r"lab-2.*`reboot` failed \(1\): sudo: a password is required",
        ),
    ],
)
async def test_ssh_reboot_failures_say_why(
    result: dict[str, Any], error: type[Exception], match: str
) -> None:
    sw = SwitchSettings(name="bench", driver="ssh-reboot")
    with pytest.raises(error, match=match):
        await SshRebootDriver(sw, NODES, ssh=FakeSsh(**result)).reboot(2)
    with pytest.raises(PowerFatalError, match="no SSH client"):
        await SshRebootDriver(sw, NODES).reboot(2)


def _seed_config() -> Config:
    from piman.config import parse_config

    return parse_config(
        "private_number: 4\nserver_address: 172.30.4.1\nsubnet_mask: 255.255.255.0\n"
        "interface: ens4\nswitch_count: 1\nswitches:\n"
        "  - swtich_0_address: 172.30.4.254\n    pi_addresses: [172.30.4.13, 172.30.4.14]\n",
        "seed.yaml",
    )


def test_overlay_gives_a_seed_switch_snmp_settings() -> None:
    config = apply_overlay(
        _seed_config(),
        {
            "manager": {"data_dir": "/tmp/x"},
            "switches": [
                {
                    "address": "172.30.4.254",
                    "snmp": {"host": "127.0.0.1", "port": 16100, "community": "sim"},
                }
            ],
        },
        "overlay.yaml",
    )
    sw = config.switches[0]
    assert (sw.name, sw.snmp.host, sw.snmp.port) == ("switch0", "127.0.0.1", 16100)
    assert sw.snmp.community.get_secret_value() == "sim"
    assert str(config.manager.data_dir) == "/tmp/x"
    assert str(config.manager.address) == "172.30.4.1"


def test_overlay_problems_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="switches"):
        apply_overlay(_seed_config(), {"switches": [{"snmp": {}}]}, "o.yaml")
    with pytest.raises(ConfigError):
        apply_overlay(
            _seed_config(), {"switches": [{"name": "switch0", "snmp": {"port": 0}}]}, "o.yaml"
        )


def test_mac_map_finds_moved_and_unknown_macs() -> None:
    config = Config.model_validate(
        {
            "manager": {"address": "198.18.0.1"},
            "switches": [{"name": "rack1", "address": "198.18.0.254", "uplink_port": 24}],
            "nodes": [
                {"name": "a", "switch": "rack1", "port": 1, "mac": "dc:a6:32:00:00:01"},
                {"name": "b", "switch": "rack1", "port": 2, "mac": "dc:a6:32:00:00:02"},
                {"name": "c", "switch": "rack1", "port": 3, "mac": "dc:a6:32:00:00:03"},
            ],
        }
    )
    entries = [
        FdbEntry("dc:a6:32:00:00:01", 1, 1),
        FdbEntry("dc:a6:32:00:00:02", 5, 5),
        FdbEntry("b8:27:eb:00:00:09", 7, 7),
        FdbEntry("00:11:22:33:44:55", 24, 24),
    ]
    sw = config.switches[0]
    rows = {r.mac: r for r in compare(config, sw, entries)}
    assert rows["dc:a6:32:00:00:01"].status == "ok"
    assert (rows["dc:a6:32:00:00:02"].status, rows["dc:a6:32:00:00:02"].seen_port) == ("moved", 5)
    assert rows["b8:27:eb:00:00:09"].status == "unconfigured"
    assert rows["dc:a6:32:00:00:03"].status == "not seen"
    assert "00:11:22:33:44:55" not in rows
    assert yaml_fixes(sw, list(rows.values())) == [
        '  - {name: b, switch: rack1, port: 5, mac: "dc:a6:32:00:00:02"}'
    ]


async def test_coalescer_turns_concurrent_calls_into_few_bulk_calls() -> None:
    import asyncio

    from piman.power.batching import Coalescer

    seen: list[list[int]] = []

    async def bulk(keys: list[int]) -> dict[int, str | Exception]:
        seen.append(keys)
        return {k: (ValueError(f"bad {k}") if k == 7 else f"v{k}") for k in keys}

    c: Coalescer[int, str] = Coalescer(bulk, max_batch=4)
    results = await asyncio.gather(*(c(k) for k in [1, 2, 3, 2, 5, 6, 7]), return_exceptions=True)
    assert results[:6] == ["v1", "v2", "v3", "v2", "v5", "v6"]
    assert isinstance(results[6], ValueError)
    assert seen == [[1, 2, 3, 5], [6, 7]]
    assert await c(9) == "v9"
    assert seen[-1] == [9]
    await c.close()
