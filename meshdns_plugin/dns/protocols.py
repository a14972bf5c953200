# -*- test-case-name: tests.integration.test_burst_port,tests.unit.dns.test_server -*-
"""
The DNS server's protocols: UDP (and the burst UDP port that reads every
waiting datagram before it answers), and TCP with its idle, connection and
query limits. They hand every packet to their controller, the server factory
(L{meshdns_plugin.dns.server.MeshDNSServerFactory}), and send what it gives
back; they never let an exception out.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Protocol

from twisted.internet import protocol, udp
from twisted.logger import Logger
from twisted.protocols.basic import Int16StringReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from meshdns_plugin.dns.stats import ServerStats

#: Most datagrams L{BurstUDPPort} reads before it sends their replies.
MAX_BURST = 256

_log = Logger()


class Controller(Protocol):
    """What the protocols need of the server factory."""

    stats: ServerStats
    forwarder: Any
    tcp_idle_timeout: float
    tcp_max_queries: int

    def packetReceived(self, data: bytes, proto: Any, address: Any = None) -> None: ...

    def memoized(self, data: bytes, host: str, local_only: bool = False) -> bytes | None: ...

    def allowed(self, host: str) -> bool: ...

    def connectionMade(self, protocol: Any) -> None: ...

    def connectionLost(self, protocol: Any) -> None: ...


def on_loopback(address: str) -> bool:
    """
    Whether a listener on C{address} hears only this host: a loopback
    address. The kernel drops packets for 127.0.0.0/8 or ::1 that come from
    outside (martians), so anything arriving there was sent on this host, or
    redirected to it by DNS capture, which keeps the application's own
    source address (a pod's IP, say): such a query is let in whatever its
    source, where C{listen.allow} would refuse it.
    """
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class MeshDNSDatagramProtocol(protocol.DatagramProtocol):
    """
    DNS over UDP, serving side only.

    @ivar pending: while a L{BurstUDPPort} reads a burst, the replies to
        send after it; L{None} otherwise (answers that arrive later from the
        upstream are sent at once).
    """

    pending: list[tuple[bytes, tuple[str, int]]] | None = None
    #: Whether the port listens on a loopback address (see L{on_loopback}).
    local_only = False

    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self._late: list[tuple[bytes, tuple[str, int]]] = []

    def startProtocol(self) -> None:
        self.local_only = on_loopback(self.transport.getHost().host)

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        self.controller.packetReceived(data, self, addr)

    def writeBytes(self, data: bytes, address: tuple[str, int]) -> None:
        """
        Send a reply: in a burst, with the burst; else (an upstream answer)
        at the end of this turn of the reactor, with the others that arrive
        in it, so that they reach the client back to back.
        """
        pending = self.pending
        if pending is not None:
            pending.append((data, address))
            return
        late = self._late
        late.append((data, address))
        if len(late) == 1:
            self.transport.reactor.callLater(0, self._sendLate)

    def _sendLate(self) -> None:
        late, self._late = self._late, []
        send(self.transport, late, self.controller.stats)


def send(port: udp.Port, replies: list[tuple[bytes, tuple[str, int]]], stats_: ServerStats
         ) -> None:
    """
    Send C{replies} straight to the socket, without the five address checks
    of L{udp.Port.write} (the addresses come from C{recvfrom}). A reply the
    kernel will not take (a full buffer) is dropped and counted, as UDP may.
    """
    sendto = port.socket.sendto
    for data, address in replies:
        try:
            sendto(data, address)
        except OSError:
            stats_.dropped += 1


class BurstUDPPort(udp.Port):
    """
    A UDP port that reads every waiting datagram (up to L{MAX_BURST}), then
    sends all their replies back to back.

    Stock L{udp.Port} answers each datagram before it reads the next, so
    under load every reply wakes the client up on its own, and on a virtual
    machine that wake-up (an interrupt to another CPU) costs more than
    answering from the table: sent in a burst, the replies after the first
    find the client awake (bench/README.md: 1.7x the queries per second).
    Replies go straight to C{socket.sendto}, without the five address checks
    of L{udp.Port.write}: the addresses come from C{recvfrom}. A reply the
    kernel will not take (a full buffer) is dropped and counted, as UDP may.
    """

    protocol: MeshDNSDatagramProtocol

    def doRead(self) -> None:
        protocol = self.protocol
        pending: list[tuple[bytes, tuple[str, int]]] = []
        protocol.pending = pending
        recvfrom = self.socket.recvfrom
        size = self.maxPacketSize
        received = protocol.datagramReceived
        memoized = protocol.controller.memoized
        local_only = protocol.local_only
        forwarder = protocol.controller.forwarder
        upstream = forwarder.upstream if forwarder is not None else None
        if upstream is not None:
            upstream.hold()
        try:
            for _ in range(MAX_BURST):
                try:
                    data, address = recvfrom(size)
                except OSError:
                    # EAGAIN: all read. Anything else (an ICMP error queued
                    # on the socket) concerns no query of this burst.
                    break
                try:
                    reply = memoized(data, address[0], local_only)
                    if reply is not None:
                        pending.append((reply, address))
                    else:
                        # IPv6 addresses come with flow info and scope ID.
                        received(data, address[:2])
                except Exception:
                    _log.failure("Unexpected error answering a datagram")
        finally:
            protocol.pending = None
            if upstream is not None:
                upstream.release()
            send(self, pending, protocol.controller.stats)


class MeshDNSStreamProtocol(Int16StringReceiver, TimeoutMixin):
    """
    DNS over TCP (two-byte length prefix), serving side only.

    A connection that stays silent (or stalls in the middle of a query) for
    the factory's C{tcp_idle_timeout} is aborted, and one is closed after
    C{tcp_max_queries} queries, so slow or greedy clients cannot hold
    connections and buffers for ever.
    """

    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self.queries = 0
        self.peer_allowed = True
        self.peer_host = ""

    def connectionMade(self) -> None:
        self.controller.connectionMade(self)
        # The client's address: its access decision, and its view.
        self.peer_host = self.transport.getPeer().host
        self.peer_allowed = on_loopback(self.transport.getHost().host) or self.controller.allowed(
            self.peer_host
        )
        self.setTimeout(self.controller.tcp_idle_timeout)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.setTimeout(None)
        self.controller.connectionLost(self)

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        super().dataReceived(data)

    def timeoutConnection(self) -> None:
        self.transport.abortConnection()

    def stringReceived(self, data: bytes) -> None:
        self.queries += 1
        if self.queries > self.controller.tcp_max_queries:
            self.transport.loseConnection()
            return
        self.controller.packetReceived(data, self)

    def writeBytes(self, data: bytes) -> None:
        if self.transport is not None and self.connected:
            self.sendString(data)
