# -*- test-case-name: tests.test_listeners -*-
"""
Per-VIP TCP listeners: what makes an auto-allocated VIP reach the real service.

In Istio's DNS proxying guide the DNS proxy answers each address-less
ServiceEntry host with a VIP, and Envoy listens on each VIP and port and
forwards the connection to the service the VIP stands for; that is how two
external TCP services on one port (the guide's two C{tcp-echo} on 9000) are
told apart. This module is Envoy's part, for TCP only: bytes are relayed as
they are and never parsed, so HTTP, TLS, MySQL and the rest all work alike.

Three pieces:
  - L{listener_plan}, a pure function of the entries and the VIPs: one
    L{ListenerSpec} per (address, port) with its backends, and a note for
    every TCP port that gets no listener, saying why. C{meshdns listeners}
    and the server can share it, so the listing is what is served;
  - L{ForwardingFactory} and its two protocols: per connection, the next
    backend in turn, its host name resolved through the upstream servers
    (never through meshdns's own table, which would answer the VIP itself),
    a connect, then bytes relayed both ways with flow control and half-close;
  - L{VipListeners}, the service that keeps the listening sockets in step
    with every accepted load: new (address, port) pairs are opened, gone ones
    closed, and kept ones keep their socket and their connections and only
    take the new destination.

Sockets are bound with C{IP_FREEBIND}. A VIP is the address of no interface,
only of a C{local} route (C{meshdns capture install --vip-routes}); that route
lets an IPv4 bind succeed but not an IPv6 one, and it may come after meshdns
starts. With the option both bind, in any order; a listener whose address
the kernel would not deliver here gets one warning, since nothing else would
say why connections to it never arrive.
"""

from __future__ import annotations

import ipaddress
import itertools
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.internet import defer, endpoints, protocol
from twisted.internet.interfaces import IHalfCloseableProtocol, IListeningPort
from twisted.logger import Logger
from twisted.names import dns, error
from twisted.protocols import portforward
from twisted.python.failure import Failure
from zope.interface import implementer

from meshdns_plugin.mesh.documents import is_ip
from meshdns_plugin.mesh.entries import DNS_RESOLUTIONS
from meshdns_plugin.mesh.model import Port, ServiceEntry
from meshdns_plugin.mesh.view import ENDPOINTS, Collision, MeshView
from meshdns_plugin.ops.stats import ListenerStats

if TYPE_CHECKING:
    from meshdns_plugin.config import Config
    from meshdns_plugin.mesh.loader import PreparedTable

#: Linux's C{IP_FREEBIND} (the socket module does not export it before
#: Python 3.12); elsewhere, binding needs the address to be local already.
IP_FREEBIND: int | None = getattr(
    socket, "IP_FREEBIND", 15 if sys.platform.startswith("linux") else None
)
#: How many connections may wait to be accepted per listener.
BACKLOG = 128

_log = Logger()


def _endpoint(address: str, port: int) -> str:
    """C{address:port}, with an IPv6 address in brackets."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


@dataclass(frozen=True)
class Backend:
    """
    A place connections are forwarded to.

    @ivar address: an IP address, or a host name resolved at each connect.
    """

    address: str
    port: int

    def __str__(self) -> str:
        return _endpoint(self.address, self.port)


@dataclass(frozen=True)
class ListenerSpec:
    """
    One listener: connections to C{address}:C{port} go to C{backends}.

    @ivar host: the ServiceEntry host the address stands for.
    @ivar source: the ServiceEntry it comes from, for messages.
    @ivar backends: used in turn, one per connection.
    """

    address: str
    port: int
    host: str
    source: str
    backends: tuple[Backend, ...]

    @property
    def key(self) -> tuple[str, int]:
        """What identifies a listening socket."""
        return (self.address, self.port)

    def __str__(self) -> str:
        return f"{_endpoint(self.address, self.port)} ({self.host})"


@dataclass(frozen=True)
class ListenerPlan:
    """
    The listeners a load asks for.

    @ivar listeners: one per (address, port), in entry order.
    @ivar notes: one line per TCP port that gets no listener, saying why.
    @ivar collisions: each (address, port) that a later host also claims;
        the first host keeps it.
    """

    listeners: tuple[ListenerSpec, ...] = ()
    notes: tuple[str, ...] = ()
    collisions: tuple[Collision, ...] = ()


def is_tcp(protocol: str) -> bool:
    """Whether an Istio port protocol runs over TCP: every one but UDP."""
    return protocol.upper() != "UDP"


def _backends(entry: ServiceEntry, host: str, port: Port) -> tuple[Backend, ...]:
    """
    Where connections to C{host}'s C{port} go, as Istio's clusters would send
    them: the entry's endpoints (at their own port for this port's name, else
    C{targetPort}, else the port itself); without endpoints, for DNS
    resolution, the host itself.
    """
    default = port.target_port or port.number
    if entry.endpoints:
        return tuple(
            Backend(endpoint.address, endpoint.ports.get(port.name, default))
            for endpoint in entry.endpoints
        )
    if entry.resolution in DNS_RESOLUTIONS and not host.startswith("*."):
        return (Backend(host, default),)
    return ()


def _no_backend_reason(entry: ServiceEntry, host: str) -> str:
    if entry.resolution == "NONE":
        return "resolution NONE without endpoints: connections go to the address itself"
    if host.startswith("*."):
        return "a wildcard host cannot be resolved, and there are no endpoints"
    return f"resolution {entry.resolution} without endpoints: nowhere to forward to"


def listener_plan(view: MeshView) -> ListenerPlan:
    """
    The listeners of a mesh view: for each TCP port of each visible
    ServiceEntry host, one listener per address that DNS answers for the
    host (explicit, status or VIP; the endpoints a C{resolution: NONE} entry
    answers with are the backends themselves, not listeners).

    When several hosts claim one (address, port), the first in file order
    keeps it; the others are collisions.
    """
    specs: dict[tuple[str, int], ListenerSpec] = {}
    notes: list[str] = []
    collisions: list[Collision] = []
    for entry in view.service_entries:
        for host in entry.hosts:
            found = view.hosts.get(host)
            addresses = found.addresses if found is not None and found.kind != ENDPOINTS else ()
            for port in entry.ports:
                if not is_tcp(port.protocol):
                    continue
                where = f"{entry.origin}: {host} port {port.number}"
                if not addresses:
                    notes.append(f"{where}: no address and no VIP: no listener")
                    continue
                backends = _backends(entry, host, port)
                if not backends:
                    notes.append(f"{where}: {_no_backend_reason(entry, host)}: no listener")
                    continue
                for address in addresses:
                    spec = ListenerSpec(address, port.number, host, str(entry.origin), backends)
                    taken = specs.setdefault(spec.key, spec)
                    if taken is not spec and taken.host != host:
                        collisions.append(
                            Collision(
                                address,
                                port.number,
                                f"{taken.host} ({taken.source})",
                                f"{host} ({entry.origin}), which gets no listener",
                            )
                        )
    return ListenerPlan(tuple(specs.values()), tuple(notes), tuple(collisions))


def collisions(view: MeshView) -> tuple[Collision, ...]:
    """
    Every collision of a view: addresses two hosts answer (the view's own),
    then listeners two hosts claim (L{listener_plan}'s); what the log,
    C{meshdns check} and C{/debug/problems} report alike.
    """
    return (*view.collisions, *listener_plan(view).collisions)


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
        endpoint_type = (
            endpoints.TCP6ClientEndpoint if ":" in address else endpoints.TCP4ClientEndpoint
        )
        endpoint = endpoint_type(factory.reactor, address, port, timeout=factory.connect_timeout)
        backend = _BackendSide()
        backend.setPeer(self)
        d = endpoint.connect(_OneBackend(backend))

        def unreachable(reason: Failure) -> Failure:
            where = _endpoint(address, port)
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


def bind_socket(address: str, port: int) -> socket.socket:
    """
    A non-blocking TCP socket listening on C{address}:C{port}, bound with
    C{IP_FREEBIND} (see the module docstring) and C{SO_REUSEADDR} (as
    Twisted's own listeners are, so a restart does not wait for
    C{TIME_WAIT}); IPv6 sockets are IPv6 only.

    @raise OSError: if it cannot be bound (address in use, a privileged port
        without the privilege, ...).
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if IP_FREEBIND is not None:
            sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def routed_here(address: str) -> bool:
    """
    Whether the kernel delivers connections to C{address} to this host: the
    route it picks has this address, or a loopback one, as its source (a
    C{local} route, or an assigned address). A UDP connect only looks the
    route up; nothing is sent.
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((address, 9))
            source = probe.getsockname()[0]
    except OSError:  # no route, or no such address family in this kernel
        return False
    return source == address or ipaddress.ip_address(source).is_loopback


class VipListeners(service.Service):
    """
    The listening sockets of the current L{ListenerPlan}.

    Sockets are first opened in L{privilegedStartService}, so that under
    C{twistd --uid} ports below 1024 are bound before root is given up; a
    reload that adds one later needs C{CAP_NET_BIND_SERVICE} (or the
    namespace's C{net.ipv4.ip_unprivileged_port_start}), and says so in its
    error line if it has neither. A listener that cannot be opened is
    logged, counted and retried at the next reload; the others are
    unaffected.

    @ivar plan: the plan followed now.
    @ivar factories: (address, port) -> the factory of each open listener.
    @ivar stats: the counters C{/metrics} reports.
    """

    name = "vip-listeners"

    def __init__(
        self,
        resolver: Any,
        connect_timeout: float,
        reactor: Any = None,
        bind: Callable[[str, int], socket.socket] = bind_socket,
    ) -> None:
        """
        @param resolver: asks the upstream servers (see L{ForwardingFactory}).
        @param bind: opens a listening socket (L{bind_socket}; tests fake it).
        """
        if reactor is None:
            from twisted.internet import reactor
        self.resolver = resolver
        self.connect_timeout = connect_timeout
        self.plan = ListenerPlan()
        self.factories: dict[tuple[str, int], ForwardingFactory] = {}
        self.stats = ListenerStats()
        self._reactor = reactor
        self._bind = bind
        self._ports: dict[tuple[str, int], IListeningPort] = {}
        self._opened = False

    @classmethod
    def forConfig(cls, config: Config, resolver: Any, reactor: Any = None) -> VipListeners:
        """The listeners C{config} describes, resolving through C{resolver}."""
        return cls(
            resolver,
            config.vip_listeners.connect_timeout,
            reactor,
        )

    def follow(self, prepared: PreparedTable) -> None:
        """
        Take the listeners of a load that is being accepted (a
        L{meshdns_plugin.ops.watcher.TableLoader} observer): what the mesh view
        the table was built from asks for.
        """
        try:
            self.update(listener_plan(prepared.view))
        except Exception:
            # A bug here must not stop the new table from serving DNS.
            _log.failure("VIP listeners could not follow the new entries")

    def update(self, plan: ListenerPlan) -> None:
        """Follow C{plan}: open, close and retarget listeners if running."""
        for note in plan.notes:
            if note not in self.plan.notes:
                _log.info("{note}", note=note)
        for collision in plan.collisions:
            if collision not in self.plan.collisions:
                _log.warn("{collision}", collision=collision)
        self.plan = plan
        if self._opened:
            self._reconcile()

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._opened = True
        self._reconcile()

    def startService(self) -> None:
        super().startService()
        if not self._opened:
            self._opened = True
            self._reconcile()

    def stopService(self) -> defer.Deferred[Any]:
        """Close every listening socket; relayed connections end with the reactor."""
        super().stopService()
        self._opened = False
        ports = list(self._ports.values())
        self._ports.clear()
        self.factories.clear()
        self.stats.listening = 0
        return defer.gatherResults([defer.maybeDeferred(port.stopListening) for port in ports])

    def _reconcile(self) -> None:
        wanted = {spec.key: spec for spec in self.plan.listeners}
        for key in [key for key in self._ports if key not in wanted]:
            spec = self.factories.pop(key).spec
            self._ports.pop(key).stopListening()
            _log.info(
                "VIP listener {listener}: closed (no longer in the entries); "
                "its open connections carry on",
                listener=str(spec),
            )
        for key, spec in wanted.items():
            factory = self.factories.get(key)
            if factory is None:
                self._open(spec)
            elif factory.spec != spec:
                factory.spec = spec
                _log.info(
                    "VIP listener {listener}: now forwards to {backends}",
                    listener=str(spec),
                    backends=", ".join(map(str, spec.backends)),
                )
        self.stats.listening = len(self._ports)

    def _open(self, spec: ListenerSpec) -> None:
        try:
            sock = self._bind(spec.address, spec.port)
        except OSError as e:
            self.stats.bind_failures += 1
            _log.error(
                "VIP listener {listener}: cannot listen: {error}; retried at the next reload",
                listener=str(spec),
                error=e.strerror or e,
            )
            return
        factory = ForwardingFactory(
            spec, self.resolver, self.stats, self.connect_timeout, self._reactor
        )
        try:
            port = self._reactor.adoptStreamPort(sock.fileno(), sock.family, factory)
        finally:
            # The reactor listens on its own duplicate of the descriptor.
            sock.close()
        self._ports[spec.key] = port
        self.factories[spec.key] = factory
        _log.info(
            "VIP listener {listener}: forwarding to {backends}",
            listener=str(spec),
            backends=", ".join(map(str, spec.backends)),
        )
        if not routed_here(spec.address):
            _log.warn(
                "VIP listener {listener}: {address} is not routed to this host, so no "
                "connection can reach it (for VIPs: meshdns capture install --vip-routes)",
                listener=str(spec),
                address=spec.address,
            )
