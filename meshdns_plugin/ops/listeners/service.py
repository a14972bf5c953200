# -*- test-case-name: tests.unit.ops.listeners.test_service -*-
"""
Per-VIP TCP listeners: what makes an auto-allocated VIP reach the real service.

In Istio's DNS proxying guide the DNS proxy answers each address-less
ServiceEntry host with a VIP, and Envoy listens on each VIP and port and
forwards the connection to the service the VIP stands for; that is how two
external TCP services on one port (the guide's two C{tcp-echo} on 9000) are
told apart. This module is Envoy's part, for TCP only: bytes are relayed as
they are and never parsed, so HTTP, TLS, MySQL and the rest all work alike.

Three pieces: the plan (L{meshdns_plugin.ops.listeners.plan}), the relay
(L{meshdns_plugin.ops.listeners.relay}), and here L{VipListeners}, the
service that keeps the listening sockets in step with every accepted load:
new (address, port) pairs are opened, gone ones closed, and kept ones keep
their socket and their connections and only take the new destination.

Sockets are bound with C{IP_FREEBIND}. A VIP is the address of no interface,
only of a C{local} route (C{meshdns capture install --vip-routes}); that route
lets an IPv4 bind succeed but not an IPv6 one, and it may come after meshdns
starts. With the option both bind, in any order; a listener whose address
the kernel would not deliver here gets one warning, since nothing else would
say why connections to it never arrive.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from meshdns_plugin.mesh.addresses import family
from meshdns_plugin.ops.listeners.plan import ListenerPlan, ListenerSpec, listener_plan
from meshdns_plugin.ops.listeners.relay import ForwardingFactory
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


def bind_socket(address: str, port: int) -> socket.socket:
    """
    A non-blocking TCP socket listening on C{address}:C{port}, bound with
    C{IP_FREEBIND} (see the module docstring) and C{SO_REUSEADDR} (as
    Twisted's own listeners are, so a restart does not wait for
    C{TIME_WAIT}); IPv6 sockets are IPv6 only.

    @raise OSError: if it cannot be bound (address in use, a privileged port
        without the privilege, ...).
    """
    sock = socket.socket(family(address), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if IP_FREEBIND is not None:
            sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
        if sock.family == socket.AF_INET6:
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
    try:
        with socket.socket(family(address), socket.SOCK_DGRAM) as probe:
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
