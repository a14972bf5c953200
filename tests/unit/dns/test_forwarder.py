"""
The caching forwarder and its upstream client on Twisted's fake reactor with
fake UDP sockets: what goes out on the wire, which replies are accepted,
failover, the deadline, merging, the concurrency bound, RFC 2308 negative
TTLs, the DO/CD and client-subnet cache splits, the question check on TCP
replies, and rate-limited failure logs.

Replies are built with dnspython from the query as sent, so what the
forwarder reads is what an independent implementation writes.
"""

from __future__ import annotations

import errno

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest
from twisted.logger import LogLevel, globalLogPublisher
from twisted.names import dns as tdns
from twisted.names.error import DNSNameError, DNSServerError

from meshdns_plugin.dns.cache import render
from meshdns_plugin.dns.forwarder import UPSTREAM_PAYLOAD, CachingForwarder
from meshdns_plugin.dns.message import read_query

FIRST, SECOND = ("127.0.0.1", 5301), ("127.0.0.1", 5302)


def _reply(query_wire: bytes, rcode=dns.rcode.NOERROR, answers=(), authority=(), name=None):
    query = dns.message.from_wire(query_wire)
    if name is not None:
        query.question[0].name = dns.name.from_text(name)
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    for text in answers:
        response.answer.append(dns.rrset.from_text(query.question[0].name, *text))
    for text in authority:
        response.authority.append(dns.rrset.from_text("upstream.test.", *text))
    return response.to_wire()


def _results(d) -> list:
    out: list = []
    d.addBoth(out.append)
    return out


def asking(sockets, name: str) -> list:
    """The open sockets that sent a query about C{name}."""
    return [
        sock for sock in sockets.open()
        if sock.sent and dns.message.from_wire(sock.sent[0]).question[0].name.to_text() == name
    ]


def forwarder_for(reactor, sockets, servers=(FIRST,), **kwargs) -> CachingForwarder:
    forwarder = CachingForwarder(list(servers), reactor=reactor, **kwargs)
    sockets.install(forwarder.upstream)
    return forwarder


def test_query_uses_edns_and_accepts_only_matching_reply(reactor, sockets) -> None:
    forwarder = forwarder_for(reactor, sockets, timeout=2)
    result = _results(forwarder.lookupAddress(b"a.upstream.test"))
    (sock,) = sockets.created
    (data,) = sock.sent
    query = dns.message.from_wire(data)
    assert sock.peer == FIRST and query.edns == 0 and query.payload == UPSTREAM_PAYLOAD
    good = _reply(data, answers=[(300, "IN", "A", "127.0.0.10")])
    # Another ID, or another question: ignored, and counted.
    other_id = bytes([data[0] ^ 0xFF]) + good[1:]
    sockets.deliver(sock, other_id)
    sockets.deliver(sock, _reply(data, answers=[(300, "IN", "A", "6.6.6.6")], name="evil."))
    assert result == [] and forwarder.stats.ignored_replies == 2
    sockets.deliver(sock, good)
    answers, _, _ = result[0]
    assert [a.payload.dottedQuad() for a in answers] == ["127.0.0.10"]
    assert not any(a.auth for a in answers)
    assert sock.closed and reactor.getDelayedCalls() == [] and not reactor.readers


def test_a_fresh_socket_and_id_per_query(reactor, sockets) -> None:
    forwarder = forwarder_for(reactor, sockets, timeout=2)
    for i in range(20):
        _results(forwarder.lookupAddress(b"n%d.upstream.test" % i))
    assert len(sockets.open()) == 20
    assert len({s.sent[0][:2] for s in sockets.created}) > 15


def test_question_case_is_kept_and_compared_without_case(reactor, sockets) -> None:
    forwarder = forwarder_for(reactor, sockets, timeout=2)
    result = _results(forwarder.lookupAddress(b"MiXeD.upstream.test"))
    (sock,) = sockets.created
    assert b"\x05MiXeD" in sock.sent[0]
    sockets.deliver(sock, _reply(sock.sent[0], answers=[(300, "IN", "A", "127.0.0.10")],
                                 name="mixed.UPSTREAM.test."))
    assert not isinstance(result[0], Exception)


def test_port_unreachable_fails_over_at_once(reactor, sockets) -> None:
    forwarder = forwarder_for(reactor, sockets, [FIRST, SECOND], timeout=2)
    result = _results(forwarder.lookupAddress(b"b.upstream.test"))
    first = sockets.created[0]
    sockets.deliver(first, OSError(errno.ECONNREFUSED, "refused"))
    second = sockets.created[1]
    assert second.peer == SECOND and result == []
    sockets.deliver(second, _reply(second.sent[0], answers=[(300, "IN", "A", "127.0.0.10")]))
    assert [a.payload.dottedQuad() for a in result[0][0]] == ["127.0.0.10"]


@pytest.mark.parametrize("rcode", [dns.rcode.SERVFAIL, dns.rcode.REFUSED])
def test_failover_on_servfail_and_refused(reactor, sockets, rcode) -> None:
    forwarder = forwarder_for(reactor, sockets, [FIRST, SECOND], timeout=2)
    result = _results(forwarder.lookupAddress(b"c.upstream.test"))
    sockets.deliver(sockets.created[0], _reply(sockets.created[0].sent[0], rcode=rcode))
    second = sockets.created[1]
    assert second.peer == SECOND
    sockets.deliver(second, _reply(second.sent[0], answers=[(300, "IN", "A", "127.0.0.10")]))
    assert [a.payload.dottedQuad() for a in result[0][0]] == ["127.0.0.10"]


def test_timeout_asks_the_next_server_and_still_listens(reactor, sockets) -> None:
    """
    A server never heard from gets unbound's first timeout, 0.376 s; then the
    next is asked, but a late reply from the first still answers the client
    (here after the second said SERVFAIL).
    """
    forwarder = forwarder_for(reactor, sockets, [FIRST, SECOND], timeout=2)
    result = _results(forwarder.lookupAddress(b"c.upstream.test"))
    reactor.advance(0.37)
    assert len(sockets.created) == 1
    reactor.advance(0.01)
    first, second = sockets.created
    assert second.peer == SECOND and not first.closed
    sockets.deliver(second, _reply(second.sent[0], rcode=dns.rcode.SERVFAIL))
    assert result == []
    sockets.deliver(first, _reply(first.sent[0], answers=[(300, "IN", "A", "127.0.0.10")]))
    assert [a.payload.dottedQuad() for a in result[0][0]] == ["127.0.0.10"]
    assert first.closed and second.closed


def test_timeout_then_servfail_is_final_at_the_deadline(reactor, sockets) -> None:
    forwarder = forwarder_for(reactor, sockets, [FIRST, SECOND], timeout=2)
    result = _results(forwarder.lookupAddress(b"c.upstream.test"))
    reactor.advance(0.38)
    first, second = sockets.created
    sockets.deliver(second, _reply(second.sent[0], rcode=dns.rcode.SERVFAIL))
    reactor.advance(1.0)
    assert result == []
    reactor.advance(0.7)
    assert result[0].check(DNSServerError)
    assert first.closed and second.closed


def test_overall_deadline(reactor, sockets) -> None:
    forwarder = forwarder_for(reactor, sockets, [FIRST, SECOND], timeout=2)
    result = _results(forwarder.lookupAddress(b"d.upstream.test"))
    reactor.advance(1.0)
    assert result == []
    reactor.advance(1.0)
    assert result and result[0].check(DNSServerError)
    # Only health probes (the root's NS) may be open now: none of the question.
    assert forwarder.stats.failures == 1 and not asking(sockets, "d.upstream.test.")


def test_identical_questions_merged(reactor, sockets) -> None:
    forwarder = forwarder_for(reactor, sockets, timeout=2)
    results = [
        _results(forwarder.lookupAddress(n)) for n in (b"e.upstream.test", b"E.upstream.test")
    ]
    (sock,) = sockets.created
    sockets.deliver(sock, _reply(sock.sent[0], answers=[(60, "IN", "A", "127.0.0.10")]))
    assert all(r and not isinstance(r[0], Exception) for r in results)
    assert _results(forwarder.lookupAddress(b"e.upstream.test"))
    assert len(sockets.created) == 1 and forwarder.stats.cache_hits == 1


def test_max_concurrent(reactor, sockets) -> None:
    forwarder = forwarder_for(reactor, sockets, timeout=2, max_concurrent=2)
    _results(forwarder.lookupAddress(b"f1.upstream.test"))
    _results(forwarder.lookupAddress(b"f2.upstream.test"))
    third = _results(forwarder.lookupAddress(b"f3.upstream.test"))
    assert third[0].check(DNSServerError)
    assert len(sockets.created) == 2 and forwarder.stats.rejected == 1


def test_nxdomain_cached_for_soa_minimum(reactor, sockets) -> None:
    # Without prefetch, which would refresh the entry asked at 44 of its 45 s.
    forwarder = forwarder_for(reactor, sockets, timeout=2, prefetch=False)
    result = _results(forwarder.lookupAddress(b"nx.upstream.test"))
    sock = sockets.created[0]
    soa = (300, "IN", "SOA", "ns. host. 1 2 3 4 45")
    sockets.deliver(sock, _reply(sock.sent[0], rcode=dns.rcode.NXDOMAIN, authority=[soa]))
    assert result[0].check(DNSNameError)
    reactor.advance(44)
    again = _results(forwarder.lookupAddress(b"nx.upstream.test"))
    assert again[0].check(DNSNameError) and len(sockets.created) == 1
    (soa_record,) = again[0].value.args[0].authority
    assert soa_record.ttl == 300 - 44
    reactor.advance(2)
    _results(forwarder.lookupAddress(b"nx.upstream.test"))
    assert len(sockets.created) == 2


def test_nxdomain_without_soa_is_not_cached(reactor, sockets) -> None:
    forwarder = forwarder_for(reactor, sockets, timeout=2)
    for _ in range(2):
        _results(forwarder.lookupAddress(b"nosoa.upstream.test"))
        sock = sockets.created[-1]
        sockets.deliver(sock, _reply(sock.sent[0], rcode=dns.rcode.NXDOMAIN))
    assert len(sockets.created) == 2 and len(forwarder.cache) == 0


@pytest.mark.parametrize(
    ("rcode", "answers", "authority"),
    [
        # NXDOMAIN at the end of a CNAME chain (RFC 6604), no SOA.
        (dns.rcode.NXDOMAIN, [(300, "IN", "CNAME", "gone.upstream.test.")], []),
        # NODATA with an NS record but no SOA (RFC 2308 section 2.2, type 2).
        (dns.rcode.NOERROR, [], [(300, "IN", "NS", "ns.upstream.test.")]),
    ],
)
def test_negative_answer_with_records_but_no_soa_is_not_cached(
    reactor, sockets, rcode, answers, authority
) -> None:
    """
    RFC 2308 section 5: negative responses without SOA records SHOULD NOT
    be cached, as there is no way to prevent them living forever. These
    carry other records with TTLs, which must not stand in for the SOA's.
    """
    forwarder = forwarder_for(reactor, sockets, timeout=2)
    for _ in range(2):
        _results(forwarder.lookupAddress(b"neg.upstream.test"))
        sock = sockets.created[-1]
        sockets.deliver(
            sock, _reply(sock.sent[0], rcode=rcode, answers=answers, authority=authority)
        )
    assert len(sockets.created) == 2 and len(forwarder.cache) == 0


def _wire_query(name: str, *, do: bool = False, cd: bool = False, ident: int = 7) -> bytes:
    message = dns.message.make_query(name, "A", use_edns=0, want_dnssec=do, payload=1232)
    message.id = ident
    if cd:
        message.flags |= dns.flags.CD
    return message.to_wire()


def test_do_and_cd_are_sent_and_kept_apart_in_the_cache(reactor, sockets) -> None:
    forwarder = forwarder_for(reactor, sockets, timeout=2)
    replies: list[bytes] = []
    variants = [(False, False), (True, False), (False, True)]
    for do, cd in variants:
        query = read_query(_wire_query("s.upstream.test", do=do, cd=cd))
        assert query is not None

        def done(reply, age, fixed, query=query) -> None:
            replies.append(render(reply, query, 0x80, 1232, None, age, fixed))

        forwarder.resolve(query, False, done)
    assert len(sockets.created) == 3  # one upstream query per variant: no sharing
    for sock, (do, cd) in zip(sockets.created, variants, strict=True):
        sent = dns.message.from_wire(sock.sent[0])
        assert bool(sent.ednsflags & dns.flags.DO) == do
        assert bool(sent.flags & dns.flags.CD) == cd
        assert sent.flags & dns.flags.AD and sent.flags & dns.flags.RD
        response = dns.message.make_response(sent)
        response.flags |= dns.flags.AD
        address = f"127.0.0.{1 + variants.index((do, cd))}"
        response.answer.append(dns.rrset.from_text(sent.question[0].name, 60, "IN", "A", address))
        sockets.deliver(sock, response.to_wire())
    decoded = [dns.message.from_wire(r) for r in replies]
    assert [m.answer[0][0].to_text() for m in decoded] == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    # AD only for the DO client (RFC 6840 5.8), never for CD=1; CD and DO echoed.
    assert [bool(m.flags & dns.flags.AD) for m in decoded] == [False, True, False]
    assert [bool(m.flags & dns.flags.CD) for m in decoded] == [False, False, True]
    assert [bool(m.ednsflags & dns.flags.DO) for m in decoded] == [False, True, False]


def test_hop_by_hop_options_are_not_forwarded(reactor, sockets) -> None:
    forwarder = forwarder_for(reactor, sockets, timeout=2)
    ecs = dns.edns.ECSOption("192.0.2.0", 24)
    options = [ecs, dns.edns.GenericOption(10, b"\x01" * 8), dns.edns.GenericOption(3, b""),
               dns.edns.GenericOption(65001, b"x")]
    message = dns.message.make_query("o.upstream.test", "A", use_edns=0, options=options)
    query = read_query(message.to_wire())
    assert query is not None
    forwarder.resolve(query, False, lambda *args: None)
    sent = dns.message.from_wire(sockets.created[0].sent[0])
    assert sorted(o.otype for o in sent.options) == [8, 65001]


def test_client_subnets_are_kept_apart_in_the_cache(reactor, sockets) -> None:
    """
    RFC 7871 section 7.3.1: an answer to a query with an EDNS Client Subnet
    option may only be given to clients of the subnet it was answered for.
    Each subnet is asked upstream once and its clients get their own
    answer; a client of the other subnet never gets it from the cache.
    """
    forwarder = forwarder_for(reactor, sockets, timeout=2)
    subnets = {"192.0.2.0": "127.0.0.1", "198.51.100.0": "127.0.0.2"}
    replies: list[bytes] = []

    def ask(subnet: str) -> None:
        ecs = dns.edns.ECSOption(subnet, 24)
        message = dns.message.make_query("e.upstream.test", "A", use_edns=0, options=[ecs])
        query = read_query(message.to_wire())
        assert query is not None

        def done(reply, age, fixed, query=query) -> None:
            replies.append(render(reply, query, 0x80, 1232, None, age, fixed))

        forwarder.resolve(query, False, done)

    for asked, (subnet, address) in enumerate(subnets.items(), start=1):
        ask(subnet)
        assert len(sockets.created) == asked  # a miss: the other subnet's answer is not used
        sock = sockets.created[-1]
        sent = dns.message.from_wire(sock.sent[0])
        (ecs,) = sent.options
        assert (ecs.address, ecs.srclen) == (subnet, 24)
        response = dns.message.make_response(sent)
        # The upstream's answer covers the whole /24 (RFC 7871 section 7.2.1).
        response.use_edns(0, payload=1232, options=[dns.edns.ECSOption(subnet, 24, 24)])
        response.answer.append(dns.rrset.from_text(sent.question[0].name, 60, "IN", "A", address))
        sockets.deliver(sock, response.to_wire())
    for subnet in subnets:
        ask(subnet)
    assert len(sockets.created) == 2  # one upstream query per subnet, then cache hits
    assert forwarder.stats.cache_hits == 2
    decoded = [dns.message.from_wire(r) for r in replies]
    assert [m.answer[0][0].to_text() for m in decoded] == list(subnets.values()) * 2


def test_failure_logs_are_rate_limited(reactor, sockets) -> None:
    events: list[dict] = []
    observer = events.append
    globalLogPublisher.addObserver(observer)
    try:
        forwarder = forwarder_for(reactor, sockets, timeout=1)
        for i in range(20):
            _results(forwarder.lookupAddress(b"down%d.upstream.test" % i))
            reactor.advance(1.1)
    finally:
        globalLogPublisher.removeObserver(observer)
    warnings = [
        e
        for e in events
        if e.get("log_level") == LogLevel.warn and "Upstream failed" in e.get("log_format", "")
    ]
    # 20 failures over 22 s: one line per 10 s, the rest counted.
    assert 2 <= len(warnings) <= 3
    assert sum(w["more"] for w in warnings) + len(warnings) <= 20
    assert "timeout" in warnings[0]["failures"]


def test_no_servers_is_servfail(reactor) -> None:
    forwarder = CachingForwarder([], reactor=reactor)
    assert _results(forwarder.lookupAddress(b"x.test"))[0].check(DNSServerError)


def test_records_of_the_reply_are_twisted_records(reactor, sockets) -> None:
    """The resolver interface decodes the reply: a chain passes Twisted records on."""
    forwarder = forwarder_for(reactor, sockets, timeout=2)
    result = _results(forwarder.lookupAddress(b"r.upstream.test"))
    sock = sockets.created[0]
    sockets.deliver(sock, _reply(sock.sent[0], answers=[(300, "IN", "A", "127.0.0.10")]))
    (record,) = result[0][0]
    assert isinstance(record, tdns.RRHeader) and record.ttl == 300


def test_tcp_upstream_that_closes_fails_over_at_once(reactor) -> None:
    """A TCP connection closed before the reply fails the attempt at once, not at the timeout."""
    from twisted.internet.error import ConnectionDone
    from twisted.internet.testing import StringTransport
    from twisted.python.failure import Failure

    forwarder = CachingForwarder([FIRST, SECOND], timeout=4, reactor=reactor)
    query = read_query(dns.message.make_query("t.upstream.test", "A").to_wire())
    assert query is not None
    replies: list = []
    forwarder.resolve(query, True, lambda reply, age, fixed: replies.append(reply))
    (host, port, factory, _, _), = reactor.tcpClients
    assert (host, port) == FIRST
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    sent = transport.value()[2:]
    assert dns.message.from_wire(sent).question[0].name.to_text() == "t.upstream.test."
    protocol.connectionLost(Failure(ConnectionDone()))
    assert [c[:2] for c in reactor.tcpClients] == [FIRST, SECOND]  # no wait for the timeout
    second = reactor.tcpClients[1][2].buildProtocol(None)
    transport = StringTransport()
    second.makeConnection(transport)
    response = dns.message.make_response(dns.message.from_wire(transport.value()[2:]))
    response.answer.append(dns.rrset.from_text("t.upstream.test.", 60, "IN", "A", "127.0.0.7"))
    wire_reply = response.to_wire()
    second.dataReceived(len(wire_reply).to_bytes(2) + wire_reply)
    assert len(replies) == 1 and replies[0] is not None
    # What is left is the probe of the first server, down since it closed.
    assert not forwarder.upstream.health[0].up
    assert len(reactor.getDelayedCalls()) == 1


def test_tcp_connection_made_after_its_deadline_is_closed_unused(reactor) -> None:
    """A connect that succeeds only after the attempt timed out sends nothing and closes."""
    from twisted.internet.testing import StringTransport

    forwarder = CachingForwarder([FIRST], timeout=1, reactor=reactor)
    query = read_query(dns.message.make_query("late.upstream.test", "A").to_wire())
    assert query is not None
    replies: list = []
    forwarder.resolve(query, True, lambda reply, age, fixed: replies.append(reply))
    ((_, _, factory, _, _),) = reactor.tcpClients
    reactor.advance(1.1)
    assert replies == [None]  # SERVFAIL for the client, at the deadline
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    assert transport.value() == b"" and transport.disconnecting


def test_tcp_reply_about_another_question_of_the_same_length_fails_over(reactor) -> None:
    """
    A TCP reply with the query's ID about another name of the same length,
    type and class parses like the real answer: only the question check can
    tell it is not one (RFC 5452 section 9.1). The attempt fails, the next
    server is asked, and the client gets that server's answer.
    """
    from twisted.internet.testing import StringTransport

    forwarder = CachingForwarder([FIRST, SECOND], timeout=4, reactor=reactor)
    query = read_query(dns.message.make_query("q.upstream.test", "A").to_wire())
    assert query is not None
    replies: list = []
    forwarder.resolve(query, True, lambda reply, age, fixed: replies.append(reply))
    ((_, _, factory, _, _),) = reactor.tcpClients
    first = factory.buildProtocol(None)
    transport = StringTransport()
    first.makeConnection(transport)
    sent = transport.value()[2:]
    wrong = _reply(sent, answers=[(300, "IN", "A", "192.0.2.66")], name="z.upstream.test.")
    asked, other = (dns.message.from_wire(m).question[0] for m in (sent, wrong))
    assert len(other.name.to_wire()) == len(asked.name.to_wire()) and other.name != asked.name
    assert (other.rdtype, other.rdclass) == (asked.rdtype, asked.rdclass)
    first.dataReceived(len(wrong).to_bytes(2) + wrong)
    assert replies == [] and [c[:2] for c in reactor.tcpClients] == [FIRST, SECOND]
    assert not forwarder.upstream.health[0].up
    second = reactor.tcpClients[1][2].buildProtocol(None)
    transport = StringTransport()
    second.makeConnection(transport)
    right = _reply(transport.value()[2:], answers=[(300, "IN", "A", "127.0.0.7")])
    second.dataReceived(len(right).to_bytes(2) + right)
    (reply,) = replies
    answer = dns.message.from_wire(render(reply, query, 0x80, 65535, None))
    assert [r.to_text() for r in answer.answer[0]] == ["127.0.0.7"]
