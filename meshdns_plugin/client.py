# -*- test-case-name: tests.test_upstream -*-
"""
Asking upstream servers: UDP with failover in order, TCP when truncated.

Twisted's own L{twisted.names.client.Resolver} is close, but a proxy that
forwards every query for a host cannot use it as is:
  - it opens and closes a UDP port per query, and Twisted logs every close:
    one log line per forwarded query. Here a small pool of long-lived ports,
    each bound to a kernel-chosen random port, is shared; a query goes out on a
    random one of them with a random ID, so an off-path attacker must still
    guess both port and ID;
  - it sends no EDNS, so any answer over 512 bytes costs a TCP round trip;
    here queries advertise EDNS with L{UPSTREAM_PAYLOAD} bytes;
  - it accepts any reply with the right ID and source; here the question
    must match too, or the reply is ignored (no cache poisoning);
  - it treats SERVFAIL and REFUSED as final; here they fail over to the next
    server, like timeouts, and only the last server's answer is final.
The per-question protocol matching (IDs, source validation, timeouts) is
Twisted's L{dns.DNSDatagramProtocol} and L{dns.DNSProtocol}.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Sequence

from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.logger import Logger
from twisted.names import dns

#: The EDNS UDP payload size we offer upstream (DNS Flag Day 2020).
UPSTREAM_PAYLOAD = 1232
#: How many UDP ports each address family shares.
POOL_SIZE = 8

_log = Logger()


class UpstreamFailure(Exception):
    """
    No upstream server gave a usable answer; C{message} is the last reply
    received (a SERVFAIL or REFUSED), or L{None} if none replied in time.
    """

    def __init__(self, reason: str, message: dns.Message | None = None) -> None:
        super().__init__(reason)
        self.message = message


class _EDNSDatagramProtocol(dns.DNSDatagramProtocol):
    """
    Twisted's UDP DNS protocol, sending queries with an EDNS OPT record.
    """

    noisy = False

    def writeMessage(self, message: dns.Message, address: tuple[str, int]) -> None:
        query = dns._EDNSMessage(
            id=message.id, recDes=True, maxSize=UPSTREAM_PAYLOAD, ednsVersion=0
        )
        query.queries = message.queries
        self.transport.write(query.toStr(), address)


class _Ignore:
    """The controller of upstream protocols: unexpected messages are dropped."""

    def messageReceived(self, message, protocol, address=None) -> None:
        pass

    def connectionMade(self, protocol) -> None:
        pass

    def connectionLost(self, protocol) -> None:
        pass


class _StreamQueryFactory(protocol.Factory):
    """Builds one L{dns.DNSProtocol} for one TCP query."""

    noisy = False

    def __init__(self, reactor) -> None:
        self.reactor = reactor

    def buildProtocol(self, addr):
        return dns.DNSProtocol(_Ignore(), reactor=self.reactor)


def _matches(message: dns.Message, question: dns.Query) -> bool:
    """Whether a reply is about the question asked (case-insensitively)."""
    if len(message.queries) != 1:
        return False
    asked = message.queries[0]
    return (
        asked.type == question.type
        and asked.cls == question.cls
        and asked.name.name.lower() == question.name.name.lower()
    )


def strip_opt(message: dns.Message) -> dns.Message:
    """Remove the upstream's OPT record: it is about our hop, not the client's."""
    message.additional = [r for r in message.additional if r.type != dns.OPT]
    return message


class UpstreamClient:
    """
    Sends one question to upstream servers and returns the first usable
    reply.

    @ivar servers: C{(ip, port)} pairs, tried in order.
    """

    def __init__(
        self,
        servers: Sequence[tuple[str, int]],
        attempt_timeout: float,
        reactor,
    ) -> None:
        """
        @param attempt_timeout: seconds each server gets before the next one is
            tried (the caller bounds the whole forward).
        """
        self.servers = tuple(servers)
        self.attempt_timeout = attempt_timeout
        self._reactor = reactor
        self._pools: dict[int, list[_EDNSDatagramProtocol]] = {}
        self._controller = _Ignore()

    def _datagramProtocol(self, host: str) -> _EDNSDatagramProtocol:
        version = ipaddress.ip_address(host).version
        pool = self._pools.setdefault(version, [])
        if len(pool) < POOL_SIZE:
            proto = _EDNSDatagramProtocol(self._controller, reactor=self._reactor)
            self._reactor.listenUDP(0, proto, interface="::" if version == 6 else "")
            pool.append(proto)
            return proto
        return random.choice(pool)

    def close(self) -> None:
        """Close the pooled UDP ports (for a clean shutdown and in tests)."""
        for pool in self._pools.values():
            for proto in pool:
                if proto.transport is not None:
                    proto.transport.stopListening()
        self._pools.clear()

    @defer.inlineCallbacks
    def query(self, question: dns.Query, tcp: bool = False):
        """
        Ask each server in turn until one gives an answer that is not
        SERVFAIL or REFUSED.

        @param tcp: ask over TCP (for a client that asked over TCP); else
            over UDP, and over TCP again when the UDP answer is truncated.

        @return: a Deferred firing with the reply L{dns.Message} (any rcode
            other than SERVFAIL/REFUSED, from the first server that gave one),
            or failing with L{UpstreamFailure}.
        """
        last: dns.Message | None = None
        for server in self.servers:
            try:
                if tcp:
                    message = yield self._queryTCP(server, question)
                else:
                    message = yield self._queryUDP(server, question)
                if message.trunc:
                    message = yield self._queryTCP(server, question)
            except defer.CancelledError:
                # The caller's deadline passed: stop, do not fail over.
                raise
            except Exception as e:
                # Timeout, refused or reset connection, mismatched reply: next.
                _log.debug("Upstream {server} failed: {error!r}", server=server, error=e)
                continue
            if message.rCode in (dns.ESERVER, dns.EREFUSED):
                last = message
                continue
            return strip_opt(message)
        raise UpstreamFailure("no upstream server answered", last)

    @defer.inlineCallbacks
    def _queryUDP(self, server: tuple[str, int], question: dns.Query):
        proto = self._datagramProtocol(server[0])
        message = yield proto.query(server, [question], self.attempt_timeout)
        if not _matches(message, question):
            raise ValueError(f"reply from {server} is about another question")
        return message

    @defer.inlineCallbacks
    def _queryTCP(self, server: tuple[str, int], question: dns.Query):
        host, port = server
        endpoint_type = (
            TCP6ClientEndpoint if ipaddress.ip_address(host).version == 6 else TCP4ClientEndpoint
        )
        endpoint = endpoint_type(self._reactor, host, port, timeout=self.attempt_timeout)
        proto = yield endpoint.connect(_StreamQueryFactory(self._reactor))
        try:
            message = yield proto.query([question], timeout=self.attempt_timeout)
        finally:
            proto.transport.loseConnection()
        if not _matches(message, question):
            raise ValueError(f"TCP reply from {server} is about another question")
        return message
