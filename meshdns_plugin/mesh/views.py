# -*- test-case-name: tests.unit.mesh.test_views -*-
"""
Per-client views (node-local mode): one name table per namespace that has
clients, each answering as a proxy in that namespace would, all built from
one load and sharing their host records.

Most of what a proxy sees does not depend on its namespace: a Service or a
ServiceEntry exported everywhere, with no Sidecar in the way, answers alike
in every view. So one I{base} table is built for a namespace that owns
nothing and that no C{exportTo} names, and a namespace's view is that base
plus an overlay of its own names: the short names of its Services (and of
their pods), and its search suffix C{<ns>.svc.<cluster_domain>}, the first
search domain of a pod in C{<ns>}.

A namespace whose view differs from the base in more than that is built
whole instead, from its own L{MeshView}: a Sidecar scopes it (its own, or a
root-namespace Sidecar naming C{.}), an entry is exported to it by name or
to its owner only, it defines a ServiceEntry host that another namespace
defines too (its own wins there), or one of its short names is also a name
of the base. Whole views are exact by construction; the overlay ones are
exact because they are used only where nothing else differs (a test
compares both ways for every namespace).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from meshdns_plugin.mesh.allocator import Allocation
from meshdns_plugin.mesh.clients import ClientMap
from meshdns_plugin.mesh.model import EndpointSlice, Entries, Service, ServiceEntry
from meshdns_plugin.mesh.scope import ROOT_NAMESPACE, applicable_sidecar
from meshdns_plugin.mesh.table import NameTable, build_table, overlay_table
from meshdns_plugin.mesh.view import MeshView, mesh_view, vip_hosts

#: The namespace the base table is built for: not a valid namespace name,
#: so it owns nothing and no C{exportTo} lists it.
NEUTRAL = "-"


@dataclass(frozen=True)
class MeshViews:
    """
    The views of one load, swapped in together.

    @ivar clients: who is of which namespace.
    @ivar tables: namespace -> its table, for every namespace that has
        clients and the default one.
    @ivar whole: the namespaces whose table was built whole rather than
        over the base (for reports and tests).
    @ivar base: the table the other views are layered over.
    """

    clients: ClientMap
    tables: Mapping[str, NameTable]
    whole: frozenset[str] = frozenset()
    base: NameTable | None = None

    @property
    def default(self) -> NameTable:
        """The table of C{mesh.namespace}: a client that matches nothing gets it."""
        return self.tables[self.clients.default]


def search_suffix(namespace: str, cluster_domain: str) -> str:
    """The first search domain of a pod in C{namespace}, as kubelet writes it."""
    return f"{namespace}.svc.{cluster_domain}"


def _universal(export_to: tuple[str, ...]) -> bool:
    return not export_to or "*" in export_to


def _exported_namespaces(owner: str, export_to: tuple[str, ...]) -> set[str]:
    """The namespaces a non-universal C{exportTo} shows a resource to."""
    found = {n for n in export_to if n not in (".", "~")}
    if "." in export_to:
        found.add(owner)
    return found


def views_built_whole(
    entries: Entries, namespaces: Iterable[str], root_namespace: str = ROOT_NAMESPACE
) -> set[str]:
    """
    Of C{namespaces}, those whose view cannot be the base plus their own
    short names because their visibility differs (see the module
    docstring); short-name clashes are found later, by L{build_views}.
    """
    wanted = set(namespaces)
    root = applicable_sidecar(entries.sidecars, NEUTRAL, root_namespace)
    if root is not None and any(h.startswith("./") for h in root.egress_hosts):
        return wanted
    found = {
        s.namespace for s in entries.sidecars if not s.selects_workloads and s.namespace in wanted
    }
    resources: Iterable[ServiceEntry | Service] = (*entries.service_entries, *entries.services)
    for resource in resources:
        if not _universal(resource.export_to):
            found |= _exported_namespaces(resource.namespace, resource.export_to) & wanted
    owners: dict[str, set[str]] = {}
    for entry in entries.service_entries:
        for host in entry.hosts:
            owners.setdefault(host, set()).add(entry.namespace)
    for hosts_namespaces in owners.values():
        if len(hosts_namespaces) > 1:
            found |= hosts_namespaces & wanted
    return found


def view_vip_hosts(
    entries: Entries,
    whole: Iterable[str],
    cluster_domain: str = "cluster.local",
    root_namespace: str = ROOT_NAMESPACE,
) -> set[str]:
    """
    The hosts the allocator places when every view answers: the base's,
    and those of each view built whole (the others see the base's hosts).
    """
    found = vip_hosts(entries, NEUTRAL, cluster_domain, root_namespace)
    for namespace in whole:
        found |= vip_hosts(entries, namespace, cluster_domain, root_namespace)
    return found


def build_views(
    entries: Entries,
    allocation: Allocation,
    clients: ClientMap,
    *,
    auto_allocate: bool,
    cluster_domain: str,
    ttl: int,
    whole: Iterable[str],
    default_view: MeshView | None = None,
    root_namespace: str = ROOT_NAMESPACE,
) -> MeshViews:
    """
    Build every view of one load (DESIGN.md, "Views per client").

    @param whole: the namespaces to build whole (L{views_built_whole}).
    @param default_view: the L{MeshView} of C{clients.default}, when the
        caller has it already (the loader computes it for the listeners).
    """

    def view_of(namespace: str) -> MeshView:
        if default_view is not None and namespace == default_view.namespace:
            return default_view
        return mesh_view(
            entries,
            allocation,
            namespace=namespace,
            auto_allocate=auto_allocate,
            cluster_domain=cluster_domain,
            root_namespace=root_namespace,
        )

    def whole_table(namespace: str) -> NameTable:
        return build_table(
            view_of(namespace),
            cluster_domain=cluster_domain,
            search=(search_suffix(namespace, cluster_domain),),
            ttl=ttl,
        )

    namespaces = clients.namespaces()
    built_whole = set(whole) & namespaces
    base_view = view_of(NEUTRAL)
    base = build_table(base_view, cluster_domain=cluster_domain, search=(), ttl=ttl)
    own_services: dict[str, list[Service]] = {}
    for service in base_view.services:
        own_services.setdefault(service.namespace, []).append(service)
    own_slices: dict[str, list[EndpointSlice]] = {}
    for endpoint_slice in base_view.endpoint_slices:
        own_slices.setdefault(endpoint_slice.origin.namespace, []).append(endpoint_slice)

    tables: dict[str, NameTable] = {}
    for namespace in sorted(namespaces):
        if namespace in built_whole:
            tables[namespace] = whole_table(namespace)
            continue
        own = Entries(
            services=tuple(own_services.get(namespace, ())),
            endpoint_slices=tuple(own_slices.get(namespace, ())),
        )
        mini = build_table(
            MeshView(namespace, own, allocation, {}),
            cluster_domain=cluster_domain,
            search=(),
            ttl=ttl,
        )
        names = {k: v for k, v in mini.names.items() if k not in base.names}
        aliases = {k: v for k, v in mini.aliases.items() if k not in base.aliases}
        shared = [k for k in mini.names if k not in names] + [
            k for k in mini.aliases if k not in aliases
        ]
        clash = (
            any(
                mini.names.get(k) != base.names.get(k) or mini.aliases.get(k) != base.aliases.get(k)
                for k in shared
            )
            or any(k in base.aliases for k in names)
            or any(k in base.names for k in aliases)
        )
        if clash:
            built_whole.add(namespace)
            tables[namespace] = whole_table(namespace)
            continue
        suffix = search_suffix(namespace, cluster_domain).encode()
        tables[namespace] = overlay_table(base, names, aliases, frozenset(), suffix)
    return MeshViews(clients, tables, frozenset(built_whole), base)
