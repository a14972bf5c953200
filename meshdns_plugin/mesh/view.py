# -*- test-case-name: tests.unit.mesh.test_view -*-
"""
The mesh view: one proxy's mesh, computed once per load.

The name table, the VIP listeners and the C{meshdns} commands all read one
L{MeshView}, so they agree on which entries are seen and which address each
host has; nobody filters visibility or picks addresses again.

A load is two steps because VIPs come in between: L{vip_hosts} and
L{claimed_addresses} tell the allocator what to place and what it must never
hand out, then L{mesh_view} takes the allocation.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from meshdns_plugin.mesh.allocator import Allocation
from meshdns_plugin.mesh.model import EndpointSlice, Entries, Service, ServiceEntry
from meshdns_plugin.mesh.scope import ROOT_NAMESPACE, scoped

#: Where a ServiceEntry host's addresses come from, in order of preference.
EXPLICIT, STATUS, VIP = "explicit", "status", "vip"


@dataclass(frozen=True)
class HostAddresses:
    """
    What one ServiceEntry host answers with.

    @ivar kind: L{EXPLICIT} (C{spec.addresses}), L{STATUS} (Istio's
        allocator's C{status.addresses}) or L{VIP} (meshdns's own
        allocation).
    @ivar sources: the entries that define the host, the chosen one first.
    """

    host: str
    addresses: tuple[str, ...]
    kind: str
    sources: tuple[str, ...]

    @property
    def vip(self) -> bool:
        return self.kind == VIP


@dataclass(frozen=True)
class Collision:
    """
    Two things claim what only one can have: an address answered for two
    hosts, or one listener (address and port) for two hosts.

    @ivar port: L{None} for an address collision.
    """

    address: str
    port: int | None
    first: str
    second: str

    def __str__(self) -> str:
        what = f"{self.address} port {self.port}" if self.port is not None else self.address
        return f"collision: {what} is claimed by {self.first} and by {self.second}"


@dataclass(frozen=True)
class MeshView:
    """
    The mesh as a proxy in C{namespace} sees it.

    @ivar entries: the visible entries (L{scoped}): ServiceEntries with only
        the hosts the proxy knows, visible Services, every EndpointSlice.
    @ivar hosts: ServiceEntry host -> its addresses; a host with none (a
        wildcard without addresses, an ineligible entry) is absent.
    @ivar collisions: addresses answered for more than one host.
    @ivar notes: what deserves a log line (Services without a known address).
    """

    namespace: str
    entries: Entries
    allocation: Allocation
    hosts: dict[str, HostAddresses]
    collisions: tuple[Collision, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def service_entries(self) -> tuple[ServiceEntry, ...]:
        return self.entries.service_entries

    @property
    def services(self) -> tuple[Service, ...]:
        return self.entries.services

    @property
    def endpoint_slices(self) -> tuple[EndpointSlice, ...]:
        return self.entries.endpoint_slices

    def addresses(self, host: str) -> tuple[str, ...]:
        """The addresses C{host} answers with (empty: none)."""
        found = self.hosts.get(host)
        return found.addresses if found is not None else ()


def _eligible(entry: ServiceEntry, host: str) -> bool:
    """
    Whether meshdns gives C{host} of C{entry} a VIP: an eligible entry
    (L{ServiceEntry.auto_allocatable}), a host without status addresses, and
    not a wildcard (full or partial) unless the entry's resolution is
    C{DYNAMIC_DNS} (as Istio's allocator decides).
    """
    if not entry.auto_allocatable or entry.assigned(host):
        return False
    return not host.startswith("*") or entry.resolution == "DYNAMIC_DNS"


def vip_hosts(
    entries: Entries,
    namespace: str,
    cluster_domain: str = "cluster.local",
    root_namespace: str = ROOT_NAMESPACE,
) -> set[str]:
    """
    The hosts the allocator places: eligible hosts of visible entries,
    except those another visible entry gives addresses of its own (explicit
    or status), which would never answer with a VIP.
    """
    visible = scoped(entries, namespace, cluster_domain, root_namespace).service_entries
    claimed = {h for e in visible for h in e.hosts if e.addresses or e.assigned(h)}
    return {h for e in visible for h in e.hosts if _eligible(e, h) and h not in claimed}


def claimed_addresses(entries: Entries) -> set[str]:
    """
    Every address any ServiceEntry claims, visible or not, explicitly or in
    its status: the allocator never hands one of them to another host.
    """
    return {
        address
        for entry in entries.service_entries
        for address in (
            *entry.addresses,
            *(a for values in entry.status_addresses.values() for a in values),
        )
    }


def _choose(
    entry: ServiceEntry, host: str, allocation: Allocation, auto_allocate: bool
) -> tuple[str, tuple[str, ...]] | None:
    """(kind, addresses) for one entry's host, or L{None} if it has none."""
    if entry.addresses:
        return EXPLICIT, entry.addresses
    if entry.assigned(host):
        return STATUS, entry.assigned(host)
    if auto_allocate and _eligible(entry, host) and host in allocation.vips:
        vips = allocation.vips[host]
        found = tuple(a for a in (vips.ipv4, vips.ipv6) if a is not None)
        return (VIP, found) if found else None
    return None


_PREFERENCE = {EXPLICIT: 0, STATUS: 1, VIP: 2}


def _host_addresses(
    entries: Iterable[ServiceEntry], allocation: Allocation, auto_allocate: bool
) -> dict[str, HostAddresses]:
    """
    Each host's addresses: of its entries (one namespace's, after L{scoped}),
    those of the most preferred kind, the union where several entries give
    that kind; the other entries are still listed as sources.
    """
    chosen: dict[str, tuple[str, list[str], list[str]]] = {}
    sources: dict[str, list[str]] = {}
    for entry in entries:
        for host in entry.hosts:
            sources.setdefault(host, []).append(str(entry.origin))
            found = _choose(entry, host, allocation, auto_allocate)
            if found is None:
                continue
            kind, addresses = found
            current = chosen.get(host)
            if current is None or _PREFERENCE[kind] < _PREFERENCE[current[0]]:
                chosen[host] = (kind, list(addresses), [str(entry.origin)])
            elif kind == current[0]:
                current[1].extend(a for a in addresses if a not in current[1])
                current[2].append(str(entry.origin))
    result = {}
    for host, (kind, addresses, first) in chosen.items():
        others = [s for s in dict.fromkeys(sources[host]) if s not in first]
        result[host] = HostAddresses(host, tuple(addresses), kind, (*first, *others))
    return result


def _collisions(hosts: dict[str, HostAddresses]) -> tuple[Collision, ...]:
    """
    Every address that two hosts answer with (explicit or status; VIPs
    never collide, the allocator sees to that), naming both entries.
    """
    owner: dict[str, HostAddresses] = {}
    found = []
    for host in sorted(hosts):
        records = hosts[host]
        if records.kind not in (EXPLICIT, STATUS):
            continue
        for address in records.addresses:
            first = owner.setdefault(address, records)
            if first is not records and first.sources[0] != records.sources[0]:
                found.append(
                    Collision(
                        address,
                        None,
                        f"{first.host} ({first.sources[0]})",
                        f"{records.host} ({records.sources[0]})",
                    )
                )
    return tuple(found)


def mesh_view(
    entries: Entries,
    allocation: Allocation,
    *,
    namespace: str,
    auto_allocate: bool,
    cluster_domain: str = "cluster.local",
    root_namespace: str = ROOT_NAMESPACE,
) -> MeshView:
    """
    The view of a proxy in C{namespace} (DESIGN.md, "the mesh view").

    @param allocation: the VIPs placed for L{vip_hosts}.
    @param auto_allocate: C{mesh.auto_allocate}: whether VIPs are answered.
    """
    visible = scoped(entries, namespace, cluster_domain, root_namespace)
    hosts = _host_addresses(visible.service_entries, allocation, auto_allocate)
    notes = tuple(
        f"{s.origin.file}: document {s.origin.document}: {s.origin} has no clusterIP in its "
        "document (the API server assigns one): not answered here, left to the upstream"
        for s in visible.services
        if s.unassigned
    )
    return MeshView(namespace, visible, allocation, hosts, _collisions(hosts), notes)
