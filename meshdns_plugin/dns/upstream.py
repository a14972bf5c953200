# -*- test-case-name: tests.unit.dns.test_forwarder,tests.integration.test_forwarding_faults -*-
"""
Asking the upstream servers: one question, in order with failover, within
one deadline, as bytes.

Twisted's L{twisted.names.client.Resolver} decodes every reply into record
objects, sends no EDNS, accepts any reply with the right ID and source, and
treats SERVFAIL and REFUSED as final. Here:
  - each UDP query leaves from a socket of its own, connected to the server,
    so from a fresh port the kernel picks at random, with a random ID: an
    off-path attacker must guess both (RFC 5452). The kernel drops datagrams
    from any other address or port; a reply that comes from the server but
    with another ID or question is ignored (and counted) while the real one
    is awaited. ICMP "port unreachable" fails the attempt at once;
  - a UDP socket is a plain socket, not a L{udp.Port}: no protocol object,
    no log line per port, one C{recv} per reply; all of them sit in one
    epoll set of their own that the reactor watches as one reader;
  - over TCP (for a client that asked over TCP, or after a truncated UDP
    reply) a reply about another question fails the attempt, and a
    connection closed before the reply fails it at once;
  - SERVFAIL and REFUSED fail over to the next server, like a timeout; the
    last server's reply is kept, so the client gets it (with its extended
    error) if every server fails;
  - which server is asked when, and for how long, follows each server's
    health (L{meshdns_plugin.dns.exchange}, L{meshdns_plugin.dns.health}).
"""

from __future__ import annotations

import errno
import os
import select
import socket
from collections.abc import Callable, Sequence
from typing import Protocol

from twisted.internet import protocol
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.protocols.basic import Int16StringReceiver
from twisted.python.failure import Failure

from meshdns_plugin.dns.exchange import TIMED_OUT, AttemptDone, Exchange
from meshdns_plugin.dns.health import PROBE_MAX_INTERVAL, ServerHealth
from meshdns_plugin.dns.message import (
    HEADER,
    RD,
    REFUSED,
    SERVFAIL,
    MalformedMessage,
    UpstreamReply,
    is_reply_to,
    read_reply,
)
from meshdns_plugin.dns.stats import UpstreamStats
from meshdns_plugin.mesh.addresses import family

#: The largest reply meshdns reads over UDP.
MAX_DATAGRAM = 65535

_log = Logger()

#: The question of a health probe: the root's NS, which any recursive
#: server answers (from its priming) without asking anyone.
PROBE_QUESTION = b"\x00" + (2).to_bytes(2) + (1).to_bytes(2)


class _DatagramAttempt:
    """
    One query to one server over a UDP socket of its own (an
    L{twisted.internet.interfaces.IReadDescriptor} of the reactor).
    """

    __slots__ = (
        "_socket", "_fileno", "_reactor", "_readers", "_done", "_timer", "_ident", "_question",
        "_stats",
    )

    def __init__(
        self,
        reactor: IReactorTime,
        server: tuple[str, int],
        packet: bytes,
        question: bytes,
        seconds: float,
        stats: UpstreamStats,
        new_socket: Callable[[int, int], socket.socket],
        readers: Readers,
        held: list[tuple[_DatagramAttempt, bytes]] | None,
        done: AttemptDone,
    ) -> None:
        """
        @param held: where to leave the query to be sent later (see
            L{UpstreamClient.hold}), or L{None} to send it now.
        """
        self._reactor = reactor
        self._readers = readers
        self._done: AttemptDone | None = done
        self._ident = int.from_bytes(packet[:2])
        self._question = question
        self._stats = stats
        self._timer = None
        try:
            # Out of descriptors (EMFILE) fails this attempt like any
            # network error: the client gets the next server, or SERVFAIL.
            sock = new_socket(family(server[0]), socket.SOCK_DGRAM)
        except OSError as e:
            self._done = None
            reactor.callLater(0, done, None, f"no socket for {server[0]}:{server[1]}: {e}")
            return
        self._socket = sock
        try:
            sock.setblocking(False)
            sock.connect(server)
        except OSError as e:
            sock.close()
            self._done = None
            reactor.callLater(0, done, None, f"cannot send to {server[0]}:{server[1]}: {e}")
            return
        self._fileno = sock.fileno()
        readers.add(self)
        self._timer = reactor.callLater(seconds, self._finish, None, TIMED_OUT)
        if held is None:
            self.send(packet)
        else:
            held.append((self, packet))

    def send(self, packet: bytes) -> None:
        """Send the query (a failure ends the attempt)."""
        if self._done is None:
            return
        try:
            self._socket.send(packet)
        except OSError as e:
            self._finish(None, f"cannot send: {e}")

    def fileno(self) -> int:
        return self._fileno

    def logPrefix(self) -> str:
        return "meshdns-upstream"

    def doRead(self) -> None:
        recv = self._socket.recv
        while self._done is not None:
            try:
                data = recv(MAX_DATAGRAM)
            except BlockingIOError:
                return
            except OSError as e:
                reason = "port unreachable" if e.errno == errno.ECONNREFUSED else str(e)
                self._finish(None, reason)
                return
            if is_reply_to(data, self._ident, self._question):
                self._finish(data, "")
            else:
                self._stats.ignored_replies += 1

    def connectionLost(self, reason: Failure) -> None:
        self._finish(None, "socket lost")

    def cancel(self) -> None:
        """Close the socket, calling nobody back (another server answered)."""
        if self._done is not None:
            self._done = None
            self._close()

    def _finish(self, data: bytes | None, why: str) -> None:
        done = self._done
        if done is None:
            return
        self._done = None
        self._close()
        done(data, why)

    def _close(self) -> None:
        self._readers.remove(self)
        self._socket.close()
        timer = self._timer
        if timer is not None and timer.active():
            timer.cancel()


class Readers(Protocol):
    """Watches the UDP sockets of the attempts in flight, calling C{doRead} on a reply."""

    def add(self, attempt: _DatagramAttempt) -> None: ...

    def remove(self, attempt: _DatagramAttempt) -> None: ...


class ReactorReaders:
    """Each socket a reader of the reactor of its own (for any reactor, fakes included)."""

    def __init__(self, reactor: IReactorTime) -> None:
        self._reactor = reactor

    def add(self, attempt: _DatagramAttempt) -> None:
        self._reactor.addReader(attempt)  # type: ignore[attr-defined]

    def remove(self, attempt: _DatagramAttempt) -> None:
        self._reactor.removeReader(attempt)  # type: ignore[attr-defined]


class NestedEpollReaders:
    """
    Every socket in one epoll set of its own, which is a single reader of the
    reactor: a burst of replies is one wake-up of the reactor and one
    C{doRead} here, not a reactor dispatch (with its logging context) per
    socket, and adding or removing a socket is one C{epoll_ctl}.
    """

    def __init__(self, reactor: IReactorTime) -> None:
        self._reactor = reactor
        self._epoll = select.epoll()
        self._attempts: dict[int, _DatagramAttempt] = {}
        self._watched = False

    def fileno(self) -> int:
        return self._epoll.fileno()

    def logPrefix(self) -> str:
        return "meshdns-upstream"

    def add(self, attempt: _DatagramAttempt) -> None:
        fd = attempt.fileno()
        self._epoll.register(fd, select.EPOLLIN)
        self._attempts[fd] = attempt
        if not self._watched:
            self._watched = True
            self._reactor.addReader(self)  # type: ignore[attr-defined]

    def remove(self, attempt: _DatagramAttempt) -> None:
        fd = attempt.fileno()
        if self._attempts.pop(fd, None) is not None:
            self._epoll.unregister(fd)

    def doRead(self) -> None:
        attempts = self._attempts
        for fd, _ in self._epoll.poll(0):
            attempt = attempts.get(fd)
            if attempt is not None:
                attempt.doRead()

    def connectionLost(self, reason: Failure) -> None:
        for attempt in list(self._attempts.values()):
            attempt.connectionLost(reason)


class _StreamAttempt(Int16StringReceiver):
    """One query to one server over a TCP connection of its own."""

    def __init__(self, packet: bytes, question: bytes, done: AttemptDone) -> None:
        self._packet = packet
        self._ident = int.from_bytes(packet[:2])
        self._question = question
        self._done: AttemptDone | None = done

    def connectionMade(self) -> None:
        if self._done is None:
            # Connected after its deadline: nobody waits for the reply.
            self.transport.abortConnection()
            return
        self.sendString(self._packet)

    def stringReceived(self, data: bytes) -> None:
        if is_reply_to(data, self._ident, self._question):
            self.finish(data, "")
        else:
            self.finish(None, "TCP reply about another question")

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.finish(None, "connection closed before the reply")

    def finish(self, data: bytes | None, why: str) -> None:
        done = self._done
        if done is None:
            return
        self._done = None
        if self.transport is not None:
            self.transport.abortConnection()
        done(data, why)


class _StreamAttemptFactory(protocol.ClientFactory):
    """Connects one L{_StreamAttempt}; fails it if the connection fails or takes too long."""

    noisy = False

    def __init__(
        self, reactor: IReactorTime, packet: bytes, question: bytes, seconds: float,
        done: AttemptDone,
    ) -> None:
        self._attempt = _StreamAttempt(packet, question, self._finished)
        self._done: AttemptDone | None = done
        self._timer = reactor.callLater(seconds, self._attempt.finish, None, TIMED_OUT)

    def buildProtocol(self, addr: object) -> _StreamAttempt:
        self._attempt.factory = self
        return self._attempt

    def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
        self._attempt.finish(None, f"cannot connect: {reason.getErrorMessage()}")

    def cancel(self) -> None:
        """Close the connection, calling nobody back (another server answered)."""
        self._done = None
        self._attempt.finish(None, "cancelled")

    def _finished(self, data: bytes | None, why: str) -> None:
        if self._timer.active():
            self._timer.cancel()
        done, self._done = self._done, None
        if done is not None:
            done(data, why)


class UpstreamClient:
    """
    Sends questions to the upstream servers (see the module docstring).

    @ivar servers: C{(ip, port)} pairs, in the configured order.
    @ivar timeout: seconds that bound one question, failover included.
    @ivar health: each server's L{ServerHealth}, in the same order.
    @ivar datagram_socket: makes the UDP sockets (C{socket.socket}; tests
        give a fake).
    @ivar readers: watches the UDP sockets for replies.
    """

    def __init__(
        self,
        servers: Sequence[tuple[str, int]],
        timeout: float,
        reactor: IReactorTime,
        stats: UpstreamStats,
        probe_max_interval: float = PROBE_MAX_INTERVAL,
    ) -> None:
        """
        @param probe_max_interval: the most seconds between two probes of a
            server that is down.
        """
        self.servers = tuple(servers)
        self.timeout = timeout
        self.reactor: IReactorTime = reactor
        self.stats = stats
        self.health = tuple(
            ServerHealth(server, reactor, self._probe, timeout, probe_max_interval)
            for server in self.servers
        )
        stats.servers[:] = [health.counters for health in self.health]
        self.datagram_socket: Callable[[int, int], socket.socket] = socket.socket
        self.readers: Readers = (
            NestedEpollReaders(reactor) if hasattr(select, "epoll") else ReactorReaders(reactor)
        )
        self.held: list[tuple[_DatagramAttempt, bytes]] | None = None

    def hold(self) -> None:
        """
        Keep the UDP queries of what follows until L{release}: the server
        holds them while it reads a burst of client queries, so that they
        leave back to back, and the server's first query wakes the upstream
        for the others (a wake-up costs more than a query on a VM).
        """
        if self.held is None:
            self.held = []

    def release(self) -> None:
        """Send the queries held since L{hold}."""
        held, self.held = self.held, None
        for attempt, packet in held or ():
            attempt.send(packet)

    def ask(
        self,
        packet_tail: bytes,
        question: bytes,
        tcp: bool,
        done: Callable[[UpstreamReply | None, list[str]], None],
    ) -> Exchange:
        """Ask the servers (see L{Exchange})."""
        return Exchange(self, packet_tail, question, tcp, done)

    def send_datagram(
        self, server: tuple[str, int], packet: bytes, question: bytes, seconds: float,
        done: AttemptDone,
    ) -> _DatagramAttempt:
        """One attempt over UDP (held while the server reads a burst)."""
        return _DatagramAttempt(
            self.reactor, server, packet, question, seconds, self.stats,
            self.datagram_socket, self.readers, self.held, done,
        )

    def send_stream(
        self, server: tuple[str, int], packet: bytes, question: bytes, seconds: float,
        done: AttemptDone,
    ) -> _StreamAttemptFactory:
        """One attempt over a TCP connection of its own."""
        factory = _StreamAttemptFactory(self.reactor, packet, question, seconds, done)
        self.reactor.connectTCP(  # type: ignore[attr-defined]
            server[0], server[1], factory, timeout=seconds
        )
        return factory

    def _probe(
        self, health: ServerHealth, seconds: float, done: Callable[[bool, float], None]
    ) -> None:
        """
        Ask C{health}'s server the root's NS (see L{PROBE_QUESTION}): any
        reply that can be read and is not SERVFAIL or REFUSED means it is back.
        """
        started = self.reactor.seconds()
        packet = HEADER.pack(int.from_bytes(os.urandom(2)), RD, 1, 0, 0, 0) + PROBE_QUESTION

        def replied(data: bytes | None, why: str) -> None:
            ok = False
            if data is not None:
                try:
                    ok = read_reply(data, 12 + len(PROBE_QUESTION)).rcode not in (
                        SERVFAIL, REFUSED,
                    )
                except MalformedMessage:
                    pass
            done(ok, self.reactor.seconds() - started)

        _DatagramAttempt(
            self.reactor, health.server, packet, PROBE_QUESTION, seconds, self.stats,
            self.datagram_socket, self.readers, None, replied,
        )

    def stop(self) -> None:
        """Stop probing the servers that are down."""
        for health in self.health:
            health.stop()
