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
        yield f"http://127.0.0.1:{port}/metrics"
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
    theirs = parse(fetch(node_exporter)[1])
    ours = parse(fetch(f"http://127.0.0.1:{agent_port}/metrics")[1])
    theirs_after = parse(fetch(node_exporter)[1])
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
    # The same devices, CPUs and file systems are reported (values differ with time). Other
    # tests on this machine mount file systems and add links meanwhile: ours are read between
    # two readings of node_exporter's, and must hold what both had and nothing neither had.
    for name, key in (
        ("node_cpu_seconds_total", "cpu"),
        ("node_network_receive_bytes_total", "device"),
        ("node_filesystem_size_bytes", "mountpoint"),
    ):
        ours_set = {s[0][key] for s in ours[name].samples}
        before = {s[0][key] for s in theirs[name].samples}
        after = {s[0][key] for s in theirs_after[name].samples}
        assert ours_set
        assert before & after <= ours_set <= before | after, (name, ours_set, before, after)
    ours_total = ours["node_memory_MemTotal_bytes"].samples[0][1]
    assert ours_total == theirs["node_memory_MemTotal_bytes"].samples[0][1]


def _spans(value: float, before: float, after: float, slack: float) -> bool:
    """``value`` lies within what ``before`` and ``after`` span, give or take ``slack``."""
    return min(before, after) - slack <= value <= max(before, after) + slack


def test_events_are_in_range_and_agree_with_metrics_and_psutil(agent_port: int) -> None:
    base = f"http://127.0.0.1:{agent_port}"
    # Memory, disk and processes move while the test reads them (the machine is shared, and
    # other tests run beside this one): each figure of /events is read between two readings of
    # its references (the agent's /metrics, psutil), and must lie within what they span.
    mem0, disk0, pids0 = (
        psutil.virtual_memory().percent,
        psutil.disk_usage("/").percent,
        len(psutil.pids()),
    )
    fams0 = parse(fetch(f"{base}/metrics")[1])
    events = json.loads(fetch(f"{base}/events")[1])
    fams1 = parse(fetch(f"{base}/metrics")[1])
    mem1, disk1, pids1 = (
        psutil.virtual_memory().percent,
        psutil.disk_usage("/").percent,
        len(psutil.pids()),
    )
    assert abs(events["time"] - time.time()) < 60
    for key in ("cpu_percent", "memory_percent", "disk_percent"):
        assert 0.0 <= events[key] <= 100.0, key
    assert events["num_pids"] > 1
    assert "throttled" not in events  # no vcgencmd on this machine

    def gauge(fams: dict[str, Family], name: str, **labels: str) -> float:
        for sample_labels, value in fams[name].samples:
            if all(sample_labels.get(k) == v for k, v in labels.items()):
                return value
        raise AssertionError(f"no {name}{labels}")

    def memory(fams: dict[str, Family]) -> float:
        total = gauge(fams, "node_memory_MemTotal_bytes")
        return 100 * (total - gauge(fams, "node_memory_MemAvailable_bytes")) / total

    def disk(fams: dict[str, Family]) -> float:
        size = gauge(fams, "node_filesystem_size_bytes", mountpoint="/")
        free = gauge(fams, "node_filesystem_free_bytes", mountpoint="/")
        avail = gauge(fams, "node_filesystem_avail_bytes", mountpoint="/")
        return 100 * (size - free) / (size - free + avail)

    mem, dsk = events["memory_percent"], events["disk_percent"]
    # Same definitions: rounded to 0.1, and what moved in the instants between two reads.
    assert _spans(mem, memory(fams0), memory(fams1), 1.0), (mem, memory(fams0), memory(fams1))
    assert _spans(mem, mem0, mem1, 1.0), (mem, mem0, mem1)
    assert _spans(dsk, disk(fams0), disk(fams1), 0.2), (dsk, disk(fams0), disk(fams1))
    assert _spans(dsk, disk0, disk1, 0.2), (dsk, disk0, disk1)
    # psutil counts /proc's numeric entries too; tasks come and go between the reads.
    pids = events["num_pids"]
    assert _spans(pids, pids0, pids1, max(10, pids0 // 10)), (pids, pids0, pids1)


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
