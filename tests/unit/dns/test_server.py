"""
Reliability and security: hostile packets, access control, ANY, failing
upstreams, TCP resource bounds, the cache bound, and no timers left behind.

Unit tests use the in-memory server on Twisted's fake reactor; the rest run
the real C{twistd -n meshdns} against the fake upstream on loopback.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import time

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
from tests.support.processes import free_port, run_twistd
from tests.support.samples import CONF_ENTRIES, make_table
from tests.support.servers import MemoryServer, RecordingProtocol, upstream_reply

HEADER = struct.Struct("!HHHHHH")


@pytest.fixture(scope="module")
def memory() -> MemoryServer:
    return MemoryServer(make_table())


def _valid_query_answered(server: MemoryServer) -> None:
    reply = server.packet(dns.message.make_query("productpage", "A").to_wire())
    assert dns.message.from_wire(reply).answer


def _header(qd=1, an=0, ns=0, ar=0, flags=0x0100, ident=0x4242) -> bytes:
    return HEADER.pack(ident, flags, qd, an, ns, ar)


HOSTILE = [
    b"",
    b"\x00",
    _header()[:7],
    _header(),  # says one question, has none
    _header(qd=65535) + b"\x01a\x00\x00\x01\x00\x01",
    _header() + b"\xc0\x0c\x00\x01\x00\x01",  # pointer to itself: a loop
    _header() + b"\x01a\xc0\x0e\x00\x01\x00\x01",  # pointer to its own label
    _header() + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01",  # label of 64
    _header() + (b"\x3f" + b"a" * 63) * 5 + b"\x00\x00\x01\x00\x01",  # name over 255
    _header(flags=0x8100) + b"\x01a\x00\x00\x01\x00\x01",  # QR=1
    _header(flags=0x7900) + b"\x01a\x00\x00\x01\x00\x01",  # opcode 15
    _header() + b"\x01a\x00\x00\x01\x00\x03",  # class CH
    _header(qd=3) + b"\x01a\x00\x00\x01\x00\x01" * 3,
    _header(ar=1) + b"\x01a\x00\x00\x01\x00\x01" + b"\x00\x00\x29\x10",  # cut OPT
    _header(an=5) + b"\x01a\x00\x00\x01\x00\x01",  # lying answer count
]


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


def test_refuses_open_resolver(tmp_path) -> None:
    config = tmp_path / "meshdns.yaml"
    config.write_text("listen: {address: 0.0.0.0, port: 0}\n")
    code, output = run_twistd(["--config", str(config)])
    assert code != 0 and "Traceback" not in output
    assert "listen.allow: required when listening on 0.0.0.0" in output.splitlines()[-1]
    code, output = run_twistd(["--interface", "0.0.0.0"])
    assert code != 0 and "listen.allow" in output.splitlines()[-1]


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


def test_any_answered_minimally(start_meshdns, upstream) -> None:
    meshdns = start_meshdns({"upstream": {"servers": [upstream.server]}})
    for name in ("address.internal", "anything.upstream.test"):
        reply = meshdns.query(name, "ANY")
        assert reply.rcode() == dns.rcode.NOERROR
        assert [r.rdtype for r in reply.answer] == [dns.rdatatype.HINFO]
    assert upstream.count("anything.upstream.test.", "ANY") == 0


@pytest.mark.parametrize(
    ("mode", "name"),
    [
        ("drop-all", "x.upstream.test"),
        ("servfail-all", "x.upstream.test"),
        ("wrong-id", "x.upstream.test"),
        (None, "slow.upstream.test"),
        (None, "blackhole.upstream.test"),
    ],
)
def test_failing_upstream_servfail_in_time(start_meshdns, upstream_factory, mode, name) -> None:
    bad = upstream_factory(mode)
    meshdns = start_meshdns({"upstream": {"servers": [bad.server], "timeout": 1}})
    started = time.monotonic()
    reply = meshdns.query(name, timeout=5)
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert time.monotonic() - started < 1.8
    # Not cached: the next query goes upstream again.
    before = bad.count(name + ".")
    meshdns.query(name, timeout=5)
    assert bad.count(name + ".") == before + 1


def test_down_upstream_then_failover(start_meshdns, upstream) -> None:
    dead = f"127.0.0.1:{free_port()}"
    meshdns = start_meshdns({"upstream": {"servers": [dead, dead], "timeout": 1}})
    started = time.monotonic()
    assert meshdns.query("x.upstream.test").rcode() == dns.rcode.SERVFAIL
    assert time.monotonic() - started < 1.8


def test_servfail_fails_over_to_second(start_meshdns, upstream_factory) -> None:
    first = upstream_factory("servfail-all")
    second = upstream_factory()
    meshdns = start_meshdns({"upstream": {"servers": [first.server, second.server], "timeout": 2}})
    assert [r.address for r in meshdns.query("ok.upstream.test").answer[0]] == ["127.0.0.10"]
    assert first.count("ok.upstream.test.") == 1 and second.count("ok.upstream.test.") == 1


def test_serve_stale(start_meshdns, upstream) -> None:
    meshdns = start_meshdns(
        {"upstream": {"servers": [upstream.server], "timeout": 1}, "cache": {"serve_stale": 60}}
    )
    assert meshdns.query("ttl5.upstream.test").answer[0].ttl == 5
    upstream.stop()
    time.sleep(5.2)
    reply = meshdns.query("ttl5.upstream.test", timeout=5)
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.answer[0].ttl == 30
    assert meshdns.query("never-seen.upstream.test", timeout=5).rcode() == dns.rcode.SERVFAIL


def _tcp_connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    return sock


def _tcp_query(sock: socket.socket, name: str) -> dns.message.Message:
    data = dns.message.make_query(name, "A").to_wire()
    sock.sendall(struct.pack("!H", len(data)) + data)
    length = struct.unpack("!H", _recv_exact(sock, 2))[0]
    return dns.message.from_wire(_recv_exact(sock, length))


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_tcp_limits(start_meshdns) -> None:
    meshdns = start_meshdns(
        {
            "listen": {"tcp_idle_timeout": 1, "tcp_max_connections": 4, "tcp_max_queries": 3},
            "entries": [CONF_ENTRIES],
        }
    )
    # Idle, and stalled in the middle of a length prefix: closed after ~1 s.
    idle = _tcp_connect(meshdns.port)
    stalled = _tcp_connect(meshdns.port)
    stalled.sendall(b"\x00")
    assert _closed_within(idle, 3) and _closed_within(stalled, 3)
    # Queries per connection.
    sock = _tcp_connect(meshdns.port)
    for _ in range(3):
        assert _tcp_query(sock, "address.internal").answer
    with pytest.raises(ConnectionError):
        _tcp_query(sock, "address.internal")
    # Concurrent connections: the fifth is closed at once; UDP still answers.
    held = [_tcp_connect(meshdns.port) for _ in range(4)]
    time.sleep(0.2)
    extra = _tcp_connect(meshdns.port)
    assert _closed_within(extra, 0.8)
    assert meshdns.query("address.internal").answer
    for s in (*held, sock, idle, stalled, extra):
        s.close()


def test_hostile_packets_real_process(start_meshdns) -> None:
    """Junk over real UDP and TCP (including a lying length prefix), then a valid query."""
    meshdns = start_meshdns({"listen": {"tcp_idle_timeout": 1}, "entries": [CONF_ENTRIES]})
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        for data in HOSTILE:
            udp.sendto(data, ("127.0.0.1", meshdns.port))
    liar = _tcp_connect(meshdns.port)
    liar.sendall(b"\xff\xff" + b"short")
    for data in HOSTILE:
        with _tcp_connect(meshdns.port) as sock:
            sock.sendall(struct.pack("!H", len(data)) + data)
    assert meshdns.query("address.internal").answer
    assert _closed_within(liar, 3)
    assert meshdns.process.poll() is None
    assert "Traceback" not in meshdns.log()
