# -*- test-case-name: tests.test_service -*-
"""
The meshdns service tree: the resolvers, the DNS server factory, and the UDP
and TCP listeners under one L{MultiService}.

Twisted has no UDP endpoints, so UDP is an L{internet.UDPServer} and TCP a
L{StreamServerEndpointService}, side by side on the same address and port.
"""

from __future__ import annotations

import ipaddress
import time

from twisted.application import internet, service
from twisted.internet import endpoints
from twisted.logger import Logger
from twisted.names.resolve import ResolverChain

from meshdns_plugin.authority import MeshAuthority
from meshdns_plugin.config import Config
from meshdns_plugin.entries import EntriesError
from meshdns_plugin.reload import TableLoader
from meshdns_plugin.resolvconf import read_resolv_conf
from meshdns_plugin.server import MeshDNSDatagramProtocol, MeshDNSServerFactory
from meshdns_plugin.stats import ReloadStats
from meshdns_plugin.upstream import CachingForwarder

_log = Logger()


def upstream_servers(config: Config) -> tuple[tuple[str, int], ...]:
    """Configured servers, or else resolv.conf's nameservers."""
    if config.upstream.servers:
        return config.upstream.servers
    return read_resolv_conf(config.upstream.resolv_conf).nameservers


def makeCachingForwarder(config: Config, reactor=None) -> CachingForwarder:
    """The caching forwarder that C{config} describes."""
    servers = upstream_servers(config)
    if not servers:
        _log.warn(
            "No upstream servers (none configured, none in {path}): "
            "names outside the mesh get SERVFAIL",
            path=config.upstream.resolv_conf,
        )
    return CachingForwarder(
        servers, config.upstream.timeout, config.cache.max_entries, reactor=reactor
    )


class MeshService(service.MultiService):
    """
    meshdns as a Twisted service: DNS over UDP and TCP, answered by a
    L{ResolverChain} of the L{MeshAuthority} and the L{CachingForwarder}.

    @ivar authority: the mesh authority (its C{table} is the live snapshot).
    @ivar forwarder: the caching forwarder.
    @ivar loader: builds new tables from the configured files.
    @ivar reloads: reload counters.
    """

    def __init__(self, config: Config, reactor=None) -> None:
        """
        @raise EntriesError: if the entries are invalid at start-up (there is
            no previous table to keep serving).
        """
        super().__init__()
        self.config = config
        self.loader = TableLoader(config)
        self.reloads = ReloadStats(ok=1, last_time=time.time())
        self.authority = MeshAuthority(self.loader.load())
        self.forwarder = makeCachingForwarder(config, reactor)
        self.resolver = ResolverChain([self.authority, self.forwarder])
        self.factory = MeshDNSServerFactory(authorities=[self.authority], clients=[self.forwarder])
        self.factory.noisy = False
        _log.info(
            "meshdns: {names} mesh names, {vips} VIP hosts, serving on {address} port {port}",
            names=len(self.authority.table),
            vips=len(self.authority.table.vips),
            address=config.listen.address,
            port=config.listen.port,
        )
        self._listen(reactor)

    def reload(self) -> bool:
        """
        Rebuild the table from the files and swap it in with one assignment;
        if any entry is invalid, log every problem and keep the current table.

        @return: whether the new table is now serving.
        """
        started = time.monotonic()
        try:
            table = self.loader.load()
        except EntriesError as e:
            for problem in e.problems:
                _log.error("Reload rejected, keeping the current table: {problem}", problem=problem)
            self.reloads.failed += 1
            self.reloads.last_ok = False
            return False
        self.authority.table = table
        self.reloads.ok += 1
        self.reloads.last_ok = True
        self.reloads.last_time = time.time()
        _log.info(
            "Reloaded: {names} mesh names, {vips} VIP hosts in {seconds:.3f} s",
            names=len(table),
            vips=len(table.vips),
            seconds=time.monotonic() - started,
        )
        return True

    def stopService(self):
        self.forwarder.close()
        return super().stopService()

    def _listen(self, reactor) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        address, port = self.config.listen.address, self.config.listen.port
        udp = internet.UDPServer(port, MeshDNSDatagramProtocol(self.factory), interface=address)
        udp.setServiceParent(self)
        endpoint_type = (
            endpoints.TCP6ServerEndpoint
            if ipaddress.ip_address(address).version == 6
            else endpoints.TCP4ServerEndpoint
        )
        tcp = internet.StreamServerEndpointService(
            endpoint_type(reactor, port, interface=address), self.factory
        )
        tcp._raiseSynchronously = True
        tcp.setServiceParent(self)
