"""Loading piman's YAML, the seed's YAML and hosts.csv; every bad input gives one clear line."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from piman.config import load_config, parse_config
from piman.errors import ConfigError
from tests.support import SEED_YAML as SEED

GOOD = """\
manager:
  address: 198.18.0.1
  interface: eth1
  network: 198.18.0.0/24
  data_dir: /tmp/piman-test
  http: "127.0.0.1:8000"
dhcp: {mode: authoritative, pool: 198.18.0.100-198.18.0.199, lease_time: 1h, router: 198.18.0.1}
tftp: {enabled: true}
switches:
  - name: rack1
    address: 198.18.0.254
    uplink_port: 24
    snmp: {version: 3, user: piman, auth: {protocol: sha256, key: secret1234}}
nodes:
  - {name: rack1-02, switch: rack1, port: 2, mac: "DC-A6-32-00-00-02", ip: 198.18.0.12, model: pi4}
  - {name: lab-pi, ip: 10.0.0.7, agent_url: "http://10.0.0.7:9110/metrics"}
monitoring:
  scrape_interval: 15s
  rules: [{alert: NodeDown, expr: up == 0, for: 1m, labels: {severity: critical}}]
"""


def problems(text: str, name: str = "piman.yaml") -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, name)
    return [str(p) for p in info.value.problems]


def test_design_example_loads_with_normalised_values() -> None:
    config = parse_config(GOOD, "piman.yaml")
    assert config.manager.address == IPv4Address("198.18.0.1")
    assert config.dhcp is not None
    assert config.dhcp.lease_time == 3600
    assert config.dhcp.pool is not None
    assert len(config.dhcp.pool) == 100
    node = config.node("rack1-02")
    assert node is not None
    assert node.mac == "dc:a6:32:00:00:02"
    assert config.switches[0].snmp.version == "3"
    assert config.monitoring is not None
    assert config.monitoring.rules[0].for_ == 60
    assert config.database_url == "sqlite+aiosqlite:////tmp/piman-test/piman.db"


def test_only_manager_is_required_and_absent_sections_are_off() -> None:
    config = parse_config("manager: {address: 198.18.0.1}", "m.yaml")
    assert config.dhcp is None
    assert config.tftp is None
    assert config.monitoring is None
    assert config.switches == []
    assert config.nodes == []


def test_seed_yaml_loads_with_pi_numbers_as_ports() -> None:
    config = parse_config(SEED, "seed.yaml")
    assert config.manager.interface == "ens4"
    assert str(config.manager.effective_network) == "172.30.4.0/24"
    assert [s.name for s in config.switches] == ["switch0", "switch1"]
    sw0 = config.switch("172.30.4.254")
    assert sw0 is not None
    assert sw0.name == "switch0"
    ports = [(n.switch, n.port, str(n.ip)) for n in config.nodes]
    assert ports == [
        ("switch0", 1, "172.30.4.13"),
        ("switch0", 2, "172.30.4.14"),
        ("switch1", 1, "172.30.4.2"),
    ]


def test_seed_accepts_the_correct_spelling_too() -> None:
    config = parse_config(SEED.replace("swtich_", "switch_"), "seed.yaml")
    assert len(config.switches) == 2


def test_seed_switch_count_must_match_the_list() -> None:
    lines = problems(SEED.replace("switch_count: 2", "switch_count: 3"), "seed.yaml")
    assert lines == ["seed.yaml: switch_count: says 3 but the switches list has 2 entries"]


def test_seed_readme_example_giving_a_pi_the_manager_address_is_reported() -> None:
    text = SEED.replace("pi_addresses: [172.30.4.2]", "pi_addresses: [172.30.4.1, 172.30.4.2]")
    lines = problems(text, "seed.yaml")
    assert len(lines) == 1
    line = lines[0]
    assert line.startswith("seed.yaml: switches[1].pi_addresses[0]: 172.30.4.1")
    assert "switch1-pi01" in line
    assert "manager" in line


def test_bad_switch_address_names_the_field_and_the_value() -> None:
    text = GOOD + "  - {name: rack2, address: '172.30.4.'}\n"
    text = text.replace("nodes:\n", "", 1)
    text = (
        "manager: {address: 198.18.0.1}\n"
        "switches:\n"
        "  - {name: rack1, address: 198.18.0.254}\n"
        "  - {name: rack2, address: '172.30.4.'}\n"
    )
    assert problems(text) == ["piman.yaml: switches[1].address: '172.30.4.' is not an IPv4 address"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "piman.yaml: is empty; expected a mapping with at least `manager:`"),
        ("- a\n- b\n", "piman.yaml: expected a mapping of sections (manager, dhcp, …), got a list"),
        ("manager: [1, 2", "piman.yaml: line 1, column 15: not valid YAML"),
        ("dhcp: {mode: proxy}", "piman.yaml: manager: missing; this field is required"),
        ("manager: {address: 198.18.0.1, adress: 1}", "did you mean 'address'?"),
        ("manager: {address: 198.18.0.1}\ndhcp: {mode: on}", "dhcp.mode: True is not one of"),
        ("manager: {address: 198.18.0.1}\ndhcp: {lease_time: soon}", "'soon' is not a duration"),
        ("manager: {address: 198.18.0.1}\nnodes: 3", "nodes: expected a list, got a number"),
        (
            "manager: {address: 198.18.0.1}\nnodes: [{name: a, mac: zz:00}]",
            "nodes[0].mac: 'zz:00' is not a MAC address",
        ),
        (
            "manager: {address: 198.18.0.1}\nnodes: [{name: a, port: 'x'}]",
            "nodes[0].port: 'x' is not a whole number",
        ),
        (
            "manager: {address: 198.18.0.1}\nswitches: [{name: s, address: 198.18.0.9, "
            "driver: telnet}]",
            "switches[0].driver: 'telnet' is not one of",
        ),
    ],
)
def test_bad_input_gives_one_clear_line(text: str, expected: str) -> None:
    lines = problems(text)
    assert len(lines) == 1, lines
    assert expected in lines[0]


INVENTORY = """\
manager: {address: 198.18.0.1, network: 198.18.0.0/24}
switches: [{name: rack1, address: 198.18.0.254}]
nodes:
"""


@pytest.mark.parametrize(
    ("nodes", "expected"),
    [
        (
            ["{name: a, ip: 198.18.0.11}", "{name: a, ip: 198.18.0.12}"],
            "nodes[1].name: 'a' is already the name of nodes[0]",
        ),
        (
            ["{name: a, mac: 'dc:a6:32:00:00:01'}", "{name: b, mac: 'DC:A6:32:00:00:01'}"],
            "nodes[1].mac: dc:a6:32:00:00:01 is already the MAC of a",
        ),
        (
            ["{name: a, ip: 198.18.0.11}", "{name: b, ip: 198.18.0.11}"],
            "nodes[1].ip: 198.18.0.11 is already the address of a",
        ),
        (
            ["{name: a, ip: 10.1.2.3}"],
            "nodes[0].ip: 10.1.2.3 is outside the manager's network 198.18.0.0/24",
        ),
        (
            ["{name: a, ip: 198.18.0.1}"],
            "nodes[0].ip: 198.18.0.1 of node 'a' is the manager's own address",
        ),
        (
            ["{name: a, switch: rack1, port: 3}", "{name: b, switch: rack1, port: 3}"],
            "nodes[1].port: port 3 of switch 'rack1' is already used by a",
        ),
        (["{name: a, switch: rack9, port: 3}"], "nodes[0].switch: 'rack9' is not a configured"),
    ],
)
def test_inventory_contradictions_are_reported(nodes: list[str], expected: str) -> None:
    text = INVENTORY + "".join(f"  - {n}\n" for n in nodes)
    lines = problems(text)
    assert len(lines) == 1, lines
    assert lines[0] == f"piman.yaml: {expected}" or expected in lines[0]


def test_all_problems_are_listed_at_once() -> None:
    text = INVENTORY + "  - {name: a, ip: 198.18.0.1}\n  - {name: a, ip: 10.0.0.1}\n"
    assert len(problems(text)) == 3


def test_hosts_csv_gives_seed_nodes_their_macs(tmp_path: Path) -> None:
    (tmp_path / "piman.yaml").write_text(SEED)
    (tmp_path / "hosts.csv").write_text(
        "mac,ip,hostname\nDC:A6:32:00:00:0D,172.30.4.13,pi-13\nb8:27:eb:00:00:50,172.30.4.50\n"
    )
    config = load_config(tmp_path / "piman.yaml", hosts=tmp_path / "hosts.csv")
    node = config.node("switch0-pi01")
    assert node is not None
    assert node.mac == "dc:a6:32:00:00:0d"
    assert node.hostname == "pi-13"
    assert [(h.mac, str(h.ip)) for h in config.hosts] == [("b8:27:eb:00:00:50", "172.30.4.50")]


@pytest.mark.parametrize(
    ("csv", "expected"),
    [
        ("dc:a6:32:00:00:01,172.30.4.60\ndc:a6:32:00:00:01,172.30.4.61\n", "line 2: dc:a6:32"),
        ("dc:a6:32:00:00:01,172.30.4.60\ndc:a6:32:00:00:02,172.30.4.60\n", "already reserved"),
        ("dc:a6:32:00:00:01\n", "line 1: expected mac,ip[,hostname], got 1 fields"),
        ("nonsense,172.30.4.60\n", "line 1: 'nonsense' is not a MAC address"),
        ("dc:a6:32:00:00:01,172.30.4\n", "line 1: '172.30.4' is not an IPv4 address"),
        ("dc:a6:32:00:00:01,172.30.4.1\n", "172.30.4.1 of dc:a6:32:00:00:01 is the manager's"),
    ],
)
def test_bad_hosts_csv_lines_are_reported(tmp_path: Path, csv: str, expected: str) -> None:
    (tmp_path / "piman.yaml").write_text(SEED)
    (tmp_path / "hosts.csv").write_text(csv)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "piman.yaml", hosts=tmp_path / "hosts.csv")
    lines = [str(p) for p in info.value.problems]
    assert len(lines) == 1, lines
    assert expected in lines[0]


def test_missing_binary_and_directory_files_are_reported(tmp_path: Path) -> None:
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(bytes(range(256)))
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"manager: {address: \xe9}")
    for path, expected in [
        (tmp_path / "nope.yaml", "no such file"),
        (binary, "is a binary file"),
        (latin, "is not UTF-8 text"),
        (tmp_path, "is a directory"),
    ]:
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert expected in str(info.value)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_any_text_either_loads_or_raises_config_error(text: str) -> None:
    refusal: ConfigError | None = None
    try:
        parse_config(text, "fuzz.yaml")
    except ConfigError as err:
        refusal = err
    assert refusal is None or refusal.problems  # a refusal always says why


def test_tftp_busy_poll_takes_microseconds_and_refuses_long_spins() -> None:
    base = "manager: {address: 198.18.0.1}\ntftp: {busy_poll: %s}"
    config = parse_config(base % "250us", "piman.yaml")
    assert config.tftp is not None
    assert config.tftp.busy_poll == pytest.approx(250e-6)
    assert parse_config(base % 0, "piman.yaml").tftp.busy_poll == 0.0  # type: ignore[union-attr]
    assert problems(base % "1s") == [
        "piman.yaml: tftp.busy_poll: 1s is too long a spin "
        "(expected at most 10ms, e.g. 100us; 0 turns it off)"
    ]


def test_the_seed_format_serves_as_the_seed_did(tmp_path: Path, monkeypatch: Any) -> None:
    """DHCP on the seed's interface with hosts.csv beside the config, TFTP from install/boot,
    reinstalls from its rootfs.tgz: what `python3 piman.py server` ran."""
    (tmp_path / "seed.yaml").write_text(SEED)
    (tmp_path / "hosts.csv").write_text("dc:a6:32:00:00:0d,172.30.4.13\n")
    boot = tmp_path / "install" / "boot"
    boot.mkdir(parents=True)
    monkeypatch.chdir(tmp_path.parent)  # not the config's directory
    config = load_config(tmp_path / "seed.yaml")
    assert config.dhcp is not None
    assert (config.dhcp.mode, config.manager.interface) == ("authoritative", "ens4")
    assert str(config.dhcp.pool) == "172.30.4.154-172.30.4.253"  # the free top of the subnet
    assert config.node("switch0-pi01").mac == "dc:a6:32:00:00:0d"  # type: ignore[union-attr]
    assert config.tftp is not None
    assert config.tftp.enabled
    assert config.tftp.root == boot
    assert config.deploy is not None
    assert config.deploy.seed_rootfs == boot / "rootfs.tgz"


def test_the_seed_files_are_found_in_the_working_directory_too(
    tmp_path: Path, monkeypatch: Any
) -> None:
    conf = tmp_path / "etc"
    conf.mkdir()
    (conf / "seed.yaml").write_text(SEED)
    (tmp_path / "hosts.csv").write_text("dc:a6:32:00:00:0e,172.30.4.14\n")
    (tmp_path / "install" / "boot").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    config = load_config(conf / "seed.yaml")
    assert config.node("switch0-pi02").mac == "dc:a6:32:00:00:0e"  # type: ignore[union-attr]
    assert config.tftp is not None
    assert config.tftp.root == tmp_path / "install" / "boot"
    # Without them: the boot trees under data_dir, no reservations, no seed tarball.
    monkeypatch.chdir(conf)
    bare = load_config(conf / "seed.yaml")
    assert bare.tftp is not None
    assert bare.tftp.root is None
    assert bare.deploy is not None
    assert bare.deploy.seed_rootfs is None
    assert bare.node("switch0-pi02").mac is None  # type: ignore[union-attr]
