"""
How the forwarder keeps answers on time: RFC 8767 serve-stale with its
client response timer (1.8 s, section 5; TTL 30, section 4; never past
C{serve_stale} seconds after expiry), and prefetch of entries asked in the
last tenth of their TTL, on Twisted's fake reactor with fake UDP sockets.
"""

from __future__ import annotations

import dns.message
import dns.rcode
import dns.rrset
import pytest

from meshdns_plugin.dns.forwarder import CachingForwarder
from meshdns_plugin.dns.message import read_query

SERVER = ("127.0.0.1", 5301)
NAME = "stale.upstream.test."


def _answer(wire: bytes, address: str, ttl: int = 10, rcode=dns.rcode.NOERROR) -> bytes:
    query = dns.message.from_wire(wire)
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    if rcode == dns.rcode.NOERROR:
        response.answer.append(dns.rrset.from_text(NAME, ttl, "IN", "A", address))
    return response.to_wire()


def _forwarder(reactor, sockets, **kwargs) -> CachingForwarder:
    forwarder = CachingForwarder([SERVER], timeout=5, reactor=reactor, **kwargs)
    sockets.install(forwarder.upstream)
    return forwarder


def _ask(forwarder) -> list:
    """Resolve NAME; the list gets C{(addresses, ttls)} when the answer comes."""
    query = read_query(dns.message.make_query(NAME, "A").to_wire())
    out: list = []

    def done(reply, age, fixed_ttl) -> None:
        from meshdns_plugin.dns.cache import render

        message = dns.message.from_wire(render(reply, query, 0, 1232, None, age, fixed_ttl))
        out.append(([r.address for r in message.answer[0]], message.answer[0].ttl))

    forwarder.resolve(query, False, done)
    return out


def _cached(forwarder, sockets, reactor, ttl: int = 10) -> None:
    assert _ask(forwarder) == []
    sock = sockets.created[-1]
    sockets.deliver(sock, _answer(sock.sent[0], "127.0.0.1", ttl))


def test_stale_answer_after_the_client_response_timer(reactor, sockets) -> None:
    forwarder = _forwarder(reactor, sockets, serve_stale=60, prefetch=False)
    _cached(forwarder, sockets, reactor)
    reactor.advance(11)
    late = _ask(forwarder)
    refresh = sockets.created[-1]
    reactor.advance(1.79)
    assert late == []
    reactor.advance(0.02)
    assert late == [(["127.0.0.1"], 30)] and forwarder.stats.stale_served == 1
    # Another client while the refresh goes on: the stale answer at once.
    assert _ask(forwarder) == [(["127.0.0.1"], 30)]
    assert forwarder.stats.stale_served == 2 and not refresh.closed
    # The refresh lands in the cache.
    reactor.advance(1.0)
    sockets.deliver(refresh, _answer(refresh.sent[0], "127.0.0.2"))
    assert _ask(forwarder) == [(["127.0.0.2"], 10)]


def test_no_stale_answer_past_serve_stale(reactor, sockets) -> None:
    forwarder = _forwarder(reactor, sockets, serve_stale=60, prefetch=False)
    _cached(forwarder, sockets, reactor)
    reactor.advance(10 + 60)
    late = _ask(forwarder)
    reactor.advance(1.8)
    assert late == [] and forwarder.stats.stale_served == 0


@pytest.mark.parametrize("rcode", [dns.rcode.SERVFAIL, dns.rcode.REFUSED])
def test_stale_answer_when_the_upstream_fails(reactor, sockets, rcode) -> None:
    forwarder = _forwarder(reactor, sockets, serve_stale=60, prefetch=False)
    _cached(forwarder, sockets, reactor)
    reactor.advance(11)
    late = _ask(forwarder)
    sock = sockets.created[-1]
    sockets.deliver(sock, _answer(sock.sent[0], "", rcode=rcode))
    assert late == [(["127.0.0.1"], 30)] and forwarder.stats.stale_served == 1


def test_an_entry_asked_near_expiry_is_prefetched(reactor, sockets) -> None:
    forwarder = _forwarder(reactor, sockets)
    _cached(forwarder, sockets, reactor, ttl=100)
    reactor.advance(89)
    assert _ask(forwarder) == [(["127.0.0.1"], 11)] and len(sockets.created) == 1
    reactor.advance(1)  # the last tenth of 100 s
    assert _ask(forwarder) == [(["127.0.0.1"], 10)]
    (refresh,) = sockets.created[1:]
    assert forwarder.stats.prefetches == 1
    assert _ask(forwarder) == [(["127.0.0.1"], 10)] and len(sockets.created) == 2  # one refresh
    sockets.deliver(refresh, _answer(refresh.sent[0], "127.0.0.2", ttl=100))
    reactor.advance(20)  # past the first answer's expiry: the refreshed one, no wait
    assert _ask(forwarder) == [(["127.0.0.2"], 80)] and len(sockets.created) == 2


def test_a_client_waiting_on_a_prefetch_gets_the_stale_answer_on_time(reactor, sockets) -> None:
    forwarder = _forwarder(reactor, sockets, serve_stale=60)
    _cached(forwarder, sockets, reactor, ttl=10)
    reactor.advance(9.5)
    _ask(forwarder)  # starts a prefetch, which the upstream never answers
    assert forwarder.stats.prefetches == 1
    reactor.advance(1.0)
    late = _ask(forwarder)  # expired now: waits on the prefetch
    reactor.advance(1.79)
    assert late == []
    reactor.advance(0.02)
    assert late == [(["127.0.0.1"], 30)]


def test_prefetch_off_and_bounded(reactor, sockets) -> None:
    off = _forwarder(reactor, sockets, prefetch=False)
    _cached(off, sockets, reactor, ttl=100)
    reactor.advance(95)
    _ask(off)
    assert len(sockets.created) == 1 and off.stats.prefetches == 0
    full = _forwarder(reactor, sockets, max_concurrent=1)
    _cached(full, sockets, reactor, ttl=100)
    reactor.advance(95)
    other = read_query(dns.message.make_query("other.upstream.test.", "A").to_wire())
    full.resolve(other, False, lambda *_: None)
    _ask(full)
    assert full.stats.prefetches == 0
