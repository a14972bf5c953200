# -*- test-case-name: tests.unit.dns.test_handover,tests.integration.test_handover -*-
"""
Restart without a gap: a second meshdns binds beside the first, takes every
new query from the moment it binds, and the first answers what it holds
before it stops.

Every DNS listening socket, UDP and TCP, is bound with C{SO_REUSEPORT}, so
that sockets of several processes on one address and port form one
reuseport group. By default Linux spreads a group's traffic by a hash of
each packet's addresses; and a socket that closes loses what is queued on
it: its datagrams, and the connections waiting in its accept queue. So the
listeners steer their group with a classic BPF program
(C{SO_ATTACH_REUSEPORT_CBPF}, one per group: the last attached wins) that
returns the index of the socket to deliver to. Sockets are indexed in bind
order, and a socket that leaves is replaced by the last one:

  - a listener that binds attaches "return L{OLDEST}" (0): new traffic keeps
    going to the process already running, since the newcomer has not yet
    started reading (twistd binds before its reactor runs, and a second's
    worth of queries would overflow the socket's queue);
  - once its reactor runs it attaches "return L{NEWEST}" (1): alone, the
    index is out of range and Linux falls back to its hash over the one
    socket; beside a predecessor, every new datagram and connection goes to
    it. When the predecessor closes, it takes index 0, so the next restart
    works the same way.

A handover is between two processes: with three at once, index 1 is the
middle one.

Steering needs no signal between the processes; on SIGTERM a meshdns only
has to know whether a successor exists (L{has_successor}: another socket
bound to the same address and port, in C{/proc/net}). If one does, the
listener hears nothing new, and L{Drain} answers what this process holds
(what is queued, the connections already accepted, the upstream queries in
flight) before the listeners close. Without a successor nothing changes: the
listeners close at once, as a plain stop always did.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import time
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer, tcp
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from meshdns_plugin.dns.protocols import BurstUDPPort

_log = Logger()

#: Linux's C{SO_ATTACH_REUSEPORT_CBPF} (asm-generic; Python does not name it).
SO_ATTACH_REUSEPORT_CBPF = getattr(socket, "SO_ATTACH_REUSEPORT_CBPF", 51)
#: The reuseport index of the process that was running first.
OLDEST = 0
#: The reuseport index of its successor, the second socket bound.
NEWEST = 1
#: Classic BPF C{BPF_RET | BPF_K}: return the constant C{k}.
_BPF_RET_K = 0x06
#: Connections a listener's accept queue holds (Twisted's default is 50):
#: room for those accepted while a drain or a table reload keeps the
#: reactor from accepting.
TCP_BACKLOG = 1024
#: Seconds between two looks at a draining process.
DRAIN_TICK = 0.05
#: Seconds without a new query, and none held, after which a drain is over.
DRAIN_QUIET = 0.2


def share_port(sock: socket.socket) -> None:
    """Let other processes of this user bind C{sock}'s address and port."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)


def steer(sock: socket.socket, index: int) -> bool:
    """
    Have C{sock}'s reuseport group deliver new traffic to its socket at
    C{index} (C{sock} is bound, and listening if it is TCP: before that it
    has no group).

    @return: whether the kernel took it; without it a restart still works,
        but queries that reach the old process as it closes are lost.
    """
    instruction = struct.pack("HBBI", _BPF_RET_K, 0, 0, index)
    program = ctypes.create_string_buffer(instruction, len(instruction))
    # struct sock_fprog: an unsigned short count, then a pointer.
    fprog = struct.pack("@HP", 1, ctypes.addressof(program))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
    except OSError as e:
        _log.warn("meshdns: cannot steer new queries to a successor: {reason}", reason=e.strerror)
        return False
    return True


def has_successor(sock: socket.socket) -> bool:
    """
    Whether another socket is bound to C{sock}'s address and port (for TCP,
    listening there): a second meshdns in C{sock}'s reuseport group. Read
    from C{/proc/net}, which lists this network namespace's sockets.
    """
    stream = sock.type == socket.SOCK_STREAM
    table = ("tcp" if stream else "udp") + ("6" if sock.family == socket.AF_INET6 else "")
    inode = str(os.fstat(sock.fileno()).st_ino)
    try:
        with open(f"/proc/net/{table}") as lines:
            rows = [line.split() for line in lines.readlines()[1:]]
    except OSError:
        return False
    # Columns: sl, local address, remote address, state, ..., inode (10th).
    local = next((row[1] for row in rows if row[9] == inode), None)
    return any(
        row[1] == local and row[9] != inode and (not stream or row[3] == "0A") for row in rows
    )


def take_over(port: Any) -> None:
    """
    Steer C{port}'s group to its oldest socket now, and to the newest once
    the reactor runs (see the module's docstring).
    """
    if steer(port.socket, OLDEST):
        port.reactor.callWhenRunning(
            lambda: port.socket is not None and steer(port.socket, NEWEST)
        )


class SharedUDPPort(BurstUDPPort):
    """A L{BurstUDPPort} bound with C{SO_REUSEPORT}, taking over its group."""

    def createInternetSocket(self) -> socket.socket:
        sock = super().createInternetSocket()
        share_port(sock)
        return sock

    def _bindSocket(self) -> None:
        super()._bindSocket()
        take_over(self)


class SharedTCPPort(tcp.Port):
    """A TCP listening port bound with C{SO_REUSEPORT}, taking over its group."""

    def createInternetSocket(self) -> socket.socket:
        sock = super().createInternetSocket()
        share_port(sock)
        return sock

    def startListening(self) -> None:
        super().startListening()
        take_over(self)


class Drain:
    """
    The end of a process that has a successor: its listeners hear nothing
    new, so it reads what is queued on them (datagrams, accepted
    connections), answers it and every query it holds, closes its TCP
    connections once they are quiet, and only then lets the listeners close.

    @ivar factory: the server factory; its C{outstanding} counts the
        queries it holds, its C{connections} the open TCP connections.
    @ivar ports: the listening ports (UDP and TCP).
    @ivar timeout: seconds a drain may take at most.
    """

    def __init__(self, factory: Any, ports: Sequence[Any], reactor: Any, timeout: float) -> None:
        self.factory = factory
        self.ports = ports
        self.reactor = reactor
        self.timeout = timeout

    def run(self) -> defer.Deferred[None]:
        """
        Drain if every listener has a successor; the Deferred fires once
        the listeners may close (at once when there is none).
        """
        ports = [port for port in self.ports if port.socket is not None]
        if not ports or not all(has_successor(port.socket) for port in ports):
            return defer.succeed(None)
        _log.info("meshdns: a successor listens on the same port: answering what this "
                  "process holds before it stops")
        self._started = time.monotonic()
        self._quietSince = self._started
        self._activity = self._count()
        self._closing = False
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self.reactor
        done = self._loop.start(DRAIN_TICK, now=True)
        done.addCallback(self._finished)
        return done

    def _count(self) -> int:
        """What the factory has answered or dropped, and its connections: it moves on activity."""
        stats = self.factory.stats
        return sum(stats.queries.values()) + stats.dropped + len(self.factory.connections)

    def _tick(self) -> None:
        now = time.monotonic()
        if now - self._started >= self.timeout:
            self._loop.stop()
            return
        if self._closing:
            if not self.factory.connections:
                self._loop.stop()
            return
        for port in self.ports:
            # Reads every datagram queued, accepts every connection waiting.
            port.doRead()
        activity = self._count()
        if activity != self._activity:
            self._activity, self._quietSince = activity, now
        if self.factory.outstanding == 0 and now - self._quietSince >= DRAIN_QUIET:
            self._closing = True
            for connection in list(self.factory.connections):
                connection.transport.loseConnection()

    def _finished(self, _: object) -> None:
        elapsed = time.monotonic() - self._started
        held = self.factory.outstanding + len(self.factory.connections)
        if held:
            _log.warn("meshdns: stopping after {seconds:.1f} s of drain with {held} queries "
                      "or connections still open", seconds=elapsed, held=held)
        else:
            _log.info("meshdns: drained in {seconds:.1f} s", seconds=elapsed)
