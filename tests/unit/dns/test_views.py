"""
Per-client views in the server (L{meshdns_plugin.dns.views}): the query's
source address picks the view, and nothing one view answered (an encoded
answer, a memoised reply, a full-path answer) reaches another's client.

Expected answers are Kubernetes DNS's: a pod's bare Service name resolves
in the pod's own namespace.
"""

from __future__ import annotations

from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from twisted.names import dns as tdns

from meshdns_plugin.service import MeshService
from tests.support.cluster import pods_slice, service
from tests.support.servers import (
    FakeDatagramSockets,
    RecordingProtocol,
    memory_mesh_service,
    put_cached,
)

ENTRIES = "".join(
    [
        service("team-a", "web", "10.96.1.1"),
        service("team-b", "web", "10.96.2.1"),
        pods_slice("team-a", "web", "10.0.1.10"),
        pods_slice("team-b", "web", "10.0.2.10"),
        """
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: team-a}
spec: {type: ExternalName, externalName: web.team-a.svc.cluster.local}
""",
    ]
)

A_CLIENT, B_CLIENT, OTHER = ("10.0.1.10", 5353), ("10.0.2.10", 5353), ("10.0.9.9", 5353)


def start(tmp_path: Path, entries: str = ENTRIES) -> MeshService:
    return memory_mesh_service(
        tmp_path,
        entries,
        mesh={"per_client_views": True, "namespace": "default"},
        listen={"allow": ["10.0.0.0/8"]},
    )


def ask(service_: MeshService, name: str, client, ident: int = 7, tcp: bool = False):
    """The decoded reply to an A query for C{name} from C{client} (L{None}: none sent)."""
    query = dns.message.make_query(name, "A")
    query.id = ident
    proto = RecordingProtocol()
    if tcp:
        proto.peer_host = client[0]
        service_.factory.packetReceived(query.to_wire(), proto, None)
    else:
        service_.factory.packetReceived(query.to_wire(), proto, client)
    return dns.message.from_wire(proto.sent[-1]) if proto.sent else None


def addresses(reply) -> list[str]:
    return sorted(r.address for rrset in reply.answer for r in rrset if r.rdtype == dns.rdatatype.A)


@pytest.mark.parametrize("tcp", [False, True])
def test_the_client_address_picks_the_view(tmp_path: Path, tcp: bool) -> None:
    """The same packet, twice from each client: each gets its own namespace's `web`."""
    meshdns = start(tmp_path)
    for _ in range(2):
        assert addresses(ask(meshdns, "web.", A_CLIENT, tcp=tcp)) == ["10.96.1.1"]
        assert addresses(ask(meshdns, "web.", B_CLIENT, tcp=tcp)) == ["10.96.2.1"]
    # An unlisted client gets the view of mesh.namespace, which has no `web`
    # (forwarded, to an upstream that never answers here).
    assert ask(meshdns, "web.", OTHER, tcp=tcp) is None


def test_a_memoised_reply_never_answers_another_view(tmp_path: Path) -> None:
    """The memo of team-a's view holds `web`; team-b's client still gets team-b's."""
    meshdns = start(tmp_path)
    packet = dns.message.make_query("web.", "A")
    packet.id = 9
    data = packet.to_wire()
    factory = meshdns.factory
    proto = RecordingProtocol()
    factory.packetReceived(data, proto, A_CLIENT)
    assert factory.memoized(data, A_CLIENT[0]) is not None
    assert factory.memoized(data, B_CLIENT[0]) is None
    factory.packetReceived(data, proto, B_CLIENT)
    replies = [dns.message.from_wire(r) for r in proto.sent]
    assert [addresses(r) for r in replies] == [["10.96.1.1"], ["10.96.2.1"]]
    assert addresses(dns.message.from_wire(factory.memoized(data, B_CLIENT[0]))) == ["10.96.2.1"]


def test_the_full_path_is_per_view(tmp_path: Path) -> None:
    """An ExternalName alias (the Twisted Names path) answers in its own namespace only."""
    meshdns = start(tmp_path)
    reply = ask(meshdns, "ext.", A_CLIENT)
    assert reply is not None
    assert [str(rrset.name) for rrset in reply.answer][0] == "ext."
    assert addresses(reply) == ["10.96.1.1"]
    assert ask(meshdns, "ext.", B_CLIENT) is None


def test_a_reload_moves_a_client(tmp_path: Path) -> None:
    """A pod address that moves to another namespace gets that namespace's view."""
    meshdns = start(tmp_path)
    assert addresses(ask(meshdns, "web.", A_CLIENT)) == ["10.96.1.1"]
    moved = ENTRIES.replace('["10.0.1.10"]', '["10.0.1.11"]').replace(
        '["10.0.2.10"]', '["10.0.1.10"]'
    )
    (tmp_path / "entries.yaml").write_text(moved)
    assert meshdns.reload()
    assert addresses(ask(meshdns, "web.", A_CLIENT)) == ["10.96.2.1"]


def test_off_by_default(tmp_path: Path) -> None:
    meshdns = memory_mesh_service(tmp_path, ENTRIES)
    assert meshdns.factory.views is None


OWN_DNS_ENTRIES = ENTRIES + """
---
apiVersion: v1
kind: Pod
metadata: {name: own, namespace: team-b}
spec:
  dnsConfig: {searches: [corp.test]}
status: {podIP: 10.0.2.20}
"""
ASKED = "www.example.test.team-b.svc.cluster.local."
OWN_CLIENT = ("10.0.2.20", 5353)


def searching(tmp_path: Path) -> tuple[MeshService, FakeDatagramSockets]:
    """Per-client views with autopath, the node's search line empty, upstream sockets faked."""
    (tmp_path / "resolv.conf").write_text("nameserver 127.0.0.1\n")
    meshdns = memory_mesh_service(
        tmp_path,
        OWN_DNS_ENTRIES,
        mesh={"per_client_views": True, "namespace": "default", "autopath": True},
        listen={"allow": ["10.0.0.0/8"]},
        upstream={"servers": ["127.0.0.1:1"], "resolv_conf": str(tmp_path / "resolv.conf")},
    )
    sockets = FakeDatagramSockets(meshdns.forwarder._reactor)
    sockets.install(meshdns.forwarder.upstream)
    return meshdns, sockets


def upstream_questions(sockets: FakeDatagramSockets) -> list[str]:
    return [dns.message.from_wire(s.sent[-1]).question[0].name.to_text() for s in sockets.created]


def test_no_autopath_for_a_pod_with_its_own_dns_settings(tmp_path: Path) -> None:
    """
    A ClusterFirst pod of team-b is searched for (kubelet's list: the asked
    name and the three further candidates go upstream); a pod of the same
    namespace with dnsConfig searches asks only what it asks.
    """
    meshdns, sockets = searching(tmp_path)
    ask(meshdns, ASKED, OWN_CLIENT)
    assert upstream_questions(sockets) == [ASKED]
    assert meshdns.factory.autopath.stats.searches == 0
    ask(meshdns, "www.example.org.team-b.svc.cluster.local.", B_CLIENT)
    assert upstream_questions(sockets)[1:] == [
        "www.example.org.team-b.svc.cluster.local.",
        "www.example.org.svc.cluster.local.",
        "www.example.org.cluster.local.",
        "www.example.org.",
    ]
    assert meshdns.factory.autopath.stats.searches == 1


def test_a_cached_nxdomain_for_a_pod_with_its_own_dns_is_not_memoised(tmp_path: Path) -> None:
    """The same packet from a ClusterFirst pod must still be searched."""
    meshdns, sockets = searching(tmp_path)
    query = dns.message.make_query(ASKED, "A")
    zone = b"cluster.local"
    soa = tdns.Record_SOA(b"ns.dns." + zone, b"hostmaster." + zone, 1, 7200, 1800, 86400, 30)
    put_cached(
        meshdns.forwarder.cache,
        ASKED,
        tdns.A,
        authority=[tdns.RRHeader(zone, tdns.SOA, ttl=30, payload=soa)],
        rcode=tdns.ENAME,
    )
    factory, proto = meshdns.factory, RecordingProtocol()
    factory.packetReceived(query.to_wire(), proto, OWN_CLIENT)
    assert dns.message.from_wire(proto.sent[-1]).rcode() == dns.rcode.NXDOMAIN
    assert sockets.created == []
    assert factory.memoized(query.to_wire(), B_CLIENT[0]) is None
    factory.packetReceived(query.to_wire(), proto, B_CLIENT)
    assert factory.autopath.stats.searches == 1
