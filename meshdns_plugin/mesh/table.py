# -*- test-case-name: tests.unit.mesh.test_table -*-
"""
The name table: an immutable snapshot of every name the mesh answers.

A table is built whole from the parsed entries and an allocation, then never
changed: a reload builds a new one beside it and swaps one reference, so a
query sees either the old table or the new one, never half of each.

Names are kept as lowercase ASCII C{bytes} without the trailing dot, the form
the wire path can produce from a packet with one C{bytes.lower()}.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Set
from dataclasses import dataclass
from typing import Any, TypeVar

from meshdns_plugin.mesh.addresses import packed_address, reverse_name
from meshdns_plugin.mesh.model import Service
from meshdns_plugin.mesh.view import MeshView


@dataclass(frozen=True, slots=True)
class HostRecords:
    """
    The addresses one name answers with.

    @ivar name: the owner name (lowercase, no trailing dot); for a wildcard,
        the wildcard itself (C{*.example.com}).
    @ivar sources: the entries the addresses came from, for C{/debug/table}.
    @ivar vip: whether the addresses are allocated VIPs.
    """

    name: bytes
    ipv4: tuple[str, ...]
    ipv6: tuple[str, ...]
    sources: tuple[str, ...]
    vip: bool = False

    def addresses(self, family: int) -> tuple[str, ...]:
        """The addresses of IP version C{family} (4 or 6)."""
        return self.ipv4 if family == 4 else self.ipv6


@dataclass(frozen=True, slots=True)
class Alias:
    """
    A name of a Kubernetes Service of type C{ExternalName}: answered with a
    CNAME to the Service's C{externalName}, never with addresses of its own.

    @ivar name: the alias (lowercase, no trailing dot).
    @ivar target: the C{externalName} (lowercase, no trailing dot).
    @ivar sources: the Services it came from, for C{/debug/table}.
    """

    name: bytes
    target: bytes
    sources: tuple[str, ...]


@dataclass(frozen=True)
class Resolution:
    """
    How a queried name is answered.

    @ivar owner: the name the address records are given for.
    @ivar alias: the queried name when it is answered through the search-suffix
        shortcut (C{alias CNAME owner}, then owner's records), else L{None}.
    """

    owner: bytes
    records: HostRecords
    alias: bytes | None = None


_V = TypeVar("_V")


class Layered(Mapping[bytes, _V]):
    """
    A read-only mapping: C{overlay} first, then C{base} less C{hidden}.

    What lets the per-client views of one load share their host records
    (L{overlay_table}): each view's own names are a few entries over the
    names that every view answers alike.
    """

    __slots__ = ("_overlay", "_base", "_hidden")

    def __init__(
        self,
        overlay: Mapping[bytes, _V],
        base: Mapping[bytes, _V],
        hidden: Set[bytes] = frozenset(),
    ) -> None:
        self._overlay = overlay
        self._base = base
        self._hidden = hidden

    def get(self, key: bytes, default: _V | None = None) -> _V | None:  # type: ignore[override]
        found = self._overlay.get(key)
        if found is not None:
            return found
        if key in self._hidden:
            return default
        return self._base.get(key, default)

    def __getitem__(self, key: bytes) -> _V:
        found = self.get(key)
        if found is None:
            raise KeyError(key)
        return found

    def __contains__(self, key: object) -> bool:
        return self.get(key) is not None  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[bytes]:
        yield from self._overlay
        overlay, hidden = self._overlay, self._hidden
        yield from (k for k in self._base if k not in overlay and k not in hidden)

    def __len__(self) -> int:
        # Counted when asked (reports only): a live table's layers change.
        shadowed = sum(1 for k in {*self._overlay, *self._hidden} if k in self._base)
        return len(self._overlay) + len(self._base) - shadowed

    @property
    def overlay(self) -> Mapping[bytes, _V]:
        """The layer on top, which a live view's own names are changed in."""
        return self._overlay


class NameTable:
    """
    An immutable index of mesh names; build one with L{build_table}, or a
    view of one with L{overlay_table}.
    """

    def __init__(
        self,
        names: Mapping[bytes, HostRecords],
        wildcards: Mapping[bytes, HostRecords],
        pointers: Mapping[bytes, tuple[bytes, ...]],
        search_suffix: bytes | None,
        ttl: int,
        vips: Mapping[str, tuple[str | None, str | None]],
        aliases: Mapping[bytes, Alias] | None = None,
        entry_names: Mapping[bytes, HostRecords] | None = None,
    ) -> None:
        """
        @param names: exact names -> records.
        @param wildcards: the suffix of each C{*.suffix} host -> records.
        @param pointers: reverse names (C{1.0.240.240.in-addr.arpa}) -> hosts.
        @param search_suffix: the first search domain, for the CNAME shortcut.
        @param ttl: the TTL of every answer.
        @param vips: host -> (IPv4 VIP, IPv6 VIP), for reporting.
        @param aliases: the names of ExternalName Services -> their aliases;
            none of them is in C{names}, so the wire fast path, which only
            knows C{names}, never answers them.
        """
        # Kept as given, not copied: the views of one load share the
        # mappings of their base table (L{overlay_table}).
        self.names = names
        self.wildcards = wildcards
        self.pointers = pointers
        self.search_suffix = search_suffix
        self.ttl = ttl
        self.vips = vips
        self.aliases = aliases if aliases is not None else {}
        self.entry_names = entry_names if entry_names is not None else {}

    def __len__(self) -> int:
        return len(self.names) + len(self.wildcards) + len(self.aliases)

    def _direct(self, name: bytes) -> Resolution | None:
        records = self.names.get(name)
        if records is not None:
            return Resolution(name, records)
        labels = name.split(b".")
        for start in range(1, len(labels)):
            records = self.wildcards.get(b".".join(labels[start:]))
            if records is not None:
                return Resolution(name, records)
        return None

    def resolve(self, name: bytes) -> Resolution | None:
        """
        Find how C{name} (lowercase, no trailing dot) is answered, or L{None}
        if the mesh does not know it.

        Order: the exact name; then the search-suffix shortcut (C{n.s1} for a
        known C{n}); then the most specific wildcard. An alias (L{cname})
        is L{None} here: it has no addresses of its own, whatever wildcard
        would match it.
        """
        records = self.names.get(name)
        if records is not None:
            return Resolution(name, records)
        if self.aliases and self.cname(name) is not None:
            return None
        suffix = self.search_suffix
        if suffix is not None and name.endswith(b"." + suffix):
            base = name[: -len(suffix) - 1]
            if not base.endswith(b"." + suffix):
                found = self._direct(base)
                if found is not None:
                    return Resolution(found.owner, found.records, alias=name)
        return self._direct(name)

    def cname(self, name: bytes) -> bytes | None:
        """
        Where the alias C{name} (lowercase, no trailing dot) points, or
        L{None} if it is not one: an ExternalName Service's name points at
        its C{externalName}; through the search-suffix shortcut, C{n.s1}
        points at the alias C{n}.
        """
        aliases = self.aliases
        if not aliases or name in self.names:
            return None
        alias = aliases.get(name)
        if alias is not None:
            return alias.target
        suffix = self.search_suffix
        if suffix is not None and name.endswith(b"." + suffix):
            base = name[: -len(suffix) - 1]
            if base in aliases and not base.endswith(b"." + suffix):
                return base
        return None

    def __iter__(self) -> Iterator[HostRecords]:
        """Every exact name, then every wildcard, in name order."""
        yield from (self.names[n] for n in sorted(self.names))
        yield from (self.wildcards[n] for n in sorted(self.wildcards))

    def iter_aliases(self) -> Iterator[Alias]:
        """Every alias, in name order (L{__iter__} gives the names with addresses)."""
        yield from (self.aliases[n] for n in sorted(self.aliases))


def _family_split(addresses: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    ipv4, ipv6 = [], []
    for address in addresses:
        (ipv6 if ":" in address else ipv4).append(address)
    return tuple(sorted(set(ipv4), key=packed_address)), tuple(
        sorted(set(ipv6), key=packed_address)
    )


class _Builder:
    """Accumulates addresses per name while a table is built."""

    def __init__(self) -> None:
        self.addresses: dict[str, list[str]] = {}
        self.sources: dict[str, list[str]] = {}
        self.vip: set[str] = set()

    def add(self, name: str, addresses: Iterable[str], source: str, vip: bool = False) -> None:
        self.addresses.setdefault(name, []).extend(addresses)
        if source not in self.sources.setdefault(name, []):
            self.sources[name].append(source)
        if vip:
            self.vip.add(name)

    def records(self) -> Iterator[HostRecords]:
        # The names of one Service (four, and as many per pod) have the same
        # addresses and sources: one tuple each, shared, not one per name.
        shared: dict[tuple[str, ...], tuple[str, ...]] = {}
        for name, addresses in self.addresses.items():
            ipv4, ipv6 = _family_split(addresses)
            sources = tuple(self.sources[name])
            yield HostRecords(
                name.encode("ascii", "replace"),
                shared.setdefault(ipv4, ipv4),
                shared.setdefault(ipv6, ipv6),
                shared.setdefault(sources, sources),
                vip=name in self.vip,
            )


def _service_names(service: Service, namespace: str, cluster_domain: str) -> list[str]:
    """
    The names a Service answers as, for a proxy in C{namespace}, its fully
    qualified name first: C{name.ns.svc.<cluster_domain>}, C{name.ns},
    C{name.ns.svc}, and the bare C{name} in the proxy's own namespace.
    """
    names = [
        f"{service.name}.{service.namespace}.svc.{cluster_domain}",
        f"{service.name}.{service.namespace}",
        f"{service.name}.{service.namespace}.svc",
    ]
    if service.namespace == namespace:
        names.append(service.name)
    return names


def build_table(
    view: MeshView,
    *,
    cluster_domain: str,
    search: tuple[str, ...],
    ttl: int,
) -> NameTable:
    """
    Build the table a proxy answers from (DESIGN.md, "Names the mesh
    answers"), from its L{MeshView}: the view says which entries are seen
    and which addresses each ServiceEntry host has; the table only names
    them.

    A name with no address of either family is left out, so that queries for
    it are forwarded rather than answered empty: a Service applied without a
    C{clusterIP} among them. A headless Service answers its ready endpoints,
    and each endpoint with a C{hostname} answers per pod under the Service's
    names. The names of an ExternalName Service are aliases of its
    C{externalName} instead (L{NameTable.cname}), whatever a ServiceEntry
    says of the same name.
    """
    namespace = view.namespace
    names = _Builder()
    for host, found in view.hosts.items():
        names.add(host, found.addresses, found.sources[0], found.vip)
        for source in found.sources[1:]:
            names.add(host, (), source)

    endpoints: dict[tuple[str, str], list[str]] = {}
    pods: dict[tuple[str, str], dict[str, list[str]]] = {}
    for endpoint_slice in view.endpoint_slices:
        key = (endpoint_slice.origin.namespace, endpoint_slice.service_name)
        endpoints.setdefault(key, []).extend(endpoint_slice.addresses)
        for hostname, addresses in endpoint_slice.hostnames.items():
            pods.setdefault(key, {}).setdefault(hostname, []).extend(addresses)
    services = _Builder()
    external: dict[str, tuple[str, list[str]]] = {}
    canonical: dict[str, str] = {}
    # A headless Service's own names answer its endpoints' addresses, whose
    # PTR names are the endpoints' own (below), never the Service's.
    unpointed: set[str] = set()
    for service in view.services:
        service_names = _service_names(service, namespace, cluster_domain)
        if service.external_name is not None:
            for name in service_names:
                target, sources = external.setdefault(name, (service.external_name, []))
                if target == service.external_name:
                    sources.append(str(service.origin))
            continue
        key = (service.namespace, service.name)
        source = str(service.origin)
        addresses = service.cluster_ips or (
            tuple(endpoints.get(key, ())) if service.headless else ()
        )
        for name in service_names:
            services.add(name, addresses, source)
            canonical.setdefault(name, service_names[0])
        if service.headless:
            unpointed.update(service_names)
            for hostname, pod_addresses in pods.get(key, {}).items():
                for name in service_names:
                    pod = f"{hostname}.{name}"
                    services.add(pod, pod_addresses, source)
                    canonical.setdefault(pod, f"{hostname}.{service_names[0]}")

    exact: dict[bytes, HostRecords] = {}
    wildcards: dict[bytes, HostRecords] = {}
    # A Kubernetes Service wins over a ServiceEntry for the same name.
    entry_names: dict[bytes, HostRecords] = {}
    for builder in (names, services):
        for records in builder.records():
            if not records.ipv4 and not records.ipv6:
                continue
            if records.name.startswith(b"*."):
                wildcards[records.name[2:]] = records
            elif records.name.startswith(b"*"):
                continue  # a partial wildcard (documents.is_partial_wildcard)
            else:
                exact[records.name] = records
        if builder is names:
            entry_names = dict(exact)
    # An ExternalName Service wins over a ServiceEntry too; a Service with
    # addresses of the same name (the same Service given twice) wins over it.
    aliases: dict[bytes, Alias] = {}
    for name, (target, sources) in external.items():
        if services.addresses.get(name):
            continue
        key = name.encode()
        exact.pop(key, None)
        aliases[key] = Alias(key, target.encode(), tuple(dict.fromkeys(sources)))

    # PTR names as kube-dns gives them (Kubernetes DNS specification 2.3.3
    # and 2.4.3): a cluster IP points at its Service's name, a ready
    # endpoint with a hostname at hostname.<service>.<ns>.svc.<zone> only.
    # An endpoint without one gets no pointer here: kube-dns answers it with
    # a name made of its address or pod, or not at all, by version and
    # configuration, so the question is forwarded.
    pointers: dict[bytes, set[bytes]] = {}
    for records in exact.values():
        # A Service's names point at its canonical name; a ServiceEntry
        # host (even one named like a Service without addresses) at itself.
        name = records.name.decode()
        if entry_names.get(records.name) is records:
            host = name
        elif name in unpointed:
            continue
        else:
            host = canonical.get(name, name)
        host_bytes = host.encode()
        for address in records.ipv4 + records.ipv6:
            reverse = reverse_name(address)
            pointers.setdefault(reverse, set()).add(host_bytes)

    return NameTable(
        exact,
        wildcards,
        {name: tuple(sorted(hosts)) for name, hosts in pointers.items()},
        search[0].encode() if search else None,
        ttl,
        {h: (v.ipv4, v.ipv6) for h, v in view.allocation.vips.items()},
        aliases,
        entry_names,
    )


def overlay_table(
    base: NameTable,
    names: Mapping[bytes, HostRecords],
    aliases: Mapping[bytes, Alias],
    hidden: Set[bytes],
    search_suffix: bytes | None,
) -> NameTable:
    """
    A table that answers as C{base} but for C{names} and C{aliases} (which
    win over base's entries of the same name) and C{hidden} (base's names
    and aliases it does not have), with a search suffix of its own. It
    shares base's records, wildcards and pointers: what makes one view per
    namespace cost its own names only (L{meshdns_plugin.mesh.views}).
    """
    return NameTable(
        Layered(names, base.names, {*hidden, *aliases}),
        base.wildcards,
        base.pointers,
        search_suffix,
        base.ttl,
        base.vips,
        Layered(aliases, base.aliases, {*hidden, *names}),
        base.entry_names,
    )


def table_document(table: NameTable) -> dict[str, Any]:
    """
    The table as JSON-able data, for C{/debug/table} and C{meshdns table
    --json}: every name with its addresses, whether they are VIPs and the
    entries they came from, then every alias (a name of an ExternalName
    Service) with its CNAME target and the Services it came from. Names under
    the search suffix are not listed one by one: each listed name C{n} also
    answers as C{n.<search_suffix>}.
    """
    return {
        "ttl": table.ttl,
        "search_suffix": table.search_suffix.decode() if table.search_suffix else None,
        "names": [
            {
                "name": records.name.decode(),
                "A": list(records.ipv4),
                "AAAA": list(records.ipv6),
                "vip": records.vip,
                "sources": list(records.sources),
            }
            for records in table
        ],
        "aliases": [
            {
                "name": alias.name.decode(),
                "CNAME": alias.target.decode(),
                "sources": list(alias.sources),
            }
            for alias in table.iter_aliases()
        ],
        "vips": {host: {"ipv4": v4, "ipv6": v6} for host, (v4, v6) in sorted(table.vips.items())},
    }
