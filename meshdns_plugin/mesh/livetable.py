# -*- test-case-name: tests.unit.mesh.test_livetable -*-
"""
Changes to Services and EndpointSlices applied to a serving table, at a
cost that grows with what changed, not with the cluster.

At 20,000 Services a whole build takes seconds, and the Kubernetes API sends
changes many times a second, nearly all of them Services and EndpointSlices.
Those are also the easy ones to apply alone: every name a Service answers
(its four names, its pods' names, the aliases of an ExternalName Service) is
that Service's own, since Service names are DNS labels and namespaces
cannot contain dots; what it shares with the rest of the table is a
ServiceEntry host of the same name, which it shadows, and the PTR names of
its addresses. So a change rebuilds one Service's names with the same
L{build_table} that builds the whole table (from that Service and its
slices alone), takes its old names out and puts the new ones in, restoring a
ServiceEntry host it had shadowed and keeping the PTR names right. A test
checks against whole builds that the result is the same table.

ServiceEntries are the other way round: a load builds their names alone,
off the reactor thread, and L{TablePatcher.swap_entries} puts in those
whose answer changed, leaving every Service's names as they are. Per-client
views are patched by L{meshdns_plugin.mesh.liveviews} with the same
patchers. What changes what many names mean (a Sidecar) goes through a
whole build.

The patch changes the table's mappings in place and returns a new
L{NameTable} over them: the caller applies it in the reactor thread, between
two queries, so no query sees half a change, and the fast path, which keeps
what it encoded per table object, drops it for the new one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from meshdns_plugin.mesh.addresses import reverse_name
from meshdns_plugin.mesh.allocator import Allocation
from meshdns_plugin.mesh.model import EndpointSlice, Entries, Service, Sidecar
from meshdns_plugin.mesh.scope import ROOT_NAMESPACE, scoped
from meshdns_plugin.mesh.table import HostRecords, NameTable, build_table
from meshdns_plugin.mesh.view import MeshView

#: A Service's identity: namespace and name.
ServiceKey = tuple[str, str]
#: An EndpointSlice's identity: namespace and name.
SliceKey = tuple[str, str]

_NO_ALLOCATION = Allocation({})


class ServiceIndex:
    """
    The Services and EndpointSlices one load's tables were built from,
    kept up to date change by change; shared by the patchers of one load
    (one per table), so each holds the cluster once.
    """

    def __init__(
        self, entries: Entries, *, cluster_domain: str, root_namespace: str = ROOT_NAMESPACE
    ) -> None:
        self.services: dict[ServiceKey, Service] = {
            (s.namespace, s.name): s for s in entries.services
        }
        self.slices: dict[SliceKey, EndpointSlice] = {}
        # A Service's slices (nearly always one): a tuple each, not a dict,
        # which would cost four times the memory at 20,000 Services.
        self._by_service: dict[ServiceKey, tuple[SliceKey, ...]] = {}
        self._sidecars: tuple[Sidecar, ...] = entries.sidecars
        self._cluster_domain = cluster_domain
        self._root_namespace = root_namespace
        for endpoint_slice in entries.endpoint_slices:
            self._index_slice(endpoint_slice)

    def _index_slice(self, endpoint_slice: EndpointSlice) -> None:
        key = (endpoint_slice.origin.namespace, endpoint_slice.origin.name)
        self.slices[key] = endpoint_slice
        service = (endpoint_slice.origin.namespace, endpoint_slice.service_name)
        self._by_service[service] = (*self._by_service.get(service, ()), key)

    def _unindex_slice(self, key: SliceKey) -> None:
        old = self.slices.pop(key, None)
        if old is None:
            return
        service = (old.origin.namespace, old.service_name)
        group = tuple(k for k in self._by_service.get(service, ()) if k != key)
        if group:
            self._by_service[service] = group
        else:
            self._by_service.pop(service, None)

    def touched(
        self,
        services: Mapping[ServiceKey, Service | None],
        slices: Mapping[SliceKey, EndpointSlice | None],
    ) -> set[ServiceKey]:
        """The Services whose names the changes can change (before L{update})."""
        found: set[ServiceKey] = set(services)
        for key, endpoint_slice in slices.items():
            old = self.slices.get(key)
            if old is not None:
                found.add((old.origin.namespace, old.service_name))
            if endpoint_slice is not None:
                found.add((endpoint_slice.origin.namespace, endpoint_slice.service_name))
        return found

    def update(
        self,
        services: Mapping[ServiceKey, Service | None],
        slices: Mapping[SliceKey, EndpointSlice | None],
    ) -> None:
        """Take new versions (L{None}: deleted) of some Services and slices."""
        for key, service in services.items():
            if service is None:
                self.services.pop(key, None)
            else:
                self.services[key] = service
        for key, endpoint_slice in slices.items():
            self._unindex_slice(key)
            if endpoint_slice is not None:
                self._index_slice(endpoint_slice)

    def own_table(self, key: ServiceKey, namespace: str, ttl: int) -> NameTable | None:
        """
        The names of one Service alone, as the whole build of a proxy in
        C{namespace} gives them, or L{None} when it has none there.
        """
        service = self.services.get(key)
        if service is None:
            return None
        own = Entries(
            services=(service,),
            endpoint_slices=tuple(self.slices[k] for k in self._by_service.get(key, ())),
            sidecars=self._sidecars,
        )
        visible = scoped(own, namespace, self._cluster_domain, self._root_namespace)
        if not visible.services:
            return None
        return build_table(
            MeshView(namespace, visible, _NO_ALLOCATION, {}),
            cluster_domain=self._cluster_domain,
            search=(),
            ttl=ttl,
        )


#: One Service's names alone, before and after a change.
Owned = dict[ServiceKey, NameTable | None]


class TablePatcher:
    """
    Applies Service and EndpointSlice changes to one table of a load.

    @ivar table: the table as patched so far.
    @ivar index: what the table was built from, kept up to date.
    @ivar changed: the names and aliases the last change set or took out.
    """

    def __init__(self, table: NameTable, index: ServiceIndex, *, namespace: str) -> None:
        """
        @param table: the table built whole from the index's documents; its
            mappings are changed in place from now on.
        @param namespace: the proxy's namespace the table answers for.
        """
        self.table = table
        self.index = index
        self.changed: set[bytes] = set()
        self._namespace = namespace
        # The mappings are the table's own (build_table made them): writable.
        self._names: dict[bytes, HostRecords] = table.names  # type: ignore[assignment]
        self._aliases: dict[bytes, Any] = table.aliases  # type: ignore[assignment]
        self._pointers: dict[bytes, tuple[bytes, ...]] = table.pointers  # type: ignore[assignment]

    @classmethod
    def alone(
        cls,
        table: NameTable,
        entries: Entries,
        *,
        namespace: str,
        cluster_domain: str,
        root_namespace: str = ROOT_NAMESPACE,
    ) -> TablePatcher:
        """The patcher of a load's only table, with an index of its own."""
        index = ServiceIndex(entries, cluster_domain=cluster_domain, root_namespace=root_namespace)
        return cls(table, index, namespace=namespace)

    def apply(
        self,
        services: Mapping[ServiceKey, Service | None],
        slices: Mapping[SliceKey, EndpointSlice | None],
    ) -> NameTable:
        """
        Apply new versions (L{None}: deleted) of some Services and slices
        (for a patcher that is its index's only user).

        @return: the patched table, a new object over the same mappings.
        """
        before = self.before(self.index.touched(services, slices))
        self.index.update(services, slices)
        return self.after(before)

    def before(self, keys: set[ServiceKey]) -> Owned:
        """What the Services C{keys} answer now (call before the index changes)."""
        return {key: self.own(key) for key in keys}

    def own(self, key: ServiceKey) -> NameTable | None:
        return self.index.own_table(key, self._namespace, self.table.ttl)

    def after(self, before: Owned) -> NameTable:
        """
        Replace what the Services answered (L{before}) with what they answer
        now that the index has changed.

        @return: the patched table, a new object over the same mappings.
        """
        self.changed = set()
        for key, old in before.items():
            self._replace(old, self.own(key))
        table = self.table
        self.table = NameTable(
            self._names,
            table.wildcards,
            self._pointers,
            table.search_suffix,
            table.ttl,
            table.vips,
            self._aliases,
            table.entry_names,
        )
        return self.table

    def swap_entries(self, layer: NameTable) -> NameTable:
        """
        Put the ServiceEntries' names of a new load (C{layer}: a table built
        from its ServiceEntries alone) in place of the old ones, keeping
        every Service's name as it serves now: a Service still wins over a
        ServiceEntry of the same name, an ExternalName alias too.

        @return: the patched table, a new object over the same mappings.
        """
        table = self.table
        old, new = table.entry_names, layer.entry_names
        for name in old.keys() | new.keys():
            current = self._names.get(name)
            serving = current is not None and current is old.get(name)
            if (current is not None and not serving) or name in self._aliases:
                continue  # a Service's name
            records = new.get(name)
            if serving and records == current:
                # The same answer: the new object serves, no PTR name moves
                # (most of the names of a load, so its cost stays with what
                # changed).
                self._names[name] = records  # type: ignore[assignment]
                continue
            if serving:
                del self._names[name]
                self._unpoint(_pointers_of(name, current))
            if records is not None:
                self._set_entry_name(name, records)
        self.table = NameTable(
            self._names,
            layer.wildcards,
            self._pointers,
            table.search_suffix,
            table.ttl,
            layer.vips,
            self._aliases,
            new,
        )
        return self.table

    def _replace(self, old: NameTable | None, new: NameTable | None) -> None:
        """Take one Service's C{old} names out of the table, and put C{new} in."""
        entry_names = self.table.entry_names
        if old is not None:
            self._unpoint(old.pointers)
            kept = set() if new is None else {*new.names, *new.aliases}
            self.changed.update(old.names, old.aliases)
            for name in (*old.names, *old.aliases):
                self._names.pop(name, None)
                self._aliases.pop(name, None)
                if name not in kept and name in entry_names:
                    # The ServiceEntry host the Service shadowed answers again.
                    self._set_entry_name(name, entry_names[name])
        if new is None:
            return
        self.changed.update(new.names, new.aliases)
        for name, records in new.names.items():
            self._drop_entry_name(name)
            self._names[name] = records
        for name, alias in new.aliases.items():
            self._drop_entry_name(name)
            self._aliases[name] = alias
        self._point(new.pointers)

    def _set_entry_name(self, name: bytes, records: HostRecords) -> None:
        self._names[name] = records
        self._point(_pointers_of(name, records))

    def _drop_entry_name(self, name: bytes) -> None:
        """Take out a ServiceEntry host that a Service's name shadows now."""
        current = self._names.get(name)
        if current is not None and current is self.table.entry_names.get(name):
            del self._names[name]
            self._unpoint(_pointers_of(name, current))

    def _point(self, pointers: Mapping[bytes, Iterable[bytes]]) -> None:
        for reverse, hosts in pointers.items():
            current = self._pointers.get(reverse, ())
            self._pointers[reverse] = tuple(sorted({*current, *hosts}))

    def _unpoint(self, pointers: Mapping[bytes, Iterable[bytes]]) -> None:
        for reverse, hosts in pointers.items():
            remaining = set(self._pointers.get(reverse, ())) - set(hosts)
            if remaining:
                self._pointers[reverse] = tuple(sorted(remaining))
            else:
                self._pointers.pop(reverse, None)


def _pointers_of(name: bytes, records: HostRecords) -> dict[bytes, tuple[bytes, ...]]:
    """The PTR names of a ServiceEntry host's addresses, as L{build_table} makes them."""
    return {reverse_name(a): (name,) for a in (*records.ipv4, *records.ipv6)}
