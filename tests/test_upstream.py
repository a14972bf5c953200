"""
The caching forwarder and its upstream client on Twisted's fake reactor: what
goes out on the wire, which replies are accepted, failover, merging, the
concurrency bound, RFC 2308 negative TTLs, and rate-limited failure logs.
"""

from __future__ import annotations

import dns.message
import dns.rcode
import dns.rrset
import pytest
from twisted.logger import LogLevel, globalLogPublisher
from twisted.names import dns as tdns
from twisted.names.error import DNSNameError, DNSServerError

from meshdns_plugin.client import UPSTREAM_PAYLOAD
from meshdns_plugin.upstream import CacheHit, CachingForwarder, negative_ttl
from tests.servers import UDPReactor

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


@pytest.fixture
def reactor() -> UDPReactor:
    return UDPReactor()


def test_query_uses_edns_and_accepts_only_matching_reply(reactor) -> None:
    forwarder = CachingForwarder([FIRST], timeout=2, reactor=reactor)
    result = _results(forwarder.lookupAddress(b"a.upstream.test"))
    ((data, address, proto),) = reactor.sent()
    query = dns.message.from_wire(data)
    assert address == FIRST and query.edns == 0 and query.payload == UPSTREAM_PAYLOAD
    good = _reply(data, answers=[(300, "IN", "A", "127.0.0.10")])
    # From the wrong source: ignored (no cache poisoning).
    proto.datagramReceived(good, ("127.0.0.1", 9999))
    assert result == []
    proto.datagramReceived(good, FIRST)
    answers, _, _ = result[0]
    assert [a.payload.dottedQuad() for a in answers] == ["127.0.0.10"]
    assert not any(a.auth for a in answers)
    assert reactor.getDelayedCalls() == []


def test_wrong_question_is_not_accepted(reactor) -> None:
    forwarder = CachingForwarder([FIRST, SECOND], timeout=2, reactor=reactor)
    result = _results(forwarder.lookupAddress(b"b.upstream.test"))
    ((data, _, proto),) = reactor.sent()
    proto.datagramReceived(
        _reply(data, answers=[(300, "IN", "A", "6.6.6.6")], name="evil.example."), FIRST
    )
    # Rejected: the next server is asked; nothing was cached.
    assert result == [] and len(forwarder.cache) == 0
    data2, address2, proto2 = reactor.sent()[-1]
    assert address2 == SECOND
    proto2.datagramReceived(_reply(data2, answers=[(300, "IN", "A", "127.0.0.10")]), SECOND)
    assert [a.payload.dottedQuad() for a in result[0][0]] == ["127.0.0.10"]


def test_failover_on_timeout_then_servfail_is_final(reactor) -> None:
    forwarder = CachingForwarder([FIRST, SECOND], timeout=2, reactor=reactor)
    result = _results(forwarder.lookupAddress(b"c.upstream.test"))
    reactor.advance(1.01)  # the first server's share of the timeout
    data, address, proto = reactor.sent()[-1]
    assert address == SECOND
    proto.datagramReceived(_reply(data, rcode=dns.rcode.SERVFAIL), SECOND)
    assert result[0].check(DNSServerError)
    assert reactor.getDelayedCalls() == []


def test_overall_timeout(reactor) -> None:
    forwarder = CachingForwarder([FIRST], timeout=2, reactor=reactor)
    result = _results(forwarder.lookupAddress(b"d.upstream.test"))
    reactor.advance(2.1)
    assert result and result[0].check(DNSServerError, TimeoutError)
    assert forwarder.stats.failures == 1


def test_identical_questions_merged(reactor) -> None:
    forwarder = CachingForwarder([FIRST], timeout=2, reactor=reactor)
    results = [
        _results(forwarder.lookupAddress(n)) for n in (b"e.upstream.test", b"E.upstream.test")
    ]
    assert len(reactor.sent()) == 1
    data, _, proto = reactor.sent()[0]
    proto.datagramReceived(_reply(data, answers=[(60, "IN", "A", "127.0.0.10")]), FIRST)
    assert all(r and not isinstance(r[0], Exception) for r in results)
    assert isinstance(_results(forwarder.lookupAddress(b"e.upstream.test"))[0], CacheHit)


def test_max_concurrent(reactor) -> None:
    forwarder = CachingForwarder([FIRST], timeout=2, reactor=reactor, max_concurrent=2)
    _results(forwarder.lookupAddress(b"f1.upstream.test"))
    _results(forwarder.lookupAddress(b"f2.upstream.test"))
    third = _results(forwarder.lookupAddress(b"f3.upstream.test"))
    assert third[0].check(DNSServerError)
    assert len(reactor.sent()) == 2 and forwarder.stats.rejected == 1


def test_nxdomain_cached_for_soa_minimum(reactor) -> None:
    forwarder = CachingForwarder([FIRST], timeout=2, reactor=reactor)
    result = _results(forwarder.lookupAddress(b"nx.upstream.test"))
    data, _, proto = reactor.sent()[0]
    soa = (300, "IN", "SOA", "ns. host. 1 2 3 4 45")
    proto.datagramReceived(_reply(data, rcode=dns.rcode.NXDOMAIN, authority=[soa]), FIRST)
    assert result[0].check(DNSNameError)
    reactor.advance(44)
    again = _results(forwarder.lookupAddress(b"nx.upstream.test"))
    assert again[0].check(DNSNameError) and len(reactor.sent()) == 1
    (soa_record,) = again[0].value.args[0].authority
    assert soa_record.ttl == 300 - 44
    reactor.advance(2)
    _results(forwarder.lookupAddress(b"nx.upstream.test"))
    assert len(reactor.sent()) == 2


def test_negative_ttl_rule() -> None:
    def soa(ttl: int, minimum: int) -> tdns.RRHeader:
        payload = tdns.Record_SOA(b"ns", b"h", 1, 2, 3, 4, minimum, ttl)
        return tdns.RRHeader(b"z", tdns.SOA, ttl=ttl, payload=payload)

    assert negative_ttl([soa(300, 60)]) == 60
    assert negative_ttl([soa(20, 60)]) == 20
    assert negative_ttl([]) is None


def test_failure_logs_are_rate_limited(reactor) -> None:
    events: list[dict] = []
    observer = events.append
    globalLogPublisher.addObserver(observer)
    try:
        forwarder = CachingForwarder([FIRST], timeout=1, reactor=reactor)
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
