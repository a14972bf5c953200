# -*- test-case-name: tests.unit.mesh.test_liveviews -*-
"""
Changes to Services, EndpointSlices and Pods applied to the per-client
views of a load (node-local mode), at a cost that grows with what changed.

The views of one load are a base table (what every view answers alike),
overlays with each namespace's own short names over it, and a few views
built whole (L{meshdns_plugin.mesh.views}). A Service change is applied to
the base and to each whole view with L{TablePatcher} (the overlay views see
the base's mappings as they change), and to the overlay of the Service's
own namespace, the only one where its short names exist. An EndpointSlice or
Pod change can also move a client address to another namespace, and a Pod
change can give an address DNS settings of its own or take them away: the
client map is changed in place, by the same rules as L{client_map}.

What would make a view of another shape (a Service with a non-universal
C{exportTo}, which makes namespaces whole; a client of a namespace that has
no view yet; a short name that collides with a name of the base) is left to
a whole build: L{ViewsPatcher.apply} says so.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from meshdns_plugin.mesh.livetable import ServiceIndex, ServiceKey, SliceKey, TablePatcher
from meshdns_plugin.mesh.model import EndpointSlice, Entries, Pod, Service
from meshdns_plugin.mesh.scope import ROOT_NAMESPACE
from meshdns_plugin.mesh.table import Layered, NameTable
from meshdns_plugin.mesh.views import NEUTRAL, MeshViews

#: A Pod's identity: namespace and name.
PodKey = tuple[str, str]


@dataclass(frozen=True)
class Patched:
    """
    @ivar views: the views to serve now (new table objects over the
        changed mappings, so that what was encoded for the old ones goes).
    @ivar rebuild: the change needs a whole build too (the views serve
        what could be applied meanwhile).
    """

    views: MeshViews
    rebuild: bool = False


def _universal(export_to: tuple[str, ...]) -> bool:
    return not export_to or "*" in export_to


class _Claims:
    """Who claims each client address: namespace -> how many documents."""

    def __init__(self) -> None:
        self.by_address: dict[str, Counter[str]] = {}

    def change(self, namespace: str, addresses: Iterable[str], delta: int) -> None:
        for address in addresses:
            counts = self.by_address.setdefault(address, Counter())
            counts[namespace] += delta
            if counts[namespace] <= 0:
                del counts[namespace]
            if not counts:
                del self.by_address[address]

    def first(self, address: str) -> str | None:
        counts = self.by_address.get(address)
        return min(counts) if counts else None


class ViewsPatcher:
    """Applies Service, EndpointSlice and Pod changes to the views of one load."""

    def __init__(
        self,
        views: MeshViews,
        entries: Entries,
        *,
        cluster_domain: str,
        root_namespace: str = ROOT_NAMESPACE,
    ) -> None:
        """
        @param views: the views built whole from C{entries} (with their base).
        """
        assert views.base is not None
        self.views = views
        self.index = ServiceIndex(
            entries, cluster_domain=cluster_domain, root_namespace=root_namespace
        )
        self._base = TablePatcher(views.base, self.index, namespace=NEUTRAL)
        self._whole = {
            namespace: TablePatcher(views.tables[namespace], self.index, namespace=namespace)
            for namespace in views.whole
            if namespace in views.tables
        }
        self._slice_claims = _Claims()
        for endpoint_slice in entries.endpoint_slices:
            self._slice_claims.change(
                endpoint_slice.origin.namespace, endpoint_slice.pod_addresses, 1
            )
        self._pods: dict[PodKey, Pod] = {}
        self._pod_claims = _Claims()
        #: Address -> how many Pods with DNS settings of their own claim it.
        self._own_dns: Counter[str] = Counter()
        for pod in entries.pods:
            self._pods[(pod.namespace, pod.origin.name)] = pod
            self._pod_claims.change(pod.namespace, pod.addresses, 1)
            if pod.own_dns:
                self._own_dns.update(pod.addresses)

    def apply(
        self,
        services: Mapping[ServiceKey, Service | None],
        slices: Mapping[SliceKey, EndpointSlice | None],
        pods: Mapping[PodKey, Pod | None],
    ) -> Patched | None:
        """
        Apply new versions (L{None}: deleted).

        @return: the views to serve, or L{None} when nothing was changed
            and only a whole build can apply this.
        """
        for key, service in services.items():
            old = self.index.services.get(key)
            if any(s is not None and not _universal(s.export_to) for s in (old, service)):
                return None
        addresses = self._moved_clients(slices, pods)
        if addresses is None:
            return None
        keys = self.index.touched(services, slices)
        patchers = [self._base, *self._whole.values()]
        before = [patcher.before(keys) for patcher in patchers]
        overlay_before = {key: self._overlay_names(key) for key in keys}
        own_dns_changed = self._take_clients(slices, pods)
        self.index.update(services, slices)
        for patcher, owned in zip(patchers, before, strict=True):
            patcher.after(owned)
        clash = False
        for key in keys:
            clash |= self._replace_overlay(key, overlay_before[key])
        clash |= any(self._in_an_overlay(name) for name in self._base.changed)
        clients = self.views.clients
        for address, namespace in addresses.items():
            if namespace is None:
                clients.addresses.pop(address, None)  # type: ignore[attr-defined]
            else:
                clients.addresses[address] = namespace  # type: ignore[index]
        own_dns = clients.own_dns
        for address in own_dns_changed:
            if self._own_dns[address] > 0:
                own_dns.add(address)  # type: ignore[attr-defined]
            else:
                del self._own_dns[address]
                own_dns.discard(address)  # type: ignore[attr-defined]
        self.views = MeshViews(
            clients,
            {namespace: _renewed(table) for namespace, table in self.views.tables.items()},
            self.views.whole,
            self._base.table,
        )
        for namespace, patcher in self._whole.items():
            patcher.table = self.views.tables[namespace]
        return Patched(self.views, rebuild=clash)

    # -- clients ---------------------------------------------------------------

    def _moved_clients(
        self,
        slices: Mapping[SliceKey, EndpointSlice | None],
        pods: Mapping[PodKey, Pod | None],
    ) -> dict[str, str | None] | None:
        """
        The client addresses whose namespace changes, with the new one
        (L{None}: no longer a client); L{None} when one would move to a
        namespace that has no view.
        """
        touched: set[str] = set()
        for key, endpoint_slice in slices.items():
            old = self.index.slices.get(key)
            for version in (old, endpoint_slice):
                if version is not None:
                    touched.update(version.pod_addresses)
        for key, pod in pods.items():
            for version in (self._pods.get(key), pod):
                if version is not None:
                    touched.update(version.addresses)
        if not touched:
            return {}
        slice_claims, pod_claims = _Claims(), _Claims()
        for address in touched:
            for claims, into in (
                (self._slice_claims, slice_claims),
                (self._pod_claims, pod_claims),
            ):
                if address in claims.by_address:
                    into.by_address[address] = Counter(claims.by_address[address])
        for key, endpoint_slice in slices.items():
            old = self.index.slices.get(key)
            if old is not None:
                slice_claims.change(old.origin.namespace, old.pod_addresses, -1)
            if endpoint_slice is not None:
                slice_claims.change(
                    endpoint_slice.origin.namespace, endpoint_slice.pod_addresses, 1
                )
        for key, pod in pods.items():
            old_pod = self._pods.get(key)
            if old_pod is not None:
                pod_claims.change(old_pod.namespace, old_pod.addresses, -1)
            if pod is not None:
                pod_claims.change(pod.namespace, pod.addresses, 1)
        moved: dict[str, str | None] = {}
        current = self.views.clients.addresses
        for address in touched:
            namespace = slice_claims.first(address) or pod_claims.first(address)
            if namespace != current.get(address):
                if namespace is not None and namespace not in self.views.tables:
                    return None
                moved[address] = namespace
        return moved

    def _take_clients(
        self,
        slices: Mapping[SliceKey, EndpointSlice | None],
        pods: Mapping[PodKey, Pod | None],
    ) -> set[str]:
        """
        Record the new slices' and Pods' claims (before the index takes the slices).

        @return: the addresses whose Pods' own DNS settings may have changed.
        """
        for key, endpoint_slice in slices.items():
            old = self.index.slices.get(key)
            if old is not None:
                self._slice_claims.change(old.origin.namespace, old.pod_addresses, -1)
            if endpoint_slice is not None:
                self._slice_claims.change(
                    endpoint_slice.origin.namespace, endpoint_slice.pod_addresses, 1
                )
        own_dns_changed: set[str] = set()
        for key, pod in pods.items():
            old_pod = self._pods.pop(key, None)
            if old_pod is not None:
                self._pod_claims.change(old_pod.namespace, old_pod.addresses, -1)
                if old_pod.own_dns:
                    self._own_dns.subtract(old_pod.addresses)
                    own_dns_changed.update(old_pod.addresses)
            if pod is not None:
                self._pods[key] = pod
                self._pod_claims.change(pod.namespace, pod.addresses, 1)
                if pod.own_dns:
                    self._own_dns.update(pod.addresses)
                    own_dns_changed.update(pod.addresses)
        return own_dns_changed

    # -- overlays ----------------------------------------------------------------

    def _overlay(self, namespace: str) -> tuple[dict, dict] | None:
        """The writable layers of C{namespace}'s overlay view, if it is one."""
        table = self.views.tables.get(namespace)
        if table is None or namespace in self._whole:
            return None
        names, aliases = table.names, table.aliases
        if not isinstance(names, Layered) or not isinstance(aliases, Layered):
            return None
        return names.overlay, aliases.overlay  # type: ignore[return-value]

    def _overlay_names(self, key: ServiceKey) -> NameTable | None:
        """A Service's names in its own namespace's view (only there are its short names)."""
        if self._overlay(key[0]) is None:
            return None
        return self.index.own_table(key, key[0], self._base.table.ttl)

    def _replace_overlay(self, key: ServiceKey, old: NameTable | None) -> bool:
        """
        Swap a Service's short names in its namespace's overlay.

        @return: whether a short name now collides with a different name of
            the base (only a whole build of that view is right then).
        """
        layers = self._overlay(key[0])
        if layers is None:
            return False
        names, aliases = layers
        base = self._base.table
        if old is not None:
            for name in (*old.names, *old.aliases):
                names.pop(name, None)
                aliases.pop(name, None)
        new = self._overlay_names(key)
        if new is None:
            return False
        clash = False
        for name, records in new.names.items():
            if name in base.names:
                clash |= base.names[name] != records
            else:
                clash |= name in base.aliases
                names[name] = records
        for name, alias in new.aliases.items():
            if name in base.aliases:
                clash |= base.aliases[name] != alias
            else:
                clash |= name in base.names
                aliases[name] = alias
        return clash

    def _in_an_overlay(self, name: bytes) -> bool:
        """Whether a name the base now has (or lost) is an overlay's own name too."""
        for namespace in self.views.tables:
            layers = self._overlay(namespace)
            if layers is not None and (name in layers[0] or name in layers[1]):
                return True
        return False


def _renewed(table: NameTable) -> NameTable:
    """The same table as a new object, so that each view's fast path drops its encodings."""
    return NameTable(
        table.names,
        table.wildcards,
        table.pointers,
        table.search_suffix,
        table.ttl,
        table.vips,
        table.aliases,
        table.entry_names,
    )
