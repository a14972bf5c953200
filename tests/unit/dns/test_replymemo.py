"""
The reply memo of L{MeshDNSServerFactory.packetReceived}: a UDP query packet
answered before gets the same reply (but for its ID) without being parsed,
for as long as the table and the cache entry behind the reply are unchanged.
"""

from __future__ import annotations

import dns.message
import dns.rcode
import dns.rdatatype
from twisted.names import dns as tdns

from meshdns_plugin.dns import stats
from meshdns_plugin.ops.querylog import QueryLoggingFactory
from tests.support.samples import ENTRIES, make_table
from tests.support.servers import MemoryServer, RecordingProtocol


def query(name: str, rdtype: str = "A", ident: int = 1) -> bytes:
    message = dns.message.make_query(name, rdtype)
    message.id = ident
    return message.to_wire()


def addresses(reply: bytes | None) -> list[str]:
    assert reply is not None
    message = dns.message.from_wire(reply)
    return [r.to_text() for rrset in message.answer for r in rrset]


def ttls(reply: bytes | None) -> list[int]:
    assert reply is not None
    return [rrset.ttl for rrset in dns.message.from_wire(reply).answer]


def cached_server(ttl: int = 300) -> MemoryServer:
    server = MemoryServer(make_table())
    name = b"cached.upstream.test"
    record = tdns.RRHeader(name, tdns.A, ttl=ttl, payload=tdns.Record_A("127.0.0.10", ttl))
    server.cache("cached.upstream.test", tdns.A, answers=[record])
    return server


def test_same_reply_but_the_id() -> None:
    server = MemoryServer(make_table())
    first = server.packet(query("productpage.ns1", ident=1))
    second = server.packet(query("productpage.ns1", ident=2))
    assert first is not None and second is not None
    assert (first[:2], second[:2]) == (b"\x00\x01", b"\x00\x02")
    assert first[2:] == second[2:]
    assert server.factory.stats.queries["A", stats.MESH] == 2


def test_rotation_survives() -> None:
    server = MemoryServer(make_table())
    orders = {tuple(addresses(server.packet(query("many.example", ident=i)))) for i in range(16)}
    assert len(orders) > 1
    assert {tuple(sorted(order)) for order in orders} == {
        ("192.0.2.21", "192.0.2.22", "192.0.2.23", "192.0.2.24")
    }


def test_forgotten_when_the_table_changes() -> None:
    server = MemoryServer(make_table())
    assert addresses(server.packet(query("ipv4only.example"))) == ["192.0.2.9"]
    server.authority.table = make_table(ENTRIES.replace("192.0.2.9", "192.0.2.99"))
    assert addresses(server.packet(query("ipv4only.example", ident=2))) == ["192.0.2.99"]


def test_cache_hits_age() -> None:
    server = cached_server()
    assert ttls(server.packet(query("cached.upstream.test"))) == [300]
    server.reactor.advance(0.5)
    assert ttls(server.packet(query("cached.upstream.test", ident=2))) == [300]
    server.reactor.advance(1)
    assert ttls(server.packet(query("cached.upstream.test", ident=3))) == [299]
    assert server.forwarder.stats.cache_hits == 3
    assert server.factory.stats.queries["A", stats.CACHE_HIT] == 3


def test_not_used_once_the_cache_entry_expired() -> None:
    server = cached_server(ttl=5)
    assert addresses(server.packet(query("cached.upstream.test"))) == ["127.0.0.10"]
    server.reactor.advance(6)
    # Expired: forwarded (to nowhere, in this test), not answered from the memo.
    reply = server.packet(query("cached.upstream.test", ident=2))
    assert reply is None or addresses(reply) == []


def test_tcp_is_not_memoized() -> None:
    server = MemoryServer(make_table())
    assert server.packet(query("productpage.ns1"), udp=False) is not None
    assert len(server.factory.fastpath.memo) == 0


def test_bounded() -> None:
    server = MemoryServer(make_table())
    server.factory.fastpath.memo.MAX_ENTRIES = 2
    for ident, name in enumerate(["productpage.ns1", "ipv4only.example", "many.example"]):
        server.packet(query(name, ident=ident))
    assert len(server.factory.fastpath.memo) == 1
    reply = server.packet(query("productpage.ns1", ident=9))
    assert reply is not None and reply[:2] == b"\x00\x09"


def test_hosts_not_let_in_get_no_memo() -> None:
    server = MemoryServer(make_table())
    packet = query("productpage.ns1")
    assert server.packet(packet) is not None
    assert server.factory.memoized(packet, "127.0.0.1") is not None
    # A host never seen, or refused, is left to packetReceived.
    assert server.factory.memoized(packet, "192.0.2.1") is None
    proto = RecordingProtocol()
    server.factory.packetReceived(packet, proto, ("192.0.2.1", 53))
    assert dns.message.from_wire(proto.sent[0]).rcode() == dns.rcode.REFUSED
    assert server.factory.memoized(packet, "192.0.2.1") is None


def test_not_with_query_logging() -> None:
    server = MemoryServer(make_table(), factory_type=QueryLoggingFactory)
    packet = query("productpage.ns1")
    assert server.packet(packet) is not None
    assert server.factory.memoized(packet, "127.0.0.1") is None


def test_different_case_is_a_different_entry() -> None:
    server = MemoryServer(make_table())
    lower = dns.message.from_wire(server.packet(query("productpage.ns1")))
    mixed = dns.message.from_wire(server.packet(query("ProductPage.NS1")))
    assert lower.question[0].name.to_text() == "productpage.ns1."
    assert mixed.question[0].name.to_text() == "ProductPage.NS1."
    assert mixed.answer[0].rdtype == dns.rdatatype.A
