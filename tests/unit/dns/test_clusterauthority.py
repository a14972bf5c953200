"""
L{meshdns_plugin.dns.clusterauthority} through the real server factory on
Twisted's fake reactor: which names get a local NXDOMAIN, its SOA (CoreDNS
kubernetes' format: C{plugin/backend_lookup.go}, TTL and MINIMUM 5), and
that everything else still goes upstream.
"""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from meshdns_plugin.dns.autopath import Autopath
from meshdns_plugin.dns.clusterauthority import ClusterAuthority
from meshdns_plugin.dns.server import MeshDNSServerFactory
from tests.support.samples import make_table
from tests.support.servers import CLIENT, MemoryServer, RecordingProtocol

SERVICES = {("shop", "web")}


class Cluster:
    def __init__(self, ready: bool = True, autopath: bool = False) -> None:
        self.server = MemoryServer(make_table())
        self.ready = ready
        self.cluster = ClusterAuthority(
            "cluster.local.",
            lambda namespace, name: (namespace, name) in SERVICES,
            lambda: self.ready,
            clock=lambda: 1_700_000_000,
        )
        tail = (b"svc.cluster.local", b"cluster.local", b"node.test")
        self.server.factory = MeshDNSServerFactory(
            authorities=[self.server.authority],
            clients=[self.server.forwarder],
            cluster=self.cluster,
            autopath=Autopath(self.server.forwarder, tail, self.cluster) if autopath else None,
        )
        self.proto = RecordingProtocol()

    def ask(self, name: str, rtype: str = "A") -> dns.message.Message | None:
        before = len(self.proto.sent)
        query = dns.message.make_query(name, rtype)
        self.server.factory.packetReceived(query.to_wire(), self.proto, CLIENT)
        return dns.message.from_wire(self.proto.sent[-1]) if len(self.proto.sent) > before else None

    def upstream(self) -> list[str]:
        """The names asked upstream so far."""
        asked = []
        for sock in self.server.sockets.created:
            question = dns.message.from_wire(sock.sent[-1]).question[0]
            asked.append(f"{question.name} {dns.rdatatype.to_text(question.rdtype)}")
        return asked


def test_an_absent_name_gets_nxdomain_with_kube_dns_soa() -> None:
    cluster = Cluster()
    for rtype in ("A", "AAAA", "TXT", "SRV"):
        reply = cluster.ask("cart.shop.svc.cluster.local.", rtype)
        assert reply.rcode() == dns.rcode.NXDOMAIN
        assert reply.flags & dns.flags.AA
        (soa,) = reply.authority
        assert soa.name.to_text() == "cluster.local." and soa.ttl == 5
        assert soa[0].to_text() == (
            "ns.dns.cluster.local. hostmaster.cluster.local. 1700000000 7200 1800 86400 5"
        )
    reply = cluster.ask("www.example.test.cluster.local.")
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert cluster.upstream() == []
    assert cluster.cluster.stats.nxdomains == 5


def test_existing_names_and_kube_dns_own_names_go_upstream() -> None:
    cluster = Cluster()
    cluster.ask("_http._tcp.web.shop.svc.cluster.local.", "SRV")
    cluster.ask("web-0.web.shop.svc.cluster.local.", "A")
    cluster.ask("shop.svc.cluster.local.", "A")
    cluster.ask("dns-version.cluster.local.", "TXT")
    cluster.ask("10-0-0-1.shop.pod.cluster.local.", "A")
    cluster.ask("www.example.test.", "A")
    assert len(cluster.upstream()) == 6
    assert cluster.cluster.stats.nxdomains == 0


def test_a_mesh_name_is_never_claimed() -> None:
    """productpage.ns1 is a Service of the entries only: its other types go upstream."""
    cluster = Cluster()
    assert cluster.ask("productpage.ns1.svc.cluster.local.", "A").answer
    cluster.ask("productpage.ns1.svc.cluster.local.", "TXT")
    assert cluster.upstream() == ["productpage.ns1.svc.cluster.local. TXT"]


def test_nothing_is_claimed_before_the_source_holds_the_cluster() -> None:
    cluster = Cluster(ready=False)
    cluster.ask("cart.shop.svc.cluster.local.")
    assert cluster.upstream() == ["cart.shop.svc.cluster.local. A"]
    assert cluster.cluster.stats.nxdomains == 0


def test_autopath_asks_upstream_only_outside_the_cluster_domain() -> None:
    cluster = Cluster(autopath=True)
    assert cluster.ask("www.example.test.ns1.svc.cluster.local.") is None
    assert cluster.upstream() == ["www.example.test.node.test. A", "www.example.test. A"]
    assert cluster.cluster.stats.nxdomains == 3


def test_autopath_gives_the_absent_original_name_its_own_nxdomain() -> None:
    """Every candidate NXDOMAIN: the asked name's own answer, as without autopath (AA, SOA)."""
    cluster = Cluster(autopath=True)
    cluster.ask("www.example.test.ns1.svc.cluster.local.")
    for sock in cluster.server.sockets.created:
        query = dns.message.from_wire(sock.sent[-1])
        response = dns.message.make_response(query)
        response.set_rcode(dns.rcode.NXDOMAIN)
        cluster.server.sockets.deliver(sock, response.to_wire())
    reply = dns.message.from_wire(cluster.proto.sent[-1])
    assert reply.rcode() == dns.rcode.NXDOMAIN and reply.flags & dns.flags.AA
    assert reply.authority[0][0].mname.to_text() == "ns.dns.cluster.local."
