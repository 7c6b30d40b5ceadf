"""Agentless monitoring against OpenSSH ``sshd`` nodes (tests/integration/sshlab.py).

A lab node is a network namespace of this host: its /proc and /sys are this machine's (its own
network devices), so the agent's collectors run in the node's namespace read the same machine
the SSH sample reads. The sample goes through the fleet's real SSH client (FleetSsh) from the
manager's namespace. Then a real manager with one ``monitor: ssh`` node stores its samples, and
``up`` drops to 0 when the node's sshd stops.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.sshlab import LAB_USER, SSHD, SshLab
from tests.support import free_port, needs_root, needs_tool

# In the manager's namespace: the command over SSH with FleetSsh, parsed; every sample as JSON.
SAMPLE = """\
import asyncio, json, sys
import yaml
from piman.config.models import Config
from piman.inventory.ssh import FleetSsh
from piman.monitor.collector.sshsample import COMMAND, collect, parse_output

config = Config.model_validate(yaml.safe_load(open(sys.argv[1])))

async def main():
    ssh = FleetSsh(config)
    [login] = await ssh.targets([sys.argv[2]])
    [result] = await ssh.run([login], COMMAND)
    assert result.ok, result
    fams, events, _ = collect(parse_output(result.stdout))
    samples = [[f.name, list(map(list, labels)), v] for f in fams for labels, v in f.samples]
    print(json.dumps({"samples": samples, "events": events, "bytes": len(result.stdout)}))

asyncio.run(main())
"""

# In the node's namespace: the agent's own collectors, in process.
AGENT = """\
import json
from piman.monitor.agent.collectors import LinuxNode
fams = LinuxNode(vcgencmd="").collect()
print(json.dumps([[f.name, list(map(list, labels)), v] for f in fams for labels, v in f.samples]))
"""

# In the manager's namespace: the stored samples of a node through the API.
QUERY = """\
import json, sys, time
from pathlib import Path
import httpx
from tests.support import api_token, bearer, initial_admin_password

url, data_dir, node, want_up = sys.argv[1], Path(sys.argv[2]), sys.argv[3], float(sys.argv[4])
deadline = time.monotonic() + 60
while True:
    try:
        if httpx.get(url + "/healthz", timeout=2).status_code == 200:
            break
    except httpx.HTTPError:
        pass
    assert time.monotonic() < deadline, "no /healthz"
    time.sleep(0.2)
headers = bearer(api_token(url, "admin", initial_admin_password(data_dir)))

def series(metric):
    params = {"metric": metric, "node": node, "start": time.time() - 20}
    response = httpx.get(url + "/api/v1/query_range", params=params, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["data"]["result"]

while True:  # until the newest `up` is the one wanted
    up = series("up")
    if up and float(up[0]["values"][-1][1]) == want_up:
        break
    assert time.monotonic() < deadline, f"up never became {want_up}: {up}"
    time.sleep(0.5)
out = {"up": up}
for metric in ("node_memory_MemTotal_bytes", "node_cpu_seconds_total", "memory_percent"):
    out[metric] = series(metric)
print(json.dumps(out))
"""

Key = tuple[str, tuple[tuple[str, str], ...]]
# Counters that only grow: an SSH sample taken between two agent readings lies between them.
MONOTONIC = (
    "node_cpu_seconds_total",  # but iowait, which the kernel may step back
    "node_context_switches_total",
    "node_forks_total",
    "node_intr_total",
    "node_network_receive_bytes_total",
    "node_network_transmit_bytes_total",
    "node_disk_reads_completed_total",
)


def by_key(rows: list[list[Any]]) -> dict[Key, float]:
    return {
        (name, tuple((k, v) for k, v in labels)): value
        for name, labels, value in rows
        if not name.startswith("process_")  # the agent's own process: none over SSH
    }


@pytest.fixture(scope="module")
def lab() -> Iterator[SshLab]:
    needs_root()
    needs_tool("ip", "ss", "unshare", "ssh-keygen", SSHD)
    with SshLab(nodes=1) as lab:
        yield lab


def _config(lab: SshLab, **monitoring: Any) -> Path:
    node = lab.nodes[0]
    sections = lab.config(
        nodes=[{"name": node.name, "ip": node.ip, "ssh_user": LAB_USER, "monitor": "ssh"}]
    )
    sections["manager"] = {"http": f"127.0.0.1:{free_port()}"}
    if monitoring:
        sections["monitoring"] = monitoring
    return lab.net.write_config(sections)


def test_a_node_sampled_over_ssh_reports_what_the_agent_reports_there(lab: SshLab) -> None:
    node = lab.nodes[0]
    config = _config(lab)
    before = by_key(json.loads(lab.net.python(node.ns, AGENT)))
    sampled = json.loads(lab.net.python(lab.server, SAMPLE, str(config), node.name, timeout=120))
    after = by_key(json.loads(lab.net.python(node.ns, AGENT)))
    ssh = by_key(sampled["samples"])

    # The same names and label sets, the node's own network devices included.
    assert set(ssh) == set(before)
    devices = {dict(labels)["device"] for name, labels in ssh if name == "node_network_up"}
    assert devices == {"lo", "eth0"}
    # Static values equal.
    for key in ssh:
        name, labels = key
        if name in ("node_memory_MemTotal_bytes", "node_boot_time_seconds") or (
            name == "node_filesystem_size_bytes" and ("mountpoint", "/") in labels
        ):
            assert ssh[key] == before[key] == after[key], key
    cpus = {dict(labels)["cpu"] for name, labels in ssh if name == "node_cpu_seconds_total"}
    assert cpus == {
        dict(labels)["cpu"] for name, labels in before if name == "node_cpu_seconds_total"
    }
    assert len(cpus) >= 1
    collectors = {k: v for k, v in ssh.items() if k[0] == "node_scrape_collector_success"}
    assert collectors == {
        k: v for k, v in before.items() if k[0] == "node_scrape_collector_success"
    }
    assert set(collectors.values()) == {1}
    # Counters between the agent's readings before and after.
    checked = 0
    for key, value in ssh.items():
        if key[0] in MONOTONIC and ("mode", "iowait") not in key[1]:
            assert before[key] <= value <= after[key], (key, before[key], value, after[key])
            checked += 1
    assert checked > 10
    events = sampled["events"]
    assert events["num_pids"] > 0
    assert 0 < events["memory_percent"] < 100
    assert 0 < sampled["bytes"] < 200_000  # bounded: the whole output, every file


def test_a_manager_stores_an_agentless_node_and_sees_it_go_down(lab: SshLab) -> None:
    node = lab.nodes[0]
    config = _config(lab, scrape_interval="1s", scrape_timeout="0.9s")
    settings = yaml.safe_load(config.read_text())
    url, data_dir = f"http://{settings['manager']['http']}", settings["manager"]["data_dir"]
    lab.net.start_manager(config=config)
    try:
        stored = json.loads(lab.net.python(lab.server, QUERY, url, data_dir, node.name, "1"))
        log = lab.net.manager_log()
        [up] = stored["up"]
        assert up["metric"] == {
            "__name__": "up",
            "job": "piman",
            "instance": f"{node.ip}:22",  # sampled over SSH, not its agent port
            "node": node.name,
        }, log
        [mem] = stored["node_memory_MemTotal_bytes"]
        assert mem["metric"]["node"] == node.name
        assert float(mem["values"][-1][1]) > 0
        assert {s["metric"]["mode"] for s in stored["node_cpu_seconds_total"]} >= {"idle", "user"}
        [memory] = stored["memory_percent"]
        assert memory["metric"]["job"] == "piman_events"

        lab.stop(node)
        down = json.loads(lab.net.python(lab.server, QUERY, url, data_dir, node.name, "0"))
        assert float(down["up"][0]["values"][-1][1]) == 0
    finally:
        lab.start(node)
