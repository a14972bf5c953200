"""
L{meshdns_plugin.dns.autopath} on Twisted's fake reactor: the real server
factory, mesh authority and forwarder, with upstream sockets the test
answers one by one.

The expected outcomes are what glibc's C{res_nsearch} does with the same
answers, one search domain at a time: an NXDOMAIN goes on to the next
domain, records end the search, and anything else is left to the client
(it gets the NXDOMAIN of the name it asked, and searches on itself).
"""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from meshdns_plugin.config import parse_config
from meshdns_plugin.dns.autopath import Autopath, candidates, search_tail
from meshdns_plugin.dns.server import MeshDNSServerFactory
from tests.support.samples import make_table
from tests.support.servers import CLIENT, MemoryServer, RecordingProtocol

#: The test table's clients search C{ns1.svc.cluster.local} first (samples.SEARCH);
#: the rest of a kubelet-style list, with a node domain.
TAIL = (b"svc.cluster.local", b"cluster.local", b"node.test")
ASKED = "www.example.test.ns1.svc.cluster.local."
FURTHER = [
    "www.example.test.svc.cluster.local.",
    "www.example.test.cluster.local.",
    "www.example.test.node.test.",
    "www.example.test.",
]
SOA = (
    "cluster.local. 30 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. "
    "1 7200 1800 86400 30"
)


class Searching:
    """A memory server with autopath, and the upstream questions it sent."""

    def __init__(self, tail=TAIL) -> None:
        self.server = MemoryServer(make_table())
        self.autopath = Autopath(self.server.forwarder, tail)
        self.server.factory = MeshDNSServerFactory(
            authorities=[self.server.authority],
            clients=[self.server.forwarder],
            autopath=self.autopath,
        )
        self.proto = RecordingProtocol()
        self.answered: set[int] = set()

    def ask(self, name: str, rtype: str = "A", udp: bool = True) -> None:
        query = dns.message.make_query(name, rtype)
        self.server.factory.packetReceived(query.to_wire(), self.proto, CLIENT if udp else None)

    def pending(self) -> dict[tuple[str, str], int]:
        """(name, type) -> socket index of every upstream question not answered yet."""
        found = {}
        for index, sock in enumerate(self.server.sockets.created):
            if index in self.answered or sock.closed or not sock.sent:
                continue
            question = dns.message.from_wire(sock.sent[-1]).question[0]
            found[question.name.to_text(), dns.rdatatype.to_text(question.rdtype)] = index
        return found

    def reply(self, name: str, rcode: int = dns.rcode.NOERROR, answer=(), rtype: str = "A") -> None:
        """The upstream answers the pending question for C{name}."""
        index = self.pending()[name, rtype]
        sock = self.server.sockets.created[index]
        query = dns.message.from_wire(sock.sent[-1])
        response = dns.message.make_response(query)
        response.set_rcode(rcode)
        for text in answer:
            response.answer.append(dns.rrset.from_text(*text.split(maxsplit=4)))
        if rcode == dns.rcode.NXDOMAIN or not answer:
            response.authority.append(dns.rrset.from_text(*SOA.split(maxsplit=4)))
        self.answered.add(index)
        self.server.sockets.deliver(sock, response.to_wire())

    def replies(self) -> list[dns.message.Message]:
        return [dns.message.from_wire(d) for d in self.proto.sent]


def nxdomain(search: Searching, *names: str) -> None:
    for name in names:
        search.reply(name, dns.rcode.NXDOMAIN)


def test_candidates_in_the_clients_order() -> None:
    first = b"ns1.svc.cluster.local"
    assert candidates(b"www.example.test." + first, first, TAIL) == (
        b"www.example.test.svc.cluster.local",
        b"www.example.test.cluster.local",
        b"www.example.test.node.test",
        b"www.example.test",
    )
    # Not under the first domain, or the domain itself (a label boundary counts).
    assert candidates(b"www.example.test", b"ns1.svc.cluster.local", TAIL) is None
    assert candidates(b"xns1.svc.cluster.local", b"ns1.svc.cluster.local", TAIL) is None


def test_every_candidate_asked_at_once_and_the_first_with_records_answers() -> None:
    search = Searching()
    search.ask(ASKED)
    # The asked name and all four further candidates are upstream together.
    assert set(search.pending()) == {(n, "A") for n in [ASKED, *FURTHER]}
    search.reply("www.example.test.", answer=["www.example.test. 300 IN A 192.0.2.7"])
    assert search.proto.sent == []  # the candidates before it decide first
    nxdomain(search, ASKED, *FURTHER[:3])
    (reply,) = search.replies()
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.question[0].name.to_text() == ASKED
    cname, address = reply.answer
    assert cname.rdtype == dns.rdatatype.CNAME and cname.name.to_text() == ASKED
    assert cname[0].target.to_text() == "www.example.test."
    # The CNAME holds no longer than the NXDOMAINs it rests on (SOA minimum 30).
    assert cname.ttl == 30
    assert address.name.to_text() == "www.example.test." and address[0].address == "192.0.2.7"
    assert not reply.flags & dns.flags.AA
    assert (search.autopath.stats.answers, search.autopath.stats.questions_saved) == (1, 4)
    # Answered: nothing is held for a process handing over to wait on.
    assert search.server.factory.outstanding == 0


def test_answer_waits_only_for_the_candidates_that_decide() -> None:
    search = Searching()
    search.ask(ASKED)
    nxdomain(search, ASKED)
    search.reply(FURTHER[0], answer=[f"{FURTHER[0]} 60 IN A 192.0.2.8"])
    (reply,) = search.replies()
    assert reply.answer[1][0].address == "192.0.2.8"
    assert len(search.pending()) == 3  # the later candidates are not waited for


@pytest.mark.parametrize(
    "stop",
    [
        pytest.param(lambda s: s.reply(FURTHER[0]), id="nodata"),
        pytest.param(lambda s: s.reply(FURTHER[0], dns.rcode.SERVFAIL), id="servfail"),
        pytest.param(
            lambda s: s.server.reactor.advance(s.server.forwarder.timeout + 1), id="timeout"
        ),
    ],
)
def test_a_candidate_that_is_not_nxdomain_leaves_the_search_to_the_client(stop) -> None:
    """glibc would stop on it or see it differently: the client gets the NXDOMAIN it asked for."""
    search = Searching()
    search.ask(ASKED)
    nxdomain(search, ASKED)
    # A later candidate's records must not be given past the undecided one.
    search.reply(FURTHER[1], answer=[f"{FURTHER[1]} 60 IN A 192.0.2.9"])
    stop(search)
    (reply,) = search.replies()
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert reply.answer == [] and reply.authority[0].rdtype == dns.rdatatype.SOA
    assert search.autopath.stats.answers == 0 and search.autopath.stats.searches == 1


def test_the_asked_name_answers_for_itself() -> None:
    search = Searching()
    search.ask(ASKED)
    search.reply(FURTHER[0], answer=[f"{FURTHER[0]} 60 IN A 192.0.2.8"])
    search.reply(ASKED, answer=[f"{ASKED} 60 IN A 192.0.2.1"])
    (reply,) = search.replies()
    assert [(r.name.to_text(), r.rdtype) for r in reply.answer] == [(ASKED, dns.rdatatype.A)]
    assert search.autopath.stats.answers == 0


def test_every_candidate_nxdomain_gives_the_asked_names_nxdomain() -> None:
    search = Searching()
    search.ask(ASKED, "AAAA")
    for name in [ASKED, *FURTHER]:
        search.reply(name, dns.rcode.NXDOMAIN, rtype="AAAA")
    (reply,) = search.replies()
    assert reply.rcode() == dns.rcode.NXDOMAIN and reply.question[0].name.to_text() == ASKED


def test_candidates_are_cached_for_the_clients_own_questions() -> None:
    search = Searching()
    search.ask(ASKED)
    nxdomain(search, ASKED, *FURTHER[:3])
    search.reply("www.example.test.", answer=["www.example.test. 300 IN A 192.0.2.7"])
    sockets = len(search.server.sockets.created)
    hits = search.server.forwarder.stats.cache_hits
    search.ask("www.example.test.")
    search.ask(ASKED)  # asked again: searched again, from the cache alone
    assert len(search.server.sockets.created) == sockets
    assert search.server.forwarder.stats.cache_hits > hits
    bare, again = search.replies()[1:]
    assert bare.answer[0][0].address == "192.0.2.7"
    assert again.answer[0].rdtype == dns.rdatatype.CNAME
    assert search.autopath.stats.answers == 2


def test_names_outside_the_first_domain_and_other_types_are_forwarded_as_asked() -> None:
    search = Searching()
    search.ask("www.example.test.")
    search.ask(ASKED, "TXT")
    assert set(search.pending()) == {("www.example.test.", "A"), (ASKED, "TXT")}
    assert search.autopath.stats.searches == 0


def test_without_autopath_only_the_asked_name_goes_upstream() -> None:
    server = MemoryServer(make_table())
    server.factory.packetReceived(
        dns.message.make_query(ASKED, "A").to_wire(), RecordingProtocol(), CLIENT
    )
    assert len(server.sockets.created) == 1


def test_mesh_names_answer_as_before() -> None:
    search = Searching()
    search.ask("productpage.ns1.svc.cluster.local.")
    search.ask("productpage.ns1.ns1.svc.cluster.local.")
    assert search.pending() == {}
    assert all(r.rcode() == dns.rcode.NOERROR and r.answer for r in search.replies())
    assert search.autopath.stats.searches == 0


def test_a_truncated_answer_sends_the_client_to_tcp() -> None:
    search = Searching()
    search.ask(ASKED)
    nxdomain(search, ASKED)
    many = [f"{FURTHER[0]} 60 IN A 192.0.2.{i}" for i in range(1, 60)]
    search.reply(FURTHER[0], answer=many)
    (reply,) = search.replies()
    assert reply.flags & dns.flags.TC and reply.answer == []
    search.ask(ASKED, udp=False)
    assert len(search.replies()[-1].answer[1]) == 59


def test_search_tail(tmp_path) -> None:
    """kubelet's ClusterFirst list: the cluster's three domains, then the node's line."""
    (tmp_path / "resolv.conf").write_text(
        "nameserver 127.0.0.1\nsearch dns.svc.cluster.local svc.cluster.local node.test corp.test\n"
    )

    def config(**mesh):
        return parse_config(
            {"upstream": {"resolv_conf": "resolv.conf"}, "mesh": mesh},
            "meshdns.yaml",
            str(tmp_path),
        )

    assert search_tail(config(per_client_views=True)) == (
        b"svc.cluster.local",
        b"cluster.local",
        b"node.test",
        b"corp.test",
    )
    assert search_tail(config()) == (b"svc.cluster.local", b"node.test", b"corp.test")
    assert search_tail(config(search=["a.test", "b.test"])) == (b"b.test",)
