"""
Tests for L{meshdns_plugin.dns.authority}: the aliases of Kubernetes Services of
type C{ExternalName}, answered with a CNAME and the target's addresses, from
the table or from a chase resolver (a fake here, which remembers what it was
asked); loops; and the full server path around it (AA, the wire fast path
declining, cached answers not shadowing names that became aliases).
"""

from __future__ import annotations

from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import pytest
from twisted.internet import defer
from twisted.logger import capturedLogs
from twisted.names import common
from twisted.names import dns as tdns
from twisted.names.error import DNSNameError, DNSServerError, DomainError
from twisted.python.failure import Failure

from meshdns_plugin.dns.authority import MAX_ALIAS_STEPS, MeshAnswer, MeshAuthority
from meshdns_plugin.service import MeshService
from tests.support.samples import ENTRIES, EXTERNAL, external_name, make_table
from tests.support.servers import MemoryServer, fast_reply, memory_mesh_service, put_cached

#: A chain longer than the authority follows: long0 -> long1 -> ... -> db.upstream.test.
CHAIN = "".join(
    external_name(f"long{i}", "ns1", f"long{i + 1}.ns1" if i < 11 else "db.upstream.test")
    for i in range(12)
)

TTL = 30


class FakeChase(common.ResolverBase):
    """
    A chase resolver: fixed records per (name, type), or C{failure} for
    every question; it remembers every question.
    """

    def __init__(self, records=None, failure: Exception | None = None) -> None:
        common.ResolverBase.__init__(self)
        self.records: dict[tuple[bytes, int], list[tdns.RRHeader]] = records or {}
        self.failure = failure
        self.asked: list[tuple[bytes, int, object]] = []

    def _lookup(self, name, cls, type, timeout):
        self.asked.append((name, type, timeout))
        if self.failure is not None:
            return defer.fail(self.failure)
        return defer.succeed((self.records.get((name, type), []), [], []))


def upstream_a(name: bytes, address: str, ttl: int = 300) -> tdns.RRHeader:
    return tdns.RRHeader(name, tdns.A, ttl=ttl, payload=tdns.Record_A(address, ttl))


UPSTREAM = {
    (b"db.upstream.test", tdns.A): [upstream_a(b"db.upstream.test", "127.0.0.10")],
    (b"db.upstream.test", tdns.AAAA): [
        tdns.RRHeader(b"db.upstream.test", tdns.AAAA, ttl=300, payload=tdns.Record_AAAA("::10"))
    ],
    (b"remote.upstream.test", tdns.A): [
        tdns.RRHeader(
            b"remote.upstream.test",
            tdns.CNAME,
            ttl=300,
            payload=tdns.Record_CNAME(b"real.upstream.test"),
        ),
        upstream_a(b"real.upstream.test", "127.0.0.11"),
    ],
}


@pytest.fixture(scope="module")
def table():
    return make_table(ENTRIES + EXTERNAL + CHAIN)


def result(d: defer.Deferred):
    """The result of a Deferred that has fired (the failure raised)."""
    results: list = []
    d.addBoth(results.append)
    (value,) = results
    if isinstance(value, Failure):
        value.raiseException()
    return value


def lookup(authority: MeshAuthority, name: str, qtype: int = tdns.A, timeout=None):
    return result(authority.query(tdns.Query(name, qtype, tdns.IN), timeout))


def texts(answer) -> list[str]:
    """The answer section as C{owner TYPE data}, the way a reader checks it."""
    answers, authority, additional = answer
    assert (authority, additional) == ([], [])
    out = []
    for record in answers:
        if record.type == tdns.CNAME:
            data = record.payload.name.name.decode()
        else:
            data = record.payload.dottedQuad() if record.type == tdns.A else record.payload._address
        out.append(f"{record.name.name.decode()} {tdns.QUERY_TYPES[record.type]} {data}")
    return out


# --- answers from the table -----------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["inmesh.ns1.svc.cluster.local", "inmesh.ns1", "inmesh.ns1.svc", "INMESH"]
)
def test_target_in_the_mesh_is_answered_from_the_table(table, name: str) -> None:
    chase = FakeChase(UPSTREAM)
    answer = lookup(MeshAuthority(table, chase), name)
    assert isinstance(answer, MeshAnswer)
    assert texts(answer) == [
        f"{name.lower()} CNAME productpage.ns1.svc.cluster.local",
        "productpage.ns1.svc.cluster.local A 10.96.0.10",
    ]
    assert all(record.auth and record.ttl == TTL for record in answer[0])
    assert chase.asked == []


def test_target_in_the_mesh_without_the_family_asked_is_the_cname_alone(table) -> None:
    chase = FakeChase(UPSTREAM)
    answer = lookup(MeshAuthority(table, chase), "ipv4", tdns.AAAA)
    assert isinstance(answer, MeshAnswer)
    assert texts(answer) == ["ipv4 CNAME ipv4only.example"]
    assert chase.asked == []


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # A target that a wildcard matches.
        ("wild.ns1", ["wild.ns1 CNAME foo.wildcard", "foo.wildcard A 192.0.2.8"]),
        # An alias of an alias of a mesh name.
        (
            "twostep",
            [
                "twostep CNAME inmesh.ns1",
                "inmesh.ns1 CNAME productpage.ns1.svc.cluster.local",
                "productpage.ns1.svc.cluster.local A 10.96.0.10",
            ],
        ),
        # A chased answer with a CNAME chain of its own.
        (
            "remote.ns2",
            [
                "remote.ns2 CNAME remote.upstream.test",
                "remote.upstream.test CNAME real.upstream.test",
                "real.upstream.test A 127.0.0.11",
            ],
        ),
    ],
)
def test_cname_chains(table, name: str, expected: list[str]) -> None:
    assert texts(lookup(MeshAuthority(table, FakeChase(UPSTREAM)), name)) == expected


# --- answers from the chase resolver ------------------------------------------------


@pytest.mark.parametrize(("qtype", "data"), [(tdns.A, "A 127.0.0.10"), (tdns.AAAA, "AAAA ::10")])
def test_target_outside_the_mesh_is_chased(table, qtype: int, data: str) -> None:
    chase = FakeChase(UPSTREAM)
    answer = lookup(MeshAuthority(table, chase), "mydb.ns1.svc.cluster.local", qtype, timeout=(3,))
    assert isinstance(answer, MeshAnswer)
    assert texts(answer) == [
        "mydb.ns1.svc.cluster.local CNAME db.upstream.test",
        f"db.upstream.test {data}",
    ]
    assert chase.asked == [(b"db.upstream.test", qtype, (3,))]
    # The chased records keep their own TTLs.
    assert [r.ttl for r in answer[0]] == [TTL, 300]


def test_alias_through_the_search_suffix_shortcut_is_chased(table) -> None:
    chase = FakeChase(UPSTREAM)
    answer = lookup(MeshAuthority(table, chase), "remote.ns2.ns1.svc.cluster.local")
    assert texts(answer)[:2] == [
        "remote.ns2.ns1.svc.cluster.local CNAME remote.ns2",
        "remote.ns2 CNAME remote.upstream.test",
    ]
    assert [name for name, _, _ in chase.asked] == [b"remote.upstream.test"]


def test_alias_of_an_alias_outside_the_mesh_chases_the_last_target(table) -> None:
    chase = FakeChase(UPSTREAM)
    answer = lookup(MeshAuthority(table, chase), "outward")
    assert texts(answer) == [
        "outward CNAME mydb.ns1.svc.cluster.local",
        "mydb.ns1.svc.cluster.local CNAME db.upstream.test",
        "db.upstream.test A 127.0.0.10",
    ]
    assert [name for name, _, _ in chase.asked] == [b"db.upstream.test"]


def test_no_chase_resolver_answers_the_cname_alone(table) -> None:
    answer = lookup(MeshAuthority(table), "mydb")
    assert isinstance(answer, MeshAnswer)
    assert texts(answer) == ["mydb CNAME db.upstream.test"]


@pytest.mark.parametrize(
    "failure",
    [
        DNSNameError("nxdomain"),
        DNSServerError("servfail"),
        DomainError("not mine"),
        defer.TimeoutError("timed out"),
    ],
)
def test_failed_chase_answers_the_cname_alone(table, failure: Exception) -> None:
    chase = FakeChase(failure=failure)
    with capturedLogs() as logs:
        answer = lookup(MeshAuthority(table, chase), "mydb")
    assert isinstance(answer, MeshAnswer)
    assert texts(answer) == ["mydb CNAME db.upstream.test"]
    assert len(chase.asked) == 1
    assert logs == []


def test_unexpected_chase_error_is_logged_and_answers_the_cname_alone(table) -> None:
    chase = FakeChase(failure=RuntimeError("bug"))
    with capturedLogs() as logs:
        answer = lookup(MeshAuthority(table, chase), "mydb")
    assert texts(answer) == ["mydb CNAME db.upstream.test"]
    assert [e["log_format"] for e in logs] == ["Unexpected error looking up {target}"]


def test_chase_answer_that_comes_later(table) -> None:
    pending: defer.Deferred = defer.Deferred()

    class Later(common.ResolverBase):
        def _lookup(self, name, cls, type, timeout):
            return pending

    d = MeshAuthority(table, Later()).lookupAddress(b"mydb")
    fired: list = []
    d.addCallback(fired.append)
    assert fired == []
    pending.callback(([upstream_a(b"db.upstream.test", "127.0.0.10")], [], []))
    assert texts(fired[0]) == ["mydb CNAME db.upstream.test", "db.upstream.test A 127.0.0.10"]


# --- loops and long chains ----------------------------------------------------------


def test_alias_to_itself(table) -> None:
    chase = FakeChase(UPSTREAM)
    answer = lookup(MeshAuthority(table, chase), "self")
    assert texts(answer) == ["self CNAME self.ns1", "self.ns1 CNAME self.ns1"]
    assert chase.asked == []


def test_loop_of_two_aliases_gives_each_cname_once(table) -> None:
    chase = FakeChase(UPSTREAM)
    answer = lookup(MeshAuthority(table, chase), "ping.ns1")
    assert isinstance(answer, MeshAnswer)
    assert texts(answer) == ["ping.ns1 CNAME pong.ns1", "pong.ns1 CNAME ping.ns1"]
    assert chase.asked == []


def test_chain_longer_than_the_limit_stops_without_chasing(table) -> None:
    chase = FakeChase(UPSTREAM)
    answer = lookup(MeshAuthority(table, chase), "long0")
    got = texts(answer)
    assert len(got) == MAX_ALIAS_STEPS == 8
    assert got[0] == "long0 CNAME long1.ns1"
    assert got[-1] == "long7.ns1 CNAME long8.ns1"
    assert chase.asked == []


def test_chain_within_the_limit_is_chased(table) -> None:
    chase = FakeChase(UPSTREAM)
    answer = lookup(MeshAuthority(table, chase), "long5")
    got = texts(answer)
    assert got[-2:] == ["long11.ns1 CNAME db.upstream.test", "db.upstream.test A 127.0.0.10"]
    assert len(got) == 8


# --- other query types ---------------------------------------------------------------


def test_cname_question_is_answered_with_the_first_step(table) -> None:
    chase = FakeChase(UPSTREAM)
    answer = lookup(MeshAuthority(table, chase), "outward", tdns.CNAME)
    assert isinstance(answer, MeshAnswer)
    assert texts(answer) == ["outward CNAME mydb.ns1.svc.cluster.local"]
    answer = lookup(MeshAuthority(table, chase), "mydb.ns1.ns1.svc.cluster.local", tdns.CNAME)
    assert texts(answer) == ["mydb.ns1.ns1.svc.cluster.local CNAME mydb.ns1"]
    assert chase.asked == []


def test_cname_question_for_other_names_goes_on(table) -> None:
    with pytest.raises(DomainError):
        lookup(MeshAuthority(table), "productpage", tdns.CNAME)


@pytest.mark.parametrize("qtype", [tdns.MX, tdns.TXT, tdns.SRV, tdns.PTR])
def test_other_types_of_an_alias_go_on_to_the_next_resolver(table, qtype: int) -> None:
    chase = FakeChase(UPSTREAM)
    with pytest.raises(DomainError):
        lookup(MeshAuthority(table, chase), "mydb", qtype)
    assert chase.asked == []


def test_no_pointer_records_for_aliases(table) -> None:
    targets = {host for hosts in table.pointers.values() for host in hosts}
    assert not targets & set(table.aliases)


# --- through the server -----------------------------------------------------------------


def query_packet(name: str, rdtype: str = "A") -> bytes:
    return dns.message.make_query(name, rdtype, use_edns=0, payload=1232).to_wire()


@pytest.mark.parametrize("udp", [True, False])
def test_server_answers_an_alias_on_the_full_path_with_aa(table, udp: bool) -> None:
    server = MemoryServer(table)
    server.authority.chase = FakeChase(UPSTREAM)
    packet = query_packet("MyDB.ns1.svc.cluster.local")
    assert fast_reply(server.factory, packet, udp) is None
    reply = dns.message.from_wire(server.packet(packet, udp))
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AA
    assert reply.question[0].name.to_text() == "MyDB.ns1.svc.cluster.local."
    assert [r.to_text() for r in reply.answer] == [
        "mydb.ns1.svc.cluster.local. 30 IN CNAME db.upstream.test.",
        "db.upstream.test. 300 IN A 127.0.0.10",
    ]
    assert server.factory.stats.queries["A", "mesh"] == 1


def test_server_cname_alone_keeps_aa_and_noerror(table) -> None:
    server = MemoryServer(table)
    server.authority.chase = FakeChase(failure=DNSNameError("nx"))
    reply = dns.message.from_wire(server.packet(query_packet("mydb", "AAAA")))
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AA
    assert [r.to_text() for r in reply.answer] == ["mydb. 30 IN CNAME db.upstream.test."]


# --- MeshService: the chase is the forwarder; cached answers do not shadow aliases ----

SERVICE_DB = external_name("mydb", "default", "db.upstream.test")
SOA = tdns.RRHeader(
    b"upstream.test",
    tdns.SOA,
    ttl=300,
    payload=tdns.Record_SOA(b"ns.upstream.test", b"admin.upstream.test", minimum=60, ttl=300),
)


def mesh_service(folder: Path, entries: str) -> MeshService:
    return memory_mesh_service(folder, entries, mesh={"search": ["default.svc.cluster.local"]})


def test_mesh_service_chases_through_its_forwarder(tmp_path: Path) -> None:
    mesh = mesh_service(tmp_path, SERVICE_DB)
    assert mesh.authority.chase is mesh.forwarder
    put_cached(
        mesh.forwarder.cache,
        "db.upstream.test",
        tdns.A,
        answers=[upstream_a(b"db.upstream.test", "127.0.0.10")],
    )
    answer = lookup(mesh.authority, "mydb.default.svc.cluster.local")
    assert texts(answer) == [
        "mydb.default.svc.cluster.local CNAME db.upstream.test",
        "db.upstream.test A 127.0.0.10",
    ]
    mesh.forwarder.close()


def test_answers_cached_before_a_name_became_an_alias_are_not_served(tmp_path: Path) -> None:
    """
    The fast path looks in the cache for names without pre-encoded answers:
    an NXDOMAIN cached while C{mydb} was forwarded must not outlive the
    reload that makes it an alias.
    """
    mesh = mesh_service(tmp_path, "")
    cache = mesh.forwarder.cache
    names = ["mydb", "mydb.default.svc.cluster.local", "mydb.default.default.svc.cluster.local"]
    for name in names:
        for qtype in (tdns.A, tdns.AAAA):
            put_cached(cache, name, qtype, authority=[SOA], rcode=tdns.ENAME, ttl=60)
    packets = [query_packet(name, rdtype) for name in names for rdtype in ("A", "AAAA")]
    # Cached NXDOMAIN:
    assert all(fast_reply(mesh.factory, p) is not None for p in packets)

    (tmp_path / "entries.yaml").write_text(SERVICE_DB)
    assert mesh.reload()
    assert all(fast_reply(mesh.factory, p) is None for p in packets)
    mesh.forwarder.close()
