"""
Upstream health on Twisted's fake reactor with fake UDP sockets: a server
that fails is skipped, probed with backoff, and asked first again once it
answers; timeouts follow the smoothed RTT; when every server is down, all
are asked at once; each failure is counted under its server and kind.

The timeout values are unbound's retransmission timer (util/rtt.c: an
unknown server 376 ms, RTO = SRTT + 4 RTTVAR with gains 1/8 and 1/4, at
least 50 ms, doubled on a loss), worked out by hand here.
"""

from __future__ import annotations

import dns.message
import dns.rcode
import dns.rrset
import pytest

from meshdns_plugin.dns.forwarder import CachingForwarder

FIRST, SECOND = ("127.0.0.1", 5301), ("127.0.0.1", 5302)


def _answer(wire: bytes, rcode=dns.rcode.NOERROR) -> bytes:
    query = dns.message.from_wire(wire)
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    name = query.question[0].name
    if name.to_text() != "." and rcode == dns.rcode.NOERROR:
        response.answer.append(dns.rrset.from_text(name, 300, "IN", "A", "127.0.0.10"))
    return response.to_wire()


def _question(sock) -> str:
    return dns.message.from_wire(sock.sent[0]).question[0].name.to_text()


def _forwarder(reactor, sockets, **kwargs) -> CachingForwarder:
    forwarder = CachingForwarder([FIRST, SECOND], timeout=2, reactor=reactor, **kwargs)
    sockets.install(forwarder.upstream)
    return forwarder


def _ask(forwarder, name: str) -> list:
    out: list = []
    forwarder.lookupAddress(name.encode()).addBoth(out.append)
    return out


def _probes(sockets, server) -> list:
    return [s for s in sockets.created if s.peer == server and _question(s) == "."]


def test_rtt_sets_the_timeout_as_unbound_computes_it(reactor, sockets) -> None:
    forwarder = _forwarder(reactor, sockets)
    first = forwarder.upstream.health[0]
    assert first.timeout == pytest.approx(0.376)
    _ask(forwarder, "a.upstream.test")
    reactor.advance(0.02)
    sockets.deliver(sockets.created[0], _answer(sockets.created[0].sent[0]))
    # SRTT 0 + 20/8 = 2.5 ms; RTTVAR 94 + (20 - 94)/4 = 75.5 ms; RTO = 2.5 + 4 * 75.5.
    assert first.timeout == pytest.approx(0.3045)
    assert forwarder.stats.servers[0].rtt.counts[4] == 1  # the 25 ms bucket
    for _ in range(60):
        _ask(forwarder, f"b{_}.upstream.test")
        reactor.advance(0.001)
        sockets.deliver(sockets.created[-1], _answer(sockets.created[-1].sent[0]))
    assert first.timeout == pytest.approx(0.05)  # the floor


def test_a_server_that_times_out_is_skipped_then_probed_back(reactor, sockets) -> None:
    forwarder = _forwarder(reactor, sockets, probe_max_interval=1.0)
    result = _ask(forwarder, "a.upstream.test")
    reactor.advance(0.376)
    first, second = sockets.created
    sockets.deliver(second, _answer(second.sent[0]))
    assert result and not isinstance(result[0], Exception)
    counters = forwarder.stats.servers[0]
    assert not counters.up and counters.failures == {"timeout": 1}
    # The next question goes straight to the second server.
    _ask(forwarder, "b.upstream.test")
    assert sockets.created[-1].peer == SECOND and len(sockets.created) == 3
    sockets.deliver(sockets.created[-1], _answer(sockets.created[-1].sent[0]))
    # Probes back off: 0.25 s, then 0.5, 1, 1 (probe_max_interval) after each failure.
    starts = []
    for _ in range(1000):
        reactor.advance(0.01)
        probes = _probes(sockets, FIRST)
        if len(probes) > len(starts):
            starts.append(reactor.seconds())
        if len(starts) == 4:
            break
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert counters.probes == 4
    # Each gap is the probe's timeout (doubling from 0.752) plus the backoff.
    assert gaps[0] == pytest.approx(0.752 + 0.5, abs=0.06)
    assert gaps[1] == pytest.approx(1.504 + 1.0, abs=0.11)
    assert gaps[2] == pytest.approx(2.0 + 1.0, abs=0.11)  # the timeout is bounded too
    probe = _probes(sockets, FIRST)[-1]
    sockets.deliver(probe, _answer(probe.sent[0]))
    assert counters.up
    _ask(forwarder, "c.upstream.test")
    assert sockets.created[-1].peer == FIRST


@pytest.mark.parametrize(
    ("rcode", "kind"), [(dns.rcode.SERVFAIL, "servfail"), (dns.rcode.REFUSED, "refused")]
)
def test_servfail_and_refused_mark_down(reactor, sockets, rcode, kind) -> None:
    forwarder = _forwarder(reactor, sockets)
    _ask(forwarder, "a.upstream.test")
    sockets.deliver(sockets.created[0], _answer(sockets.created[0].sent[0], rcode))
    assert forwarder.stats.servers[0].failures == {kind: 1}
    assert not forwarder.upstream.health[0].up and forwarder.upstream.health[1].up
    # A probe answered SERVFAIL keeps it down.
    reactor.advance(0.25)
    (probe,) = _probes(sockets, FIRST)
    sockets.deliver(probe, _answer(probe.sent[0], rcode))
    assert not forwarder.upstream.health[0].up


def test_port_unreachable_is_a_network_failure(reactor, sockets) -> None:
    import errno

    forwarder = _forwarder(reactor, sockets)
    _ask(forwarder, "a.upstream.test")
    sockets.deliver(sockets.created[0], OSError(errno.ECONNREFUSED, "refused"))
    assert forwarder.stats.servers[0].failures == {"network": 1}
    assert sockets.created[1].peer == SECOND


def test_every_server_down_asks_all_at_once(reactor, sockets) -> None:
    forwarder = _forwarder(reactor, sockets)
    for health in forwarder.upstream.health:
        health.failed("timeout")
    result = _ask(forwarder, "a.upstream.test")
    asked = [s for s in sockets.created if _question(s) == "a.upstream.test."]
    assert [s.peer for s in asked] == [FIRST, SECOND]
    sockets.deliver(asked[1], _answer(asked[1].sent[0]))
    assert result and not isinstance(result[0], Exception)
    assert asked[0].closed
    assert forwarder.upstream.health[1].up and not forwarder.upstream.health[0].up


def test_a_late_reply_marks_the_server_up_again(reactor, sockets) -> None:
    forwarder = _forwarder(reactor, sockets)
    _ask(forwarder, "a.upstream.test")
    reactor.advance(0.38)
    first = sockets.created[0]
    assert not forwarder.upstream.health[0].up
    sockets.deliver(first, _answer(first.sent[0]))
    assert forwarder.upstream.health[0].up
