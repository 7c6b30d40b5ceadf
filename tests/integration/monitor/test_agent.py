"""The agent on this machine, side by side with Debian's prometheus-node-exporter.

promtool lints our output; node_exporter is the reference for names, types and labels; psutil
is the reference for /events' definitions.
"""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.monitor import free_tcp_port, running_agent, wait_for_port
from tests.support import needs_tool

# node_exporter's inherited names that promtool flags (TESTING.md): exactly these families.
LINT_ALLOWED = re.compile(r"^(node_memory_\w+|node_netstat_\w+|node_entropy_\w+_bits) ")

# What "Node Exporter Full" (grafana.com 1860) main rows query, with the labels they use.
DASHBOARD = {
    "node_uname_info": {"nodename", "machine", "release", "sysname", "version", "domainname"},
    "node_cpu_seconds_total": {"cpu", "mode"},
    "node_load1": set(),
    "node_load5": set(),
    "node_load15": set(),
    **{
        f"node_memory_{f}_bytes": set()
        for f in (
            "MemTotal MemFree MemAvailable Buffers Cached SReclaimable Slab PageTables "
            "SwapCached SwapTotal SwapFree"
        ).split()
    },
    "node_filesystem_size_bytes": {"device", "mountpoint", "fstype"},
    "node_filesystem_free_bytes": {"device", "mountpoint", "fstype"},
    "node_filesystem_avail_bytes": {"device", "mountpoint", "fstype"},
    "node_network_receive_bytes_total": {"device"},
    "node_network_transmit_bytes_total": {"device"},
    "node_disk_read_bytes_total": {"device"},
    "node_disk_written_bytes_total": {"device"},
    "node_disk_io_time_seconds_total": {"device"},
    "node_disk_reads_completed_total": {"device"},
    "node_disk_writes_completed_total": {"device"},
    "node_boot_time_seconds": set(),
    "node_time_seconds": set(),
    "node_pressure_cpu_waiting_seconds_total": set(),
    "node_pressure_io_waiting_seconds_total": set(),
    "node_pressure_memory_waiting_seconds_total": set(),
    "process_virtual_memory_max_bytes": set(),
}


@dataclass
class Family:
    type: str
    labels: set[str]
    samples: list[tuple[dict[str, str], float]]


def parse(text: str) -> dict[str, Family]:
    """Family name (as written, with ``_total``) → type, label names and samples."""
    out: dict[str, Family] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            entry = out.setdefault(s.name, Family(fam.type, set(), []))
            entry.labels |= set(s.labels)
            entry.samples.append((s.labels, s.value))
    return out


def fetch(url: str) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.headers["Content-Type"], response.read().decode()


@pytest.fixture(scope="module")
def agent_port() -> Iterator[int]:
    with running_agent() as port:
        yield port


@pytest.fixture(scope="module")
def node_exporter() -> Iterator[str]:
    needs_tool("prometheus-node-exporter")
    port = free_tcp_port()
    proc = subprocess.Popen(
        ["prometheus-node-exporter", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port(port, proc)
        yield fetch(f"http://127.0.0.1:{port}/metrics")[1]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


def test_metrics_content_type_and_promtool_lint(agent_port: int) -> None:
    needs_tool("promtool")
    content_type, text = fetch(f"http://127.0.0.1:{agent_port}/metrics")
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    lint = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    problems = [line for line in (lint.stdout + lint.stderr).splitlines() if line.strip()]
    assert problems, "node_memory_* names are always flagged: promtool did not run?"
    assert [p for p in problems if not LINT_ALLOWED.match(p)] == []


def test_dashboard_metrics_are_present_with_their_labels(agent_port: int) -> None:
    fams = parse(fetch(f"http://127.0.0.1:{agent_port}/metrics")[1])
    missing = [name for name in DASHBOARD if name not in fams]
    assert missing == []
    for name, labels in DASHBOARD.items():
        assert fams[name].labels == labels, name
    modes = {s[0]["mode"] for s in fams["node_cpu_seconds_total"].samples}
    assert modes == {"user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"}
    cpus = {s[0]["cpu"] for s in fams["node_cpu_seconds_total"].samples}
    assert len(cpus) == psutil.cpu_count()
    (uname,) = fams["node_uname_info"].samples
    assert uname[0]["nodename"] == psutil.os.uname().nodename
    assert any(s[0]["mountpoint"] == "/" for s in fams["node_filesystem_size_bytes"].samples)


def test_names_types_and_labels_match_node_exporter(agent_port: int, node_exporter: str) -> None:
    ours = parse(fetch(f"http://127.0.0.1:{agent_port}/metrics")[1])
    theirs = parse(node_exporter)
    for name in DASHBOARD:
        assert name in theirs, f"node_exporter has no {name} here: the reference changed?"
    common = sorted(set(ours) & set(theirs))
    assert len(common) >= 100
    mismatched = [
        (name, ours[name].type, theirs[name].type, ours[name].labels ^ theirs[name].labels)
        for name in common
        if ours[name].type != theirs[name].type or ours[name].labels != theirs[name].labels
    ]
    assert mismatched == []
    # The same devices, CPUs and file systems are reported (values differ with time).
    for name, key in (
        ("node_cpu_seconds_total", "cpu"),
        ("node_network_receive_bytes_total", "device"),
        ("node_filesystem_size_bytes", "mountpoint"),
    ):
        assert {s[0][key] for s in ours[name].samples} == {s[0][key] for s in theirs[name].samples}
    ours_total = ours["node_memory_MemTotal_bytes"].samples[0][1]
    assert ours_total == theirs["node_memory_MemTotal_bytes"].samples[0][1]


def test_events_are_in_range_and_agree_with_metrics_and_psutil(agent_port: int) -> None:
    base = f"http://127.0.0.1:{agent_port}"
    _, body = fetch(f"{base}/events")
    events = json.loads(body)
    fams = parse(fetch(f"{base}/metrics")[1])
    assert abs(events["time"] - time.time()) < 60
    for key in ("cpu_percent", "memory_percent", "disk_percent"):
        assert 0.0 <= events[key] <= 100.0, key
    assert events["num_pids"] > 1
    assert "throttled" not in events  # no vcgencmd on this machine

    def gauge(name: str, **labels: str) -> float:
        for sample_labels, value in fams[name].samples:
            if all(sample_labels.get(k) == v for k, v in labels.items()):
                return value
        raise AssertionError(f"no {name}{labels}")

    total = gauge("node_memory_MemTotal_bytes")
    avail = gauge("node_memory_MemAvailable_bytes")
    assert events["memory_percent"] == pytest.approx(100 * (total - avail) / total, abs=2.0)
    assert events["memory_percent"] == pytest.approx(psutil.virtual_memory().percent, abs=2.0)
    size = gauge("node_filesystem_size_bytes", mountpoint="/")
    free = gauge("node_filesystem_free_bytes", mountpoint="/")
    avail_fs = gauge("node_filesystem_avail_bytes", mountpoint="/")
    used = size - free
    assert events["disk_percent"] == pytest.approx(100 * used / (used + avail_fs), abs=0.5)
    assert events["disk_percent"] == pytest.approx(psutil.disk_usage("/").percent, abs=0.5)
    pids = len(psutil.pids())
    assert abs(events["num_pids"] - pids) <= max(20, pids // 5)


def test_cpu_percent_is_measured_between_calls(agent_port: int) -> None:
    base = f"http://127.0.0.1:{agent_port}"
    fetch(f"{base}/events")
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:  # keep one CPU busy between two calls
        sum(range(10000))
    busy = json.loads(fetch(f"{base}/events")[1])["cpu_percent"]
    assert 100 / psutil.cpu_count() * 0.5 <= busy <= 100.0


def test_keep_alive_serves_several_requests_on_one_connection(agent_port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", agent_port, timeout=10)
    try:
        for path in ("/metrics", "/events", "/metrics"):
            conn.request("GET", path)
            response = conn.getresponse()
            assert response.status == 200
            assert response.read()
        conn.request("HEAD", "/metrics")
        response = conn.getresponse()
        assert response.status == 200
        assert int(response.headers["Content-Length"]) > 1000
        assert response.read() == b""
        conn.request("GET", "/missing")
        assert conn.getresponse().status == 404
    finally:
        conn.close()
