# -*- test-case-name: tests.unit.dns.test_views -*-
"""
Serving per-client views: which view answers a client, and each view's own
authority, fast path and reply memo.

A view's encoded answers and memoised replies are of its table only, so
each namespace has a L{FastPath} of its own (with its L{ReplyMemo}), and a
L{MeshAuthority} of its own for the full Twisted Names path; all of them
share the server's statistics, the forwarder and its cache (an upstream
answer does not depend on who asked). A reload swaps every view's table in
the same reactor turn as the default one (L{ViewRouter.follow}, a loader
observer), so no query sees tables of two loads.

The router also says whether autopath may search for a client: not for one
whose Pod has DNS settings of its own (L{ClientMap.has_own_dns}), whose
search list is not the one autopath walks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from twisted.names.resolve import ResolverChain

from meshdns_plugin.dns.authority import MeshAuthority
from meshdns_plugin.dns.fastpath import FastPath
from meshdns_plugin.mesh.clients import ClientMap
from meshdns_plugin.mesh.loader import PreparedTable
from meshdns_plugin.mesh.views import MeshViews


@dataclass(frozen=True)
class ViewPath:
    """What answers the clients of one namespace."""

    authority: MeshAuthority
    fastpath: FastPath
    resolver: ResolverChain


class ViewRouter:
    """
    Picks the view of a query's source address: a dict lookup per query,
    the client map (and its network scan) once per address and load.

    @ivar paths: namespace -> its L{ViewPath}; a namespace that leaves the
        entries keeps its path until the next load has no client of it.
    """

    #: Bound of the memo of address -> view.
    MAX_CLIENTS = 65536

    def __init__(self, default: ViewPath, make: Callable[[MeshAuthority], ViewPath]) -> None:
        """
        @param default: the path of C{mesh.namespace}, whose authority is the
            one the reloader swaps tables into.
        @param make: builds the path of a new view around its authority.
        """
        self._default = default
        self._make = make
        self._clients = ClientMap({}, (), "")
        self.paths: dict[str, ViewPath] = {}
        self._memo: dict[str, tuple[ViewPath, bool]] = {}

    def update(self, views: MeshViews) -> None:
        """Serve C{views}: every view's table is replaced now."""
        chase = self._default.authority.chase
        paths = {}
        for namespace, table in views.tables.items():
            if namespace == views.clients.default:
                path = self._default
            else:
                path = self.paths.get(namespace) or self._make(MeshAuthority(table, chase=chase))
            path.authority.table = table
            paths[namespace] = path
        self.paths = paths
        self._clients = views.clients
        self._memo = {}

    def follow(self, prepared: PreparedTable) -> None:
        """A loader observer: serve the views of the load about to serve."""
        if prepared.views is not None:
            self.update(prepared.views)

    def path(self, host: str) -> ViewPath:
        """The view that answers the client at C{host} (as its socket reports it)."""
        return self.route(host)[0]

    def route(self, host: str) -> tuple[ViewPath, bool]:
        """
        The view that answers the client at C{host}, and whether its search
        list is the one autopath walks (its Pod has no DNS settings of its own).
        """
        found = self._memo.get(host)
        if found is None:
            clients = self._clients
            path = self.paths.get(clients.namespace_of(host), self._default)
            found = (path, not clients.has_own_dns(host))
            if len(self._memo) >= self.MAX_CLIENTS:
                self._memo.clear()
            self._memo[host] = found
        return found
