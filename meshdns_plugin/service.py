# -*- test-case-name: tests.unit.test_api,tests.unit.ops.test_admin -*-
"""
The meshdns service tree: the resolvers, the DNS server factory, and the UDP
and TCP listeners under one L{MultiService}.

UDP is an L{internet.UDPServer} and TCP an L{internet.TCPServer}, side by
side on the same address and port, one such pair per listen address, all on
one port and one factory; both bind their own port classes, which a
successor can bind beside (L{meshdns_plugin.dns.handover}).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from twisted.application import internet, service
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IResolver
from twisted.logger import Logger
from twisted.names.resolve import ResolverChain

from meshdns_plugin.config import Config
from meshdns_plugin.dns.authority import MeshAuthority
from meshdns_plugin.dns.autopath import Autopath
from meshdns_plugin.dns.clusterauthority import ClusterAuthority
from meshdns_plugin.dns.descriptors import raise_open_files_limit, tcp_connection_cap
from meshdns_plugin.dns.forwarder import CachingForwarder
from meshdns_plugin.dns.handover import TCP_BACKLOG, Drain, SharedTCPPort, SharedUDPPort
from meshdns_plugin.dns.protocols import MeshDNSDatagramProtocol
from meshdns_plugin.dns.server import MeshDNSServerFactory
from meshdns_plugin.mesh.loader import TableLoader
from meshdns_plugin.mesh.table import NameTable
from meshdns_plugin.mesh.views import MeshViews
from meshdns_plugin.ops.admin import AdminService
from meshdns_plugin.ops.listeners.plan import ListenerPlan, collisions
from meshdns_plugin.ops.listeners.service import VipListeners
from meshdns_plugin.ops.querylog import QueryLoggingFactory
from meshdns_plugin.ops.reported import Reported
from meshdns_plugin.ops.stats import ReloadStats
from meshdns_plugin.ops.watcher import Reloader, TableWatcher, fingerprint
from meshdns_plugin.sources import kubestatus
from meshdns_plugin.sources.files import load_entries
from meshdns_plugin.sources.kubernetes import ApiSource

_log = Logger()


class ListenError(Exception):
    """
    A DNS listener cannot be opened; C{str()} is one line naming the address,
    the port and the protocol, with the reason (C{Address already in use}).
    """

    def __init__(self, protocol: str, error: CannotListenError) -> None:
        reason = getattr(error.socketError, "strerror", None) or str(error.socketError)
        super().__init__(
            f"cannot listen on {error.interface or '*'} port {error.port} ({protocol}): {reason}"
        )


class BurstUDPServer(internet.UDPServer):
    """
    An L{internet.UDPServer} listening with a L{SharedUDPPort}: a
    L{BurstUDPPort} that a successor can bind beside.
    """

    def _getPort(self) -> SharedUDPPort:
        """
        @raise ListenError: if the port cannot be bound.
        """
        port = SharedUDPPort(*self.args, reactor=self.reactor, **self.kwargs)
        try:
            port.startListening()
        except CannotListenError as e:
            raise ListenError("UDP", e) from None
        return port


class TCPServer(internet.TCPServer):
    """
    An L{internet.TCPServer} listening with a L{SharedTCPPort}, which a
    successor can bind beside (L{handover}); it fails when it starts if its
    port cannot be bound, as the UDP server beside it does.
    """

    def _getPort(self) -> SharedTCPPort:
        """
        @raise ListenError: if the port cannot be bound.
        """
        port = SharedTCPPort(*self.args, reactor=self.reactor, **self.kwargs)
        try:
            port.startListening()
        except CannotListenError as e:
            raise ListenError("TCP", e) from None
        return port


class MeshService(service.MultiService):
    """
    meshdns as a Twisted service: DNS over UDP and TCP, answered by a
    L{ResolverChain} of the L{MeshAuthority} and the L{CachingForwarder}
    (with an embedding application's own C{authorities} between them).

    @ivar authority: the mesh authority (its C{table} is the live snapshot).
    @ivar forwarder: the caching forwarder.
    @ivar loader: builds new tables from the configured files.
    @ivar reloads: reload counters.
    @ivar cluster: the authority for the cluster domain, when the
        Kubernetes API source watches every namespace; else L{None}.
    @ivar vipListeners: the per-VIP TCP listeners (their C{stats} too), or
        L{None} when C{vip_listeners.enabled} is off.
    @ivar listening: whether every DNS listener is bound: from the end of
        C{startService} (which raises L{ListenError} if one cannot be) to
        the start of C{stopService}. C{running} is set before the children
        start, and so says nothing about the sockets.
    """

    def __init__(self, config: Config, reactor=None, authorities: Sequence[IResolver] = ()) -> None:
        """
        @param authorities: more resolvers to serve, asked after the mesh and
            before the forwarder: the mesh stays first so that its names
            keep the wire fast path (see L{MeshDNSServerFactory}), and the
            forwarder, which answers every name, must be last.
        Invalid documents at start-up do not stop it: each is logged and
        left out, and every valid one is served.
        """
        super().__init__()
        self.config = config
        self.listening = False
        # Taken before the first load: a change made while it reads is seen.
        before = fingerprint(config.entries)
        self.loader = TableLoader(config, load_entries)
        self.reloads = ReloadStats(ok=1, last_time=time.time())
        self.forwarder = CachingForwarder.fromConfig(config, reactor)
        self.vipListeners: VipListeners | None = None
        if config.vip_listeners.enabled:
            # Before the first load, so that it follows that load as it
            # follows every reload; it resolves through the forwarder alone.
            self.vipListeners = VipListeners.forConfig(config, self.forwarder, reactor)
            self.vipListeners.setServiceParent(self)
            self.loader.observers.append(self.vipListeners.follow)
        self.api: ApiSource | None = None
        self.cluster: ClusterAuthority | None = None
        if config.kubernetes.enabled:
            self.api = self._api_source(reactor)
            if not config.kubernetes.namespaces:
                # Every namespace watched: every Service of the cluster is known.
                api = self.api
                self.cluster = ClusterAuthority(
                    config.mesh.cluster_domain, api.holds_service, lambda: api.ready
                )
        # The forwarder also looks up the targets of ExternalName Services.
        self.authority = MeshAuthority(self.loader.load(), chase=self.forwarder)
        self.resolver = ResolverChain([self.authority, *authorities, self.forwarder])
        factory_type = QueryLoggingFactory if config.log.queries else MeshDNSServerFactory
        listen = config.listen
        self.factory = factory_type(
            authorities=[self.authority, *authorities],
            clients=[self.forwarder],
            allow=listen.allow,
            tcp_idle_timeout=listen.tcp_idle_timeout,
            tcp_max_connections=tcp_connection_cap(
                listen.tcp_max_connections,
                raise_open_files_limit(),
                config.upstream.max_concurrent,
            ),
            tcp_max_queries=listen.tcp_max_queries,
            per_client_views=config.mesh.per_client_views,
            autopath=(
                Autopath.fromConfig(config, self.forwarder, self.cluster)
                if config.mesh.autopath
                else None
            ),
            cluster=self.cluster,
        )
        self.factory.noisy = False
        router = self.factory.views
        if router is not None:
            # Every view swaps with the default one, in the same reactor turn.
            if self.loader.views is not None:
                router.update(self.loader.views)
            self.loader.observers.append(router.follow)
        self._listen(reactor)
        self.reloader = Reloader(self.loader, self.authority, self.reloads, reactor)
        self.watcher = TableWatcher.forConfig(config, self.reloader, reactor, initial=before)
        self.watcher.setServiceParent(self)
        if self.api is not None:
            self.api.rebuild = lambda: self._rebuild(entries_only=False)
            self.api.rebuild_entries = lambda: self._rebuild(entries_only=True)
            self.api.serve = self._serve
            self.api.serve_views = self._serve_views
            self.api.setServiceParent(self)
        if config.admin.port:
            AdminService(self.reported(), config.admin, reactor).setServiceParent(self)

    def _api_source(self, reactor) -> ApiSource:
        """
        The Kubernetes API source, fed to every load: its documents go into
        each whole build, and it patches Service, EndpointSlice (and, for
        per-client views, Pod) changes into the serving table or views in
        between.
        """
        config = self.config
        api = ApiSource(
            config.kubernetes,
            namespace=config.mesh.namespace,
            cluster_domain=config.mesh.cluster_domain,
            pods=config.mesh.per_client_views,
            reactor=reactor,
        )
        self.loader.api = api.snapshot
        self.loader.live = True
        self.loader.swap_entries = api.swap_entries
        self.loader.observers.append(api.table_loaded)
        return api

    def _rebuild(self, entries_only: bool) -> None:
        """A build for the API source's changes, through the watcher, the one owner of reloads."""
        self.loader.want(entries_only)
        self.watcher.check(force=True)

    def _serve(self, table: NameTable) -> None:
        """A patched table serves (one assignment, as a reload's)."""
        self.authority.table = table

    def _serve_views(self, views: MeshViews) -> None:
        """Patched per-client views serve, all in this reactor turn."""
        router = self.factory.views
        if router is not None:
            router.update(views)
        self.authority.table = views.default

    def reported(self) -> Reported:
        """What the admin endpoint and the metrics report on (they get nothing else)."""
        loader = self.loader
        listeners = self.vipListeners
        api = self.api
        return Reported(
            server=self.factory.stats,
            upstream=self.forwarder.stats,
            cache=self.forwarder.cache,
            reloads=self.reloads,
            table=lambda: self.authority.table,
            ready=lambda: (
                self.listening and self.authority.table is not None and (api is None or api.ready)
            ),
            problems=lambda: (
                loader.problems + (kubestatus.problems(api.problems) if api is not None else ())
            ),
            collisions=lambda: collisions(loader.view) if loader.view is not None else (),
            listener_plan=(lambda: listeners.plan) if listeners is not None else ListenerPlan,
            listener_stats=listeners.stats if listeners is not None else None,
            config_source=self.config.source,
            kubernetes=(
                (lambda: kubestatus.document(api.statuses.values(), api.held))
                if api is not None
                else None
            ),
            autopath=self.factory.autopath.stats if self.factory.autopath is not None else None,
            cluster=self.cluster.stats if self.cluster is not None else None,
        )

    def reload(self) -> bool:
        """
        Rebuild the table from the files and swap it in with one assignment;
        invalid documents are logged and left out (their last valid versions
        keep serving), and an unexpected failure keeps the current table.
        It goes through the watcher, the one owner of reloads (see
        L{TableWatcher.reloadNow}).

        @return: whether the new table is now serving.
        """
        return self.watcher.reloadNow()

    def startService(self) -> None:
        """
        Start every child, then say so: the DNS listeners are bound once
        this returns.

        @raise ListenError: if a DNS listener cannot be opened.
        """
        super().startService()
        self.listening = True
        _log.info(
            "meshdns: {names} mesh names, {vips} VIP hosts, serving on {addresses} port {port}",
            names=len(self.authority.table),
            vips=len(self.authority.table.vips),
            addresses=", ".join(self.config.listen.addresses),
            port=self.config.listen.port,
        )

    def stopService(self):
        """
        Stop: at once, or, when another meshdns listens on the same port
        (a restart without a gap, L{handover}), once every query this
        process holds is answered, for at most C{upstream.timeout} and a
        second (a query held upstream is answered, or fails, by then).
        """
        self.listening = False
        listeners = [child._port for child in self if isinstance(child, BurstUDPServer | TCPServer)
                     and getattr(child, "_port", None) is not None]
        drain = Drain(self.factory, listeners, self._reactor, self.config.upstream.timeout + 1.0)
        d = drain.run()
        d.addCallback(lambda _: self.forwarder.close())
        d.addCallback(lambda _: super(MeshService, self).stopService())
        return d

    def _listen(self, reactor) -> None:
        """
        UDP and TCP on every listen address, all on the one port and
        factory; each UDP port has a protocol of its own (it holds its
        transport).
        """
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self._reactor = reactor
        port = self.config.listen.port
        for address in self.config.listen.addresses:
            udp = BurstUDPServer(port, MeshDNSDatagramProtocol(self.factory), interface=address)
            udp.reactor = reactor
            udp.setServiceParent(self)
            tcp = TCPServer(port, self.factory, backlog=TCP_BACKLOG, interface=address)
            tcp.reactor = reactor
            tcp.setServiceParent(self)
