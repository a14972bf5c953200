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

from meshdns_plugin.authority import MeshAuthority
from meshdns_plugin.config import parse_config
from meshdns_plugin.server import MeshDNSServerFactory, parse_query
from meshdns_plugin.service import MeshService
from meshdns_plugin.table import NameTable
from meshdns_plugin.upstream import CachedResponse, CachingForwarder
from meshdns_plugin.wire import name_to_wire

CLIENT = ("127.0.0.1", 40000)


class RecordingProtocol:
    """Stands in for the UDP or TCP protocol: keeps what would be sent."""

    #: Set by the TCP protocol when the connection is made.
    peer_allowed = True

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
        self.factory = factory_type(authorities=[self.authority], clients=[self.forwarder])

    def cache(self, name: str, rtype: int, answers=(), authority=(), rcode=dns.OK, ttl=None):
        """Put an upstream answer in the cache, as if it had just arrived."""
        records = list(answers)
        ttls = [r.ttl for r in records] or [r.ttl for r in authority]
        key = (name_to_wire(name.lower().encode()), rtype, dns.IN)
        entry = CachedResponse(
            self.reactor.seconds(),
            ttl if ttl is not None else min(ttls),
            rcode,
            records,
            list(authority),
            [],
        )
        self.forwarder.cache.put(key, entry)

    def full(self, data: bytes, udp: bool = True) -> bytes | None:
        """The reply of the full Twisted Names path, bypassing the fast path."""
        proto = RecordingProtocol()
        self.factory.messageReceived(parse_query(data), proto, CLIENT if udp else None)
        return proto.sent[-1] if proto.sent else None

    def packet(self, data: bytes, udp: bool = True) -> bytes | None:
        """The reply to a packet as a socket would get it (fast path first)."""
        proto = RecordingProtocol()
        self.factory.packetReceived(data, proto, CLIENT if udp else None)
        return proto.sent[-1] if proto.sent else None


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
