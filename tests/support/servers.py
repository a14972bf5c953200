"""
An in-memory meshdns server for unit tests: the real factory, authority and
forwarder, on Twisted's fake reactor, with a protocol that records replies;
and a whole L{MeshService} on a fake reactor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.names import dns

from meshdns_plugin.config import parse_config
from meshdns_plugin.dns.authority import MeshAuthority
from meshdns_plugin.dns.cache import ResponseCache, cache_key
from meshdns_plugin.dns.fastpath import MAX_UDP_PAYLOAD
from meshdns_plugin.dns.forwarder import CachingForwarder, plain_query
from meshdns_plugin.dns.message import UpstreamReply, read_query, read_reply, udp_limit
from meshdns_plugin.dns.server import MeshDNSServerFactory, parse_query
from meshdns_plugin.dns.upstream import ReactorReaders, UpstreamClient
from meshdns_plugin.mesh.table import NameTable
from meshdns_plugin.service import MeshService

CLIENT = ("127.0.0.1", 40000)


class RecordingProtocol:
    """Stands in for the UDP or TCP protocol: keeps what would be sent."""

    #: Set by the TCP protocol when the connection is made.
    peer_allowed = True
    local_only = False

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def writeBytes(self, data: bytes, address: tuple[str, int] | None = None) -> None:
        self.sent.append(data)


class MemoryServer:
    """
    A factory wired as C{MeshService} wires it, without sockets.

    @ivar reactor: the fake reactor (its clock ages the cache).
    """

    def __init__(
        self,
        table: NameTable,
        upstream: tuple[str, int] = ("127.0.0.1", 1),
        factory_type: type[MeshDNSServerFactory] = MeshDNSServerFactory,
    ) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1_000_000)
        self.authority = MeshAuthority(table)
        self.forwarder = CachingForwarder([upstream], timeout=2, reactor=self.reactor)
        self.sockets = FakeDatagramSockets(self.reactor)
        self.sockets.install(self.forwarder.upstream)
        self.factory = factory_type(authorities=[self.authority], clients=[self.forwarder])

    def cache(self, name: str, rtype: int, answers=(), authority=(), rcode=dns.OK, ttl=None):
        """Put an upstream answer in the cache, as if it had just arrived."""
        put_cached(self.forwarder.cache, name, rtype, answers, authority, rcode, ttl)

    def full(self, data: bytes, udp: bool = True) -> bytes | None:
        """The reply of the full Twisted Names path, bypassing the fast path."""
        proto = RecordingProtocol()
        self.factory.messageReceived(
            parse_query(data), proto, CLIENT if udp else None, read_query(data)
        )
        return proto.sent[-1] if proto.sent else None

    def packet(self, data: bytes, udp: bool = True) -> bytes | None:
        """The reply to a packet as a socket would get it (fast path first)."""
        proto = RecordingProtocol()
        self.factory.packetReceived(data, proto, CLIENT if udp else None)
        return proto.sent[-1] if proto.sent else None


def fast_reply(factory: MeshDNSServerFactory, packet: bytes, udp: bool = True) -> bytes | None:
    """What the fast path alone answers to C{packet} (L{None}: it declines)."""
    query = read_query(packet)
    assert query is not None and query.problem is None
    limit = udp_limit(query, MAX_UDP_PAYLOAD) if udp else None
    answer = factory.fastpath.answer(query, limit, None)
    return answer if isinstance(answer, bytes) else None


def upstream_reply(
    name: str, rtype: int, answers=(), authority=(), rcode: int = dns.OK
) -> UpstreamReply:
    """
    An upstream reply to a plain query for C{name}, as meshdns reads one off
    the wire: encoded by Twisted Names from the records given.
    """
    message = dns.Message(answer=True, rCode=rcode, recDes=True, recAv=True)
    message.queries = [dns.Query(name.encode(), rtype, dns.IN)]
    message.answers = list(answers)
    message.authority = list(authority)
    data = message.toStr()
    return read_reply(data, 12 + len(plain_query(name.encode(), rtype, dns.IN).question))


def put_cached(
    cache: ResponseCache, name: str, rtype: int, answers=(), authority=(), rcode=dns.OK, ttl=None
) -> None:
    """
    Put an upstream answer to a plain query (RD, no DO) in C{cache}, as if
    it had just arrived; C{ttl}, if given, replaces the one its records give.
    """
    query = plain_query(name.lower().encode(), rtype, dns.IN)
    entry = cache.put(cache_key(query), upstream_reply(name, rtype, answers, authority, rcode))
    assert entry is not None, "not cacheable"
    if ttl is not None:
        entry.ttl = ttl


class FakeDatagramSocket:
    """A connected, non-blocking UDP socket that records what is sent to it."""

    def __init__(self, fileno: int) -> None:
        self.peer: tuple[str, int] | None = None
        self.sent: list[bytes] = []
        self.inbox: list[bytes | OSError] = []
        self.closed = False
        self._fileno = fileno

    def setblocking(self, flag: bool) -> None:
        pass

    def connect(self, address: tuple[str, int]) -> None:
        self.peer = address

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        return len(data)

    def recv(self, size: int) -> bytes:
        if not self.inbox:
            raise BlockingIOError()
        item = self.inbox.pop(0)
        if isinstance(item, OSError):
            raise item
        return item

    def fileno(self) -> int:
        return self._fileno

    def close(self) -> None:
        self.closed = True


class FakeDatagramSockets:
    """
    Stands in for C{socket.socket} in an L{UpstreamClient}
    (C{forwarder.upstream.datagram_socket}), on a Twisted memory reactor:
    every socket made is kept, and L{deliver} hands one a datagram and lets
    its reader read it.
    """

    def __init__(self, reactor: MemoryReactorClock) -> None:
        self.reactor = reactor
        self.created: list[FakeDatagramSocket] = []

    def __call__(self, family: int, kind: int) -> FakeDatagramSocket:
        sock = FakeDatagramSocket(1000 + len(self.created))
        self.created.append(sock)
        return sock

    def install(self, client: UpstreamClient) -> None:
        """Make C{client}'s UDP sockets fakes, watched by the memory reactor."""
        client.datagram_socket = self  # type: ignore[assignment]
        client.readers = ReactorReaders(self.reactor)

    def open(self) -> list[FakeDatagramSocket]:
        """The sockets not closed yet."""
        return [s for s in self.created if not s.closed]

    def deliver(self, sock: FakeDatagramSocket, data: bytes | OSError) -> None:
        """C{data} arrives on C{sock} (an C{OSError}: an ICMP error does)."""
        sock.inbox.append(data)
        (reader,) = [r for r in self.reactor.readers if r.fileno() == sock.fileno()]
        reader.doRead()


class FakeUDPTransport:
    """Records datagrams instead of sending them."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def write(self, data: bytes, address: tuple[str, int]) -> None:
        self.sent.append((data, address))

    def stopListening(self) -> None:
        pass


class UDPReactor(MemoryReactorClock):
    """A fake reactor whose UDP ports record what is sent (for upstream queries)."""

    def __init__(self) -> None:
        super().__init__()
        self.protocols: list = []

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        protocol.makeConnection(FakeUDPTransport())
        self.protocols.append(protocol)
        return protocol.transport

    def sent(self) -> list[tuple[bytes, tuple[str, int], object]]:
        """Every datagram sent: (data, address, the protocol that sent it)."""
        return [(d, a, p) for p in self.protocols for d, a in p.transport.sent]


def memory_mesh_service(folder: Path, entries: str, **sections: Any) -> MeshService:
    """
    C{twistd meshdns}'s service tree on a fake reactor (nothing listens),
    serving C{entries}, written to C{folder/entries.yaml}; its upstream
    (127.0.0.1:1) is never reached. C{sections} replace the config's own
    (no admin endpoint unless given).
    """
    (folder / "entries.yaml").write_text(entries)
    config = parse_config(
        {
            "entries": ["entries.yaml"],
            "upstream": {"servers": ["127.0.0.1:1"]},
            "admin": {"port": 0},
            **sections,
        },
        "meshdns.yaml",
        str(folder),
    )
    return MeshService(config, reactor=MemoryReactorClock())
