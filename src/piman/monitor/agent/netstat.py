"""Protocol counters (``node_netstat_*``) and socket use (``node_sockstat_*``), from /proc/net.

Names follow node_exporter: ``node_netstat_<Proto>_<Field>`` (untyped) for the fields its
default ``--collector.netstat.fields`` keeps, and ``node_sockstat_<PROTO>_<field>`` gauges, plus
``_mem_bytes`` for the page counts of ``mem``. The parsers take file text, so tests can feed
recorded files.
"""

from __future__ import annotations

import re

from piman.monitor.agent.exposition import MetricFamily

__all__ = ["netstat_families", "parse_pairs", "parse_snmp6", "sockstat_families"]

# node_exporter 1.5's default --collector.netstat.fields.
_FIELDS = re.compile(
    r"^(.*_(InErrors|InErrs)|Ip_Forwarding|Ip(6|Ext)_(InOctets|OutOctets)|Icmp6?_(InMsgs|OutMsgs)"
    r"|TcpExt_(Listen.*|Syncookies.*|TCPSynRetrans|TCPTimeouts)"
    r"|Tcp_(ActiveOpens|InSegs|OutSegs|OutRsts|PassiveOpens|RetransSegs|CurrEstab)"
    r"|Udp6?_(InDatagrams|OutDatagrams|NoPorts|RcvbufErrors|SndbufErrors))$"
)
_SNMP6_KEY = re.compile(r"^([A-Za-z]+6)(\w+)$")


def parse_pairs(text: str) -> dict[str, float]:
    """/proc/net/netstat and /proc/net/snmp: a header line of names, then a line of values."""
    out: dict[str, float] = {}
    lines = text.splitlines()
    for header, values in zip(lines[::2], lines[1::2], strict=False):
        proto, _, names = header.partition(":")
        vproto, _, numbers = values.partition(":")
        if proto != vproto:
            continue
        for name, number in zip(names.split(), numbers.split(), strict=False):
            try:
                out[f"{proto}_{name}"] = float(number)
            except ValueError:
                continue
    return out


def parse_snmp6(text: str) -> dict[str, float]:
    """/proc/net/snmp6: ``Ip6InOctets 123`` lines → ``Ip6_InOctets``."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 2:
            continue
        m = _SNMP6_KEY.match(parts[0])
        if m is None:
            continue
        try:
            out[f"{m.group(1)}_{m.group(2)}"] = float(parts[1])
        except ValueError:
            continue
    return out


def netstat_families(*texts: tuple[str, bool]) -> list[MetricFamily]:
    """``node_netstat_*`` from (text, is_snmp6) pairs of /proc/net/{netstat,snmp,snmp6}."""
    values: dict[str, float] = {}
    for text, is_snmp6 in texts:
        values.update(parse_snmp6(text) if is_snmp6 else parse_pairs(text))
    out = []
    for key in sorted(values):
        if _FIELDS.match(key):
            proto, _, field = key.partition("_")
            fam = MetricFamily(f"node_netstat_{key}", "untyped", f"Statistic {proto}{field}.")
            fam.add(values[key])
            out.append(fam)
    return out


def sockstat_families(page_size: int, *texts: str) -> list[MetricFamily]:
    """``node_sockstat_*`` from /proc/net/sockstat and sockstat6."""
    out = []
    for text in texts:
        for line in text.splitlines():
            proto, sep, rest = line.partition(":")
            if not sep:
                continue
            parts = rest.split()
            for name, number in zip(parts[::2], parts[1::2], strict=False):
                try:
                    value = int(number)
                except ValueError:
                    continue
                metric = f"node_sockstat_{proto}_{name}"
                out.append(_gauge(metric, f"Number of {proto} sockets in state {name}.", value))
                if name == "mem":
                    out.append(
                        _gauge(
                            f"{metric}_bytes",
                            f"Number of {proto} sockets in state {name}_bytes.",
                            value * page_size,
                        )
                    )
    return out


def _gauge(name: str, help_: str, value: float) -> MetricFamily:
    fam = MetricFamily(name, "gauge", help_)
    fam.add(value)
    return fam
