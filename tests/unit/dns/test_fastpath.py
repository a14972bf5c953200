"""
The wire fast path against the full Twisted Names path: for the same query,
both must give the same reply after decoding (same rcode, flags, question,
sections and TTLs; address order may differ only for rotated answers).
"""

from __future__ import annotations

import dns.edns
import dns.flags
import dns.message
import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.names import dns as tdns

from meshdns_plugin.dns import message as wire
from tests.support.samples import make_table
from tests.support.servers import CLIENT, MemoryServer, fast_reply

MESH_NAMES = [
    "productpage.ns1.svc.cluster.local",
    "productpage.ns1",
    "productpage.ns1.svc",
    "productpage",
    "example.ns2",
    "headless.ns1.svc.cluster.local",
    "www.google.com",
    "www.google.com.ns1.svc.cluster.local",
    "foo.wildcard",
    "a.b.wildcard",
    "foo.wildcard.ns1.svc.cluster.local",
    "ipv4only.example",
    "many.example",
    "auto.internal",
    "tcp-echo.external-1.svc.cluster.local",
    "big.example",
]
CACHED = [
    ("cached.upstream.test", "A"),
    ("nx.upstream.test", "A"),
    ("nodata.upstream.test", "AAAA"),
]


def _soa(name: bytes, ttl: int) -> tdns.RRHeader:
    payload = tdns.Record_SOA(b"ns." + name, b"host." + name, 1, 2, 3, 4, 60, ttl)
    return tdns.RRHeader(name, tdns.SOA, ttl=ttl, payload=payload)


@pytest.fixture(scope="module")
def server() -> MemoryServer:
    server = MemoryServer(make_table())
    name = b"cached.upstream.test"
    server.cache(
        "cached.upstream.test",
        tdns.A,
        answers=[
            tdns.RRHeader(name, tdns.A, ttl=300, payload=tdns.Record_A("127.0.0.10", 300)),
            tdns.RRHeader(name, tdns.A, ttl=200, payload=tdns.Record_A("127.0.0.11", 200)),
        ],
    )
    server.cache(
        "nx.upstream.test",
        tdns.A,
        authority=[_soa(b"upstream.test", 120)],
        rcode=tdns.ENAME,
        ttl=60,
    )
    server.cache("nodata.upstream.test", tdns.AAAA, authority=[_soa(b"upstream.test", 120)], ttl=60)
    # Age every cached answer, so TTL patching is exercised.
    server.reactor.advance(17)
    return server


def _query(name: str, rdtype: str, edns: int | None, case_seed: int = 0, rd: bool = True) -> bytes:
    mixed = "".join(
        c.upper() if (case_seed >> (i % 16)) & 1 else c.lower() for i, c in enumerate(name)
    )
    query = dns.message.make_query(
        mixed,
        rdtype,
        use_edns=edns is not None,
        payload=edns or 1232,
    )
    if not rd:
        query.flags &= ~dns.flags.RD
    return query.to_wire()


def _decoded(data: bytes) -> tuple:
    message = dns.message.from_wire(data)

    def section(rrsets) -> list:
        # Rotation may reorder the addresses of an RRset; compare them as sets,
        # keeping RRset order (a CNAME comes first).
        return [(r.name, r.rdtype, r.ttl, frozenset(r.to_rdataset())) for r in rrsets]

    return (
        message.id,
        message.flags,
        message.rcode(),
        message.edns,
        message.payload if message.edns >= 0 else None,
        [(q.name.to_text(), q.rdtype) for q in message.question],
        [q.name.labels for q in message.question],
        section(message.answer),
        section(message.authority),
        section(message.additional),
    )


def _both(server: MemoryServer, data: bytes, udp: bool = True) -> tuple[bytes | None, bytes]:
    fast = fast_reply(server.factory, data, udp)
    full = server.full(data, udp)
    assert full is not None
    return fast, full


CORPUS = (
    [
        (name, rdtype, edns, seed)
        for name in MESH_NAMES
        for rdtype in ("A", "AAAA")
        for edns in (None, 1232, 4096)
        for seed in (0, 0b1010110011)
    ]
    + [("cached.upstream.test", "A", edns, seed) for edns in (None, 1232) for seed in (0, 0b111)]
    + [
        ("nx.upstream.test", "A", None, 0),
        ("NX.upstream.test", "A", 1232, 0),
        ("nodata.upstream.test", "AAAA", None, 0),
    ]
)


def _assert_equivalent(server: MemoryServer, data: bytes) -> None:
    """Both paths give the same decoded reply, the fast one never the smaller."""
    fast, full = _both(server, data)
    if fast is None:
        # The fast path declined (the answer may need truncation): the full
        # path, the reference, answers alone.
        assert len(full) > 512 or dns.message.from_wire(full).flags & dns.flags.TC
        return
    assert _decoded(fast) == _decoded(full)
    assert len(fast) >= len(full)
    # The reply memo's copy, given to the same packet with another ID, is the
    # same reply with that ID.
    assert server.packet(data) is not None
    assert server.factory.allowed(CLIENT[0])
    repeat = b"\xbe\xef" + data[2:]
    memoized = server.factory.memoized(repeat, CLIENT[0])
    assert memoized is not None
    assert _decoded(memoized) == _decoded(b"\xbe\xef" + full[2:])


@pytest.mark.parametrize(("name", "rdtype", "edns", "seed"), CORPUS)
def test_fast_path_equals_full_path(server, name, rdtype, edns, seed) -> None:
    """Every corpus query is answered the same by both paths."""
    _assert_equivalent(server, _query(name, rdtype, edns, seed))


def test_truncation_left_to_full_path(server) -> None:
    """60 addresses do not fit 512 bytes: TC=1 from the full path, empty answer."""
    data = _query("big.example", "A", None)
    assert fast_reply(server.factory, data) is None
    reply = dns.message.from_wire(server.packet(data))
    assert reply.flags & dns.flags.TC and not reply.answer
    # With EDNS 1232 the lowercase question's answer fits, on the fast path.
    data = _query("big.example", "A", 1232)
    assert fast_reply(server.factory, data) is not None


def test_corpus_is_mostly_fast(server) -> None:
    """The fast path really answers (a test of equivalence alone could pass if it never did)."""
    answered = sum(
        fast_reply(server.factory, _query(n, t, e, s)) is not None
        for n, t, e, s in CORPUS
    )
    assert answered >= len(CORPUS) - 6


def test_tcp_is_never_truncated(server) -> None:
    """Over TCP the big answer comes whole from both paths."""
    fast, full = _both(server, _query("big.example", "A", None), udp=False)
    assert fast is not None
    assert _decoded(fast) == _decoded(full)
    assert len(dns.message.from_wire(fast).answer[0]) == 60


def test_cache_ttls_are_aged(server) -> None:
    """A cache hit carries TTLs reduced by the time spent in the cache."""
    fast, _ = _both(server, _query("cached.upstream.test", "A", None))
    ttls = {r.ttl for r in dns.message.from_wire(fast).answer}
    assert ttls == {200 - 17}


def test_rd_is_echoed(server) -> None:
    fast, full = _both(server, _query("productpage", "A", None, rd=False))
    assert not dns.message.from_wire(fast).flags & dns.flags.RD
    assert _decoded(fast) == _decoded(full)


def test_rotation_visits_every_order(server) -> None:
    """Several addresses rotate on the fast path: each comes first sometimes."""
    firsts = set()
    for _ in range(32):
        reply = server.packet(_query("many.example", "A", None))
        firsts.add(dns.message.from_wire(reply).answer[0][0].address)
    assert len(firsts) == 4


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        # Two questions: FORMERR (RFC 1035 4.1.2 allows one in practice).
        (
            bytes.fromhex("1234 0100 0002 0000 0000 0000".replace(" ", ""))
            + b"\x01a\x00\x00\x01\x00\x01" * 2,
            wire.FORMERR,
        ),
        # Trailing junk after the question.
        (
            bytes.fromhex("1234 0100 0001 0000 0000 0000".replace(" ", ""))
            + b"\x01a\x00\x00\x01\x00\x01xx",
            wire.FORMERR,
        ),
        # Not a QUERY (opcode STATUS).
        (
            bytes.fromhex("1234 1100 0001 0000 0000 0000".replace(" ", ""))
            + b"\x01a\x00\x00\x01\x00\x01",
            wire.NOTIMP,
        ),
        # EDNS version 1: BADVERS (RFC 6891 6.1.3).
        (dns.message.make_query("a.", "A", use_edns=1).to_wire(), wire.BADVERS),
        # A cookie is understood (and not forwarded): no problem.
        (
            dns.message.make_query(
                "a.", "A", use_edns=0, options=[dns.edns.GenericOption(10, b"12345678")]
            ).to_wire(),
            None,
        ),
    ],
)
def test_query_problems(data: bytes, problem: int | None) -> None:
    query = wire.read_query(data)
    assert query is not None and query.problem == problem


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 11,
        # Compression pointer in the question.
        bytes.fromhex("1234 0100 0001 0000 0000 0000".replace(" ", ""))
        + b"\xc0\x0c\x00\x01\x00\x01",
        # A response.
        bytes.fromhex("1234 8100 0001 0000 0000 0000".replace(" ", ""))
        + b"\x01a\x00\x00\x01\x00\x01",
    ],
)
def test_unreadable_packets(data: bytes) -> None:
    """No question to read: the server answers FORMERR from the header, or drops it."""
    assert wire.read_query(data) is None


def test_name_wire_round_trip() -> None:
    assert wire.name_to_wire(b"a.example") == b"\x01a\x07example\x00"
    assert wire.wire_to_name(b"\x01a\x07example\x00") == b"a.example"
    assert wire.name_to_wire(b"") == b"\x00"


_label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)


_family = st.sampled_from(["A", "AAAA"])
_mesh_name = st.one_of(
    st.sampled_from(MESH_NAMES),
    st.lists(_label, min_size=1, max_size=3).map(lambda ls: ".".join(ls) + ".wildcard"),
    st.lists(_label, min_size=1, max_size=3).map(
        lambda ls: ".".join(ls) + ".wildcard.ns1.svc.cluster.local"
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    question=st.one_of(st.tuples(_mesh_name, _family), st.sampled_from(CACHED)),
    edns=st.one_of(st.none(), st.integers(min_value=0, max_value=65535)),
    seed=st.integers(min_value=0, max_value=2**16 - 1),
    rd=st.booleans(),
)
def test_fast_path_equals_full_path_generated(server, question, edns, seed, rd) -> None:
    """Generated mesh, wildcard, shortcut and cached queries: same answers."""
    name, rdtype = question
    # A cached answer is cached for the RD bit it was asked with.
    rd = rd or question in CACHED
    _assert_equivalent(server, _query(name, rdtype, edns, seed, rd))
