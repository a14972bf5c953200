# -*- test-case-name: tests.unit.ops.listeners.test_service -*-
"""
Relaying one VIP listener's connections: per connection, the next backend in
turn, its host name resolved through the upstream servers (never through
meshdns's own table, which would answer the VIP itself), a connect, then
bytes relayed both ways with flow control and half-close. Bytes are never
parsed, so HTTP, TLS, MySQL and the rest all work alike.
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.logger import Logger
from twisted.names import dns, error
from twisted.protocols import portforward
from twisted.python.failure import Failure
from zope.interface import implementer

from meshdns_plugin.endpoints import tcp_client
from meshdns_plugin.mesh.documents import is_ip
from meshdns_plugin.ops.listeners.plan import ListenerSpec, endpoint_text
from meshdns_plugin.ops.stats import ListenerStats

if TYPE_CHECKING:
    pass

_log = Logger()


class BackendUnavailable(Exception):
    """
    A connection cannot be forwarded; C{str()} says where it was going and why.
    """


#: How the forwarder's failures read in a log line.
_RESOLUTION_ERRORS: Mapping[type, str] = {
    error.DNSServerError: "SERVFAIL (or no upstream answered)",
    error.DNSQueryRefusedError: "REFUSED",
    defer.TimeoutError: "timed out",
    defer.CancelledError: "timed out",
}


def _address_text(record: dns.RRHeader) -> str:
    if record.type == dns.A:
        return record.payload.dottedQuad()
    return socket.inet_ntop(socket.AF_INET6, record.payload.address)


@implementer(IHalfCloseableProtocol)
class _Relay(portforward.Proxy):
    """
    One side of a forwarded connection: Twisted's L{portforward.Proxy}, which
    writes what it reads to the other side and closes the other side when
    this one closes, plus half-close. Twisted's proxy closes both sides at the
    first end of stream, so a client that sends its request and then shuts
    down its writing side (C{echo hello | nc -N}, C{socat}, many one-shot
    protocols) would never read the reply; here the end of one side's stream
    becomes a C{shutdown(SHUT_WR)} of the other, and the connection closes
    when both directions have ended.
    """

    noisy = False
    _readDone = False
    _writeDone = False

    def readConnectionLost(self) -> None:
        self._readDone = True
        if self.peer is not None:
            self.peer.transport.loseWriteConnection()
        self._closeWhenDone()

    def writeConnectionLost(self) -> None:
        self._writeDone = True
        self._closeWhenDone()

    def _closeWhenDone(self) -> None:
        if self._readDone and self._writeDone:
            self.transport.loseConnection()


class _BackendSide(_Relay, portforward.ProxyClient):
    """
    The connection to the real service. When it is made, L{ProxyClient}
    pairs it with the client's connection (each transport the producer of
    the other, so a slow reader slows the writer down instead of filling
    meshdns's memory) and lets the client's connection be read.
    """

    def connectionMade(self) -> None:
        client = self.peer
        if client is None or client.transport is None or client.gone:
            # The client left while we connected: nobody to relay for.
            self.transport.loseConnection()
            return
        super().connectionMade()


class _OneBackend(protocol.Factory):
    """
    Hands out one prepared L{_BackendSide}: L{endpoints.connectProtocol}
    without its factory's two log lines per connection.
    """

    noisy = False

    def __init__(self, backend: _BackendSide) -> None:
        self.backend = backend

    def buildProtocol(self, addr: Any) -> _BackendSide:
        return self.backend


class _ClientSide(_Relay):
    """
    An accepted connection. Nothing is read from it until the real service
    is connected (the same pause as L{portforward.ProxyServer}, which cannot
    be reused: it connects to one fixed address and reports no failure).

    @ivar gone: whether the connection has closed.
    """

    gone = False

    def __init__(self, factory: ForwardingFactory) -> None:
        self.factory = factory

    def connectionMade(self) -> None:
        self.transport.pauseProducing()
        factory = self.factory
        factory.stats.accepted += 1
        factory.stats.active += 1
        d = factory.destination()
        d.addCallback(self._connect)
        d.addCallbacks(self._connected, self._failed)

    def _connect(self, destination: tuple[str, int]) -> defer.Deferred[_BackendSide] | None:
        if self.gone:
            return None
        address, port = destination
        factory = self.factory
        endpoint = tcp_client(factory.reactor, address, port, factory.connect_timeout)
        backend = _BackendSide()
        backend.setPeer(self)
        d = endpoint.connect(_OneBackend(backend))

        def unreachable(reason: Failure) -> Failure:
            where = endpoint_text(address, port)
            return Failure(BackendUnavailable(f"{where}: {reason.getErrorMessage()}"))

        d.addErrback(unreachable)
        return d

    def _connected(self, backend: _BackendSide | None) -> None:
        if backend is not None:
            self.factory.reached()

    def _failed(self, reason: Failure) -> None:
        if not self.gone:
            self.factory.unreachable(reason)
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.gone = True
        self.factory.stats.active -= 1
        super().connectionLost(reason)


class ForwardingFactory(protocol.ServerFactory):
    """
    The protocols of one listener's connections, and where they go.

    @ivar spec: the listener's spec; a reload replaces it in place, so that
        the listening socket, and the connections already relayed, stay.
    @ivar failing: whether the last connection could not be forwarded; the
        first failure is logged, the ones after it only counted, until a
        connection gets through again (a client retrying in a loop must not
        flood the log).
    """

    noisy = False

    def __init__(
        self,
        spec: ListenerSpec,
        resolver: Any,
        stats: ListenerStats,
        connect_timeout: float,
        reactor: Any,
    ) -> None:
        """
        @param resolver: an L{twisted.internet.interfaces.IResolver} asking
            the upstream servers (the L{CachingForwarder}: its cache keeps
            a connection burst from costing one upstream query each).
        @param connect_timeout: seconds a TCP connect to a backend may take.
        """
        self.spec = spec
        self.resolver = resolver
        self.stats = stats
        self.connect_timeout = connect_timeout
        self.reactor = reactor
        self.failing = False
        self._turns = itertools.count()

    def buildProtocol(self, addr: Any) -> _ClientSide:
        return _ClientSide(self)

    def destination(self) -> defer.Deferred[tuple[str, int]]:
        """
        The IP and port the next connection goes to: the backends in turn
        and, for a backend that is a host name, its addresses in turn (IPv4,
        or IPv6 when it has no IPv4 address), resolved now.
        """
        turn = next(self._turns)
        backends = self.spec.backends
        backend = backends[turn % len(backends)]
        if is_ip(backend.address):
            return defer.succeed((backend.address, backend.port))
        d = self._resolve(backend.address, turn // len(backends))
        d.addCallback(lambda address: (address, backend.port))
        return d

    @defer.inlineCallbacks
    def _resolve(self, name: str, turn: int) -> Any:
        lookups: Sequence[tuple[Callable[..., defer.Deferred[Any]], int]] = (
            (self.resolver.lookupAddress, dns.A),
            (self.resolver.lookupIPV6Address, dns.AAAA),
        )
        for lookup, rtype in lookups:
            try:
                answers, _, _ = yield lookup(name)
            except error.DNSNameError:
                raise BackendUnavailable(f"{name}: no such name (NXDOMAIN)") from None
            except Exception as e:
                why = _RESOLUTION_ERRORS.get(type(e), type(e).__name__)
                raise BackendUnavailable(f"{name}: cannot resolve: {why}") from e
            addresses = [_address_text(r) for r in answers if r.type == rtype]
            if addresses:
                return addresses[turn % len(addresses)]
        raise BackendUnavailable(f"{name}: no address")

    def unreachable(self, reason: Failure) -> None:
        """A connection was closed because its backend could not be reached."""
        self.stats.connect_failures += 1
        if not self.failing:
            self.failing = True
            _log.warn(
                "VIP listener {listener}: cannot forward: {reason}; "
                "further failures are only counted until a connection gets through",
                listener=str(self.spec),
                reason=reason.getErrorMessage(),
            )

    def reached(self) -> None:
        """A connection got through."""
        if self.failing:
            self.failing = False
            _log.info("VIP listener {listener}: forwarding again", listener=str(self.spec))


