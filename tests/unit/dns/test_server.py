"""
Reliability and security of L{meshdns_plugin.dns.server}, in memory on
Twisted's fake reactor: hostile packets, access control, the cache bound, and
no timers left behind (the real process is in
C{tests.integration.test_reliability}).
"""

from __future__ import annotations

import ipaddress
import struct

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.names import dns as tdns

from meshdns_plugin.dns.cache import ResponseCache
from meshdns_plugin.dns.server import MeshDNSServerFactory
from tests.support.samples import HEADER, HOSTILE, _header, make_table
from tests.support.servers import MemoryServer, RecordingProtocol, upstream_reply


@pytest.fixture(scope="module")
def memory() -> MemoryServer:
    return MemoryServer(make_table())


def _valid_query_answered(server: MemoryServer) -> None:
    reply = server.packet(dns.message.make_query("productpage", "A").to_wire())
    assert dns.message.from_wire(reply).answer






@pytest.mark.parametrize("data", HOSTILE)
@pytest.mark.parametrize("udp", [True, False])
def test_hostile_packets(memory, data, udp) -> None:
    """Nothing raises; a reply, if any, is a response to the same ID; still serving."""
    reply = memory.packet(data, udp=udp)
    if reply is not None:
        ident, flags = struct.unpack_from("!HH", reply)
        assert flags & 0x8000
        assert ident == 0x4242
    _valid_query_answered(memory)


def test_formerr_or_drop(memory) -> None:
    """Readable header and junk body: FORMERR; no header or a response: dropped."""
    assert memory.packet(b"\x00\x01") is None
    assert memory.packet(_header(flags=0x8100) + b"\x01a\x00\x00\x01\x00\x01") is None
    reply = memory.packet(_header() + b"\xc0\x0c\x00\x01\x00\x01")
    assert reply[3] & 0x0F == dns.rcode.FORMERR


@pytest.mark.parametrize("opcode", [1, 2, 4, 5, 6, 15])
@pytest.mark.parametrize("question", [b"", b"\x01a\x00\x00\x01\x00\x01"])
@pytest.mark.parametrize("udp", [True, False])
def test_other_opcodes_get_notimp_with_ra_clear(memory, opcode, question, udp) -> None:
    """
    RFC 1035 4.1.1: NOTIMP (4) is "the name server does not support the
    requested kind of query". RFC 8906's opcode test (ISC's genreport:
    opcode 15, RD, a 12-byte message with no question) expects NOTIMP, the
    header echoed (ID, opcode, RD) and, since recursion is offered for
    QUERY only, RA clear; likewise with a question, which is not echoed.
    FORMERR stays for what is malformed as a QUERY (L{test_formerr_or_drop}).
    """
    flags = opcode << 11 | 0x0100
    data = _header(qd=1 if question else 0, flags=flags) + question
    reply = memory.packet(data, udp=udp)
    ident, reply_flags, qdcount, ancount, nscount, arcount = struct.unpack("!6H", reply)
    assert ident == 0x4242
    assert reply_flags == 0x8000 | flags | dns.rcode.NOTIMP
    assert (qdcount, ancount, nscount, arcount) == (0, 0, 0, 0)
    # The same server offers recursion to a QUERY, so RA clear above is a choice.
    local = memory.packet(dns.message.make_query("productpage", "A").to_wire())
    assert dns.message.from_wire(local).flags & dns.flags.RA


@settings(
    max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=600), udp=st.booleans())
def test_random_bytes(memory, data, udp) -> None:
    memory.packet(data, udp=udp)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    header=st.tuples(*[st.integers(0, 65535)] * 6),
    body=st.lists(
        st.one_of(
            st.binary(max_size=70).map(lambda b: bytes([len(b) % 256]) + b),
            st.integers(0, 0x3FFF).map(lambda o: struct.pack("!H", 0xC000 | o)),
            st.just(b"\x00"),
            st.binary(min_size=4, max_size=4),
        ),
        max_size=12,
    ),
)
def test_structured_junk(memory, header, body) -> None:
    """Plausible headers with label, pointer and junk soup: never an exception."""
    memory.packet(HEADER.pack(*header) + b"".join(body))


def test_junk_does_not_grow_state(memory) -> None:
    before = (len(memory.forwarder.cache), len(memory.factory.connections))
    for i in range(2000):
        memory.packet(struct.pack("!H", i) + bytes(range(i % 200)))
    assert (len(memory.forwarder.cache), len(memory.factory.connections)) == before
    # Forwards still in flight end within upstream.timeout; then nothing is left.
    memory.reactor.advance(memory.forwarder.timeout + 1)
    assert memory.reactor.getDelayedCalls() == []


def test_not_allowed_client_refused_without_upstream() -> None:
    server = MemoryServer(make_table())
    server.factory.allow = (ipaddress.ip_network("10.0.0.0/8"),)
    proto = RecordingProtocol()
    query = dns.message.make_query("elsewhere.upstream.test", "A").to_wire()
    server.factory.packetReceived(query, proto, ("192.0.2.1", 5353))
    reply = dns.message.from_wire(proto.sent[-1])
    assert reply.rcode() == dns.rcode.REFUSED
    assert server.forwarder.stats.requests == 0 and not server.forwarder._inflight
    # Allowed network and loopback (also as IPv4-mapped IPv6) are served.
    for client in (("10.1.2.3", 5353), ("127.0.0.1", 5353), ("::ffff:127.0.0.1", 5353)):
        server.factory.packetReceived(
            dns.message.make_query("productpage", "A").to_wire(), proto, client
        )
        assert dns.message.from_wire(proto.sent[-1]).rcode() == dns.rcode.NOERROR


def test_default_allows_loopback_only() -> None:
    factory = MeshDNSServerFactory()
    assert factory.allowed("127.0.0.1") and factory.allowed("::1")
    assert not factory.allowed("192.0.2.1") and not factory.allowed("not-an-ip")




def test_cache_bound_and_lru() -> None:
    clock = [0.0]
    cache = ResponseCache(10, clock=lambda: clock[0])

    def key(i: int) -> tuple[bytes, int, int, int, bytes]:
        return (b"\x02n%d\x00" % i, 1, 1, 0, b"")

    record = tdns.RRHeader(b"n", tdns.A, ttl=60, payload=tdns.Record_A("192.0.2.1", 60))
    reply = upstream_reply("n", tdns.A, answers=[record])
    for i in range(100):
        cache.put(key(i), reply)
        if i >= 1:
            # Keep touching the first entry: the LRU keeps it.
            assert cache.get(key(0)) is not None
    assert len(cache) == 10 and cache.evictions == 90
    assert cache.get(key(0)) is not None
    assert cache.get(key(50)) is None


def test_no_timers_left_behind() -> None:
    """Mesh answers, cache hits and junk leave no delayed call (no timer per entry)."""
    memory = MemoryServer(make_table())
    name = b"timers.upstream.test"
    memory.cache(
        "timers.upstream.test",
        tdns.A,
        answers=[tdns.RRHeader(name, tdns.A, ttl=60, payload=tdns.Record_A("127.0.0.1", 60))],
    )
    for data in (
        dns.message.make_query("productpage", "A").to_wire(),
        dns.message.make_query("timers.upstream.test", "A").to_wire(),
        dns.message.make_query("timers.upstream.test", "A", use_edns=0).to_wire(),
        b"junk" * 5,
    ):
        memory.packet(data)
        memory.full(data) if len(data) > 16 else None
    assert memory.reactor.getDelayedCalls() == []


# Real processes from here on.






















