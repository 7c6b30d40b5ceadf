"""node_netstat_* and node_sockstat_* from recorded /proc/net files."""

from __future__ import annotations

from piman.monitor.agent.netstat import netstat_families, sockstat_families

NETSTAT = """\
TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPTimeouts DelayedACKs
TcpExt: 0 3 4 17 10674
IpExt: InNoRoutes InOctets OutOctets
IpExt: 0 23154160037 22752984999
"""
SNMP = """\
Ip: Forwarding DefaultTTL InReceives
Ip: 2 64 30487502
Tcp: RtoAlgorithm ActiveOpens InSegs InErrs CurrEstab
Tcp: 1 5129 143915 0 2
Udp: InDatagrams NoPorts InErrors OutDatagrams
Udp: 100 3 0 90
"""
SNMP6 = """\
Ip6InReceives                   \t12
Ip6InOctets                     \t1200
Icmp6InMsgs                     \t4
Udp6InDatagrams                 \t7
UdpLite6InErrors                \t0
"""
SOCKSTAT = """\
sockets: used 26
TCP: inuse 2 orphan 0 tw 137 alloc 2 mem 248
FRAG: inuse 0 memory 0
"""


def test_netstat_keeps_node_exporters_default_fields() -> None:
    fams = {
        f.name: (f.type, f.samples[0][1])
        for f in netstat_families((NETSTAT, False), (SNMP, False), (SNMP6, True))
    }
    assert fams == {
        "node_netstat_TcpExt_SyncookiesSent": ("untyped", 0),
        "node_netstat_TcpExt_ListenOverflows": ("untyped", 3),
        "node_netstat_TcpExt_ListenDrops": ("untyped", 4),
        "node_netstat_TcpExt_TCPTimeouts": ("untyped", 17),
        "node_netstat_IpExt_InOctets": ("untyped", 23154160037),
        "node_netstat_IpExt_OutOctets": ("untyped", 22752984999),
        "node_netstat_Ip_Forwarding": ("untyped", 2),
        "node_netstat_Tcp_ActiveOpens": ("untyped", 5129),
        "node_netstat_Tcp_InSegs": ("untyped", 143915),
        "node_netstat_Tcp_InErrs": ("untyped", 0),
        "node_netstat_Tcp_CurrEstab": ("untyped", 2),
        "node_netstat_Udp_InDatagrams": ("untyped", 100),
        "node_netstat_Udp_NoPorts": ("untyped", 3),
        "node_netstat_Udp_InErrors": ("untyped", 0),
        "node_netstat_Udp_OutDatagrams": ("untyped", 90),
        "node_netstat_Ip6_InOctets": ("untyped", 1200),
        "node_netstat_Icmp6_InMsgs": ("untyped", 4),
        "node_netstat_Udp6_InDatagrams": ("untyped", 7),
        "node_netstat_UdpLite6_InErrors": ("untyped", 0),
    }


def test_sockstat_gauges_and_memory_in_bytes() -> None:
    fams = {f.name: f.samples[0][1] for f in sockstat_families(4096, SOCKSTAT)}
    assert fams["node_sockstat_sockets_used"] == 26
    assert fams["node_sockstat_TCP_tw"] == 137
    assert fams["node_sockstat_TCP_mem"] == 248
    assert fams["node_sockstat_TCP_mem_bytes"] == 248 * 4096
    assert fams["node_sockstat_FRAG_memory"] == 0
    assert "node_sockstat_FRAG_memory_bytes" not in fams
