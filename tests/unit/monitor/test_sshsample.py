"""Agentless sampling: the command's output parsed by the agent's own collectors.

PI4 is what the command prints on a Raspberry Pi 4 on Raspberry Pi OS (bookworm), cut down to a
few lines per file (the file formats and the sysfs layout are the Pi's: cpu_thermal hwmon under
thermal_zone0, rpi_volt on the firmware device, the device-tree model ending in a NUL). The last
tests run the real command with this machine's ``sh`` and compare with the agent in-process.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from piman.monitor.agent.collectors import LinuxNode
from piman.monitor.agent.devices import FS_TYPES_EXCLUDED
from piman.monitor.agent.exposition import MetricFamily
from piman.monitor.collector.sshsample import (
    COMMAND,
    SKIP_FS,
    MalformedSample,
    collect,
    parse_output,
    script,
)
from tests.support import needs_tool

PI4 = """\
@@piman values
time 1733370000.250000000
ticks 100
page_size 16384
machine aarch64
@@piman dirs
/proc/pressure
/proc/1
/proc/2
/proc/412
/proc/1033
@@piman links
/sys/class/hwmon/hwmon0/device\t/sys/devices/virtual/thermal/thermal_zone0
/sys/class/hwmon/hwmon1/device\t/sys/devices/platform/soc/soc:firmware/raspberrypi-hwmon
@@piman statfs
4096 7574272 6412288 6092117 1905008 1797424 /
4096 7574272 6412288 6092117 1905008 1797424 /
4096 130812 100412 100412 0 0 /boot/firmware
4096 97045 96900 96900 242613 242000 /run
4096 97045 97045 97045 242613 242612 /run/user/1000
@@piman vcgencmd
0\tget_throttled\tthrottled=0x50005
0\tmeasure_temp\ttemp=47.2'C
0\tmeasure_clock arm\tfrequency(0)=1500398464
0\tmeasure_clock core\tfrequency(1)=500000992
0\tmeasure_volts core\tvolt=0.8500V
@@piman files
/proc/stat:cpu  10132 0 5340 1203449 1320 0 211 0 0 0
/proc/stat:cpu0 2611 0 1460 300472 312 0 98 0 0 0
/proc/stat:cpu1 2500 0 1300 300900 340 0 40 0 0 0
/proc/stat:cpu2 2521 0 1280 301077 330 0 38 0 0 0
/proc/stat:cpu3 2500 0 1300 301000 338 0 35 0 0 0
/proc/stat:intr 3141592 0 0 12 0
/proc/stat:ctxt 6543210
/proc/stat:btime 1733360000
/proc/stat:processes 4321
/proc/stat:procs_running 2
/proc/stat:procs_blocked 0
/proc/meminfo:MemTotal:        3880088 kB
/proc/meminfo:MemFree:         3112000 kB
/proc/meminfo:MemAvailable:    3492079 kB
/proc/meminfo:Active(anon):      52000 kB
/proc/meminfo:HugePages_Total:       0
/proc/loadavg:0.08 0.12 0.10 1/180 1033
/proc/vmstat:pgpgin 250000
/proc/vmstat:pgfault 1200000
/proc/vmstat:oom_kill 0
/proc/vmstat:nr_free_pages 778000
/proc/diskstats: 179 0 mmcblk0 5203 2132 412310 7700 1200 1900 98000 9000 0 11000 16700 0 0 0 0
/proc/diskstats: 179       1 mmcblk0p1 300 0 20000 500 2 0 8 1 0 400 501 0 0 0 0 0 0
/proc/diskstats:   7       0 loop0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
/proc/net/dev:Inter-|   Receive                                                |  Transmit
/proc/net/dev: face |bytes packets errs drop fifo frame compressed multicast|bytes packets errs …
/proc/net/dev:    lo: 1200 12 0 0 0 0 0 0 1200 12 0 0 0 0 0 0
/proc/net/dev:  eth0: 8812345 61234 0 3 0 0 0 120 1234567 9876 0 0 0 0 0 0
/proc/net/dev: wlan0: 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
/proc/net/netstat:TcpExt: SyncookiesSent ListenOverflows TCPTimeouts
/proc/net/netstat:TcpExt: 0 0 7
/proc/net/snmp:Tcp: RtoAlgorithm ActiveOpens PassiveOpens CurrEstab InSegs OutSegs
/proc/net/snmp:Tcp: 1 12 34 2 5000 4000
/proc/net/sockstat:sockets: used 180
/proc/net/sockstat:TCP: inuse 4 orphan 0 tw 0 alloc 6 mem 1
/proc/sys/fs/file-nr:1024\t0\t9223372036854775807
/proc/sys/kernel/random/entropy_avail:256
/proc/sys/kernel/random/poolsize:256
/proc/sys/kernel/domainname:(none)
/proc/sys/kernel/ostype:Linux
/proc/sys/kernel/hostname:rack1-02
/proc/sys/kernel/osrelease:6.6.31+rpt-rpi-v8
/proc/sys/kernel/version:#1 SMP PREEMPT Debian 1:6.6.31-1+rpt1 (2024-05-29)
/proc/pressure/cpu:some avg10=0.00 avg60=0.00 avg300=0.00 total=1234567
/proc/pressure/io:some avg10=0.00 avg60=0.00 avg300=0.00 total=2345678
/proc/pressure/io:full avg10=0.00 avg60=0.00 avg300=0.00 total=1345678
/proc/device-tree/model:Raspberry Pi 4 Model B Rev 1.4\x00
/proc/1/mounts:/dev/mmcblk0p2 / ext4 rw,noatime 0 0
/proc/1/mounts:devtmpfs /dev devtmpfs rw,relatime,size=1805512k,mode=755 0 0
/proc/1/mounts:proc /proc proc rw,relatime 0 0
/proc/1/mounts:/dev/mmcblk0p1 /boot/firmware vfat rw,relatime,fmask=0022,dmask=0022 0 0
/proc/1/mounts:tmpfs /run tmpfs rw,nosuid,nodev,size=776020k,mode=755 0 0
/proc/1/mounts:tmpfs /run/user/1000 tmpfs rw,nosuid,nodev,relatime,size=388004k,mode=700 0 0
/sys/class/net/eth0/operstate:up
/sys/class/net/lo/operstate:unknown
/sys/class/net/wlan0/operstate:down
/sys/class/thermal/thermal_zone0/temp:47236
/sys/class/thermal/thermal_zone0/type:cpu_thermal
/sys/class/hwmon/hwmon0/name:cpu_thermal
/sys/class/hwmon/hwmon0/temp1_input:47236
/sys/class/hwmon/hwmon1/name:rpi_volt
/sys/firmware/devicetree/base/model:Raspberry Pi 4 Model B Rev 1.4\x00
/proc/cpuinfo:Revision\t: c03114
@@piman end
"""


def samples(families: list[MetricFamily]) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    return {f.name: dict(f.samples) for f in families if f.samples}


def one(families: list[MetricFamily], name: str, **labels: str) -> float:
    return samples(families)[name][tuple(sorted(labels.items()))]


def test_a_pi4_sample_gives_the_agents_node_exporter_and_rpi_metrics() -> None:
    fams, events, _ = collect(parse_output(PI4))
    assert one(fams, "node_memory_MemTotal_bytes") == 3880088 * 1024
    assert one(fams, "node_memory_Active_anon_bytes") == 52000 * 1024
    assert one(fams, "node_memory_HugePages_Total") == 0
    cpus = {dict(k)["cpu"] for k in samples(fams)["node_cpu_seconds_total"]}
    assert cpus == {"0", "1", "2", "3"}
    assert one(fams, "node_cpu_seconds_total", cpu="2", mode="idle") == 3010.77
    assert one(fams, "node_load15") == 0.10
    assert one(fams, "node_boot_time_seconds") == 1733360000
    assert one(fams, "node_time_seconds") == 1733370000.25
    root = {"device": "/dev/mmcblk0p2", "fstype": "ext4", "mountpoint": "/"}
    assert one(fams, "node_filesystem_size_bytes", **root) == 7574272 * 4096
    assert one(fams, "node_filesystem_avail_bytes", **root) == 6092117 * 4096
    assert one(fams, "node_filesystem_files_free", **root) == 1797424
    mounts = {dict(k)["mountpoint"] for k in samples(fams)["node_filesystem_size_bytes"]}
    assert mounts == {"/", "/boot/firmware"}  # /run, /dev, /proc left out as the agent does
    assert one(fams, "node_disk_read_bytes_total", device="mmcblk0") == 412310 * 512
    disks = {dict(k)["device"] for k in samples(fams)["node_disk_info"]}
    assert disks == {"mmcblk0", "mmcblk0p1"}  # loop devices left out
    assert one(fams, "node_network_receive_bytes_total", device="eth0") == 8812345
    assert one(fams, "node_network_up", device="eth0") == 1
    assert one(fams, "node_network_up", device="wlan0") == 0
    assert one(fams, "node_sockstat_TCP_mem_bytes") == 16384  # the node's page size
    assert one(fams, "node_netstat_Tcp_CurrEstab") == 2
    assert one(fams, "node_pressure_io_stalled_seconds_total") == 1.345678
    assert one(fams, "node_filefd_maximum") == 9223372036854775807
    assert one(fams, "node_vmstat_pgfault") == 1200000
    assert "node_vmstat_nr_free_pages" not in samples(fams)
    uname = next(iter(samples(fams)["node_uname_info"]))
    assert dict(uname) == {
        "domainname": "(none)",
        "machine": "aarch64",
        "nodename": "rack1-02",
        "release": "6.6.31+rpt-rpi-v8",
        "sysname": "Linux",
        "version": "#1 SMP PREEMPT Debian 1:6.6.31-1+rpt1 (2024-05-29)",
    }
    # hwmon's chip label by node_exporter's rule, through the device links
    assert one(fams, "node_hwmon_temp_celsius", chip="thermal_thermal_zone0", sensor="temp1") == (
        47.236
    )
    chips = samples(fams)["node_hwmon_chip_names"]
    assert (("chip", "soc:firmware_raspberrypi_hwmon"), ("chip_name", "rpi_volt")) in chips
    assert one(fams, "node_thermal_zone_temp", type="cpu_thermal", zone="0") == 47.236
    # the Pi's own
    assert one(fams, "rpi_board_info", model="Raspberry Pi 4 Model B Rev 1.4", revision="c03114")
    assert one(fams, "rpi_throttled_mask") == 0x50005
    assert one(fams, "rpi_throttle_condition", condition="under_voltage", scope="now") == 1
    assert one(fams, "rpi_throttle_condition", condition="throttled", scope="now") == 1
    assert one(fams, "rpi_throttle_condition", condition="arm_freq_capped", scope="since_boot") == 0
    assert one(fams, "rpi_soc_temperature_celsius") == 47.2
    assert one(fams, "rpi_clock_frequency_hertz", component="arm") == 1500398464
    assert one(fams, "rpi_voltage_volts", component="core") == 0.85
    success = {
        dict(k)["collector"]: v for k, v in samples(fams)["node_scrape_collector_success"].items()
    }
    assert set(success.values()) == {1}
    assert {"cpu", "filesystem", "hwmon", "pressure", "vcgencmd"} <= set(success)
    assert not any(name.startswith("process_") for name in samples(fams))  # no agent process
    assert events is not None
    assert events["time"] == 1733370000.25
    assert events["memory_percent"] == 10.0
    assert events["disk_percent"] == round(
        100 * (7574272 - 6412288) / (7574272 - 6412288 + 6092117), 1
    )
    assert events["num_pids"] == 4
    assert events["temperature_celsius"] == 47.2
    assert events["throttled"] == 0x50005
    assert events["cpu_percent"] == 0.0  # no earlier sample to compare with


def test_cpu_percent_is_the_busy_share_since_the_previous_sample() -> None:
    _, _, before = collect(parse_output(PI4))
    later = PI4.replace(
        "/proc/stat:cpu  10132 0 5340 1203449 1320 0 211 0 0 0",
        "/proc/stat:cpu  10432 0 5440 1203949 1320 0 211 0 0 0",  # +400 busy, +500 idle ticks
    )
    _, events, _ = collect(parse_output(later), before)
    assert events is not None
    assert events["cpu_percent"] == pytest.approx(100 * 400 / 900, abs=0.1)


def test_failed_vcgencmd_query_marks_the_collector_failed_and_keeps_the_rest() -> None:
    text = PI4.replace("0\tmeasure_temp\ttemp=47.2'C", "124\tmeasure_temp\t")
    fams, events, _ = collect(parse_output(text))
    success = dict(samples(fams)["node_scrape_collector_success"])
    assert success[(("collector", "vcgencmd"),)] == 0
    assert success[(("collector", "cpu"),)] == 1
    assert "rpi_soc_temperature_celsius" not in samples(fams)
    assert one(fams, "rpi_throttled_mask") == 0x50005
    assert events is not None
    assert events["temperature_celsius"] == 47.236  # the thermal zone instead


def test_a_node_without_vcgencmd_or_hwmon_reports_neither() -> None:
    start, end = PI4.index("@@piman vcgencmd\n"), PI4.index("@@piman files\n")
    text = PI4[:start] + "@@piman vcgencmd\n" + PI4[end:]
    text = "\n".join(
        line for line in text.splitlines() if "/hwmon" not in line and "model" not in line
    )
    fams, _, _ = collect(parse_output(text + "\n"))
    names = set(samples(fams))
    assert not any(n.startswith(("rpi_", "node_hwmon_temp")) for n in names)
    collectors = {dict(k)["collector"] for k in samples(fams)["node_scrape_collector_success"]}
    assert "vcgencmd" not in collectors  # as the agent: no vcgencmd, not a Pi


def test_a_mount_without_statfs_answer_is_a_device_error() -> None:
    text = PI4.replace("4096 130812 100412 100412 0 0 /boot/firmware\n", "")
    fams, _, _ = collect(parse_output(text))
    boot = {"device": "/dev/mmcblk0p1", "fstype": "vfat", "mountpoint": "/boot/firmware"}
    assert one(fams, "node_filesystem_device_error", **boot) == 1
    assert tuple(sorted(boot.items())) not in samples(fams)["node_filesystem_size_bytes"]


@pytest.mark.parametrize(
    "text",
    [
        PI4.replace("@@piman end\n", ""),  # cut short by the output limit or a killed shell
        PI4[: len(PI4) // 2],
        "",
        "Welcome to Raspberry Pi OS\n",
    ],
)
def test_an_output_cut_short_or_foreign_is_refused(text: str) -> None:
    with pytest.raises(MalformedSample):
        parse_output(text)


def test_skipped_file_system_types_are_ones_the_agent_leaves_out() -> None:
    assert [t for t in SKIP_FS if not FS_TYPES_EXCLUDED.match(t)] == []


def test_the_script_is_posix_sh_and_redirects_to_nothing_but_dev_null() -> None:
    text = script()
    assert COMMAND == "sh -c " + shlex.quote(text)
    subprocess.run(["sh", "-n", "-c", text], check=True)
    redirects = re.findall(r">\s*([^\s;)]+)", text)
    assert redirects
    assert set(redirects) <= {"/dev/null", "&1"}


def keys(families: list[MetricFamily]) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return {
        (f.name, labels)
        for f in families
        for labels, _ in f.samples
        if not f.name.startswith("process_")
    }


def test_the_command_on_this_machine_gives_what_the_agent_gives_in_process() -> None:
    out = subprocess.run(COMMAND, shell=True, capture_output=True, text=True, check=True)
    fams, events, _ = collect(parse_output(out.stdout))
    agent = LinuxNode(vcgencmd="").collect()
    assert keys(fams) == keys(agent)
    for name in ("node_memory_MemTotal_bytes", "node_boot_time_seconds"):
        assert samples(fams)[name] == samples(agent)[name]
    root = [k for k in samples(agent)["node_filesystem_size_bytes"] if ("mountpoint", "/") in k]
    for k in root:
        assert (
            samples(fams)["node_filesystem_size_bytes"][k]
            == samples(agent)["node_filesystem_size_bytes"][k]
        )
    success = samples(fams)["node_scrape_collector_success"]
    assert success == samples(agent)["node_scrape_collector_success"]
    assert events is not None
    assert set(events) >= {"time", "cpu_percent", "memory_percent", "disk_percent", "num_pids"}


BUSYBOX_TOOLS = ("sh", "grep", "stat", "date", "uname", "readlink", "timeout", "printf")


def test_the_command_under_busybox_alone_gives_the_same_series(tmp_path: Path) -> None:
    # A minimal image: busybox's sh and tools, no getconf, a date(1) without %N.
    needs_tool("busybox")
    busybox = shutil.which("busybox")
    assert busybox is not None
    for tool in BUSYBOX_TOOLS:
        (tmp_path / tool).symlink_to(busybox)
    out = subprocess.run(
        [str(tmp_path / "sh"), "-c", script()],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": str(tmp_path)},
    )
    assert out.stderr == ""
    fams, _, _ = collect(parse_output(out.stdout))
    assert keys(fams) == keys(LinuxNode(vcgencmd="").collect())
