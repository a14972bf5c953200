# -*- test-case-name: tests.unit.mesh.test_views -*-
"""
Whose query is it: the client address -> Kubernetes namespace map that
per-client views (node-local mode) pick a view with.

A node-local meshdns serves every pod of its node, and answers each as a
proxy in the pod's own namespace would. The namespace comes from, in order:
the EndpointSlice endpoints whose C{targetRef} is a Pod (the slice's
namespace), the Pod documents among the entries, then the static
C{mesh.client_namespaces} networks (the longest prefix wins), and else
C{mesh.namespace}. The map is built once per load, like the table.

It also says which clients autopath must leave alone: those whose Pod has
DNS settings of its own (L{meshdns_plugin.mesh.kinds.pod.own_dns}), whose
search list is not the one meshdns would walk for them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, field

from meshdns_plugin.mesh.model import Entries

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class ClientNetwork:
    """One C{mesh.client_namespaces} item: the clients in C{network} are of C{namespace}."""

    network: Network
    namespace: str


@dataclass(frozen=True)
class ClientMap:
    """
    Client address -> namespace.

    @ivar addresses: exact addresses (in C{ipaddress}'s canonical text, the
        form a socket reports a peer in) -> namespace.
    @ivar networks: the static networks, longest prefix first.
    @ivar default: the namespace of a client that matches nothing.
    @ivar own_dns: the exact addresses (as in C{addresses}) that a Pod with
        DNS settings of its own claims.
    """

    addresses: Mapping[str, str]
    networks: tuple[ClientNetwork, ...]
    default: str
    own_dns: Set[str] = field(default_factory=frozenset)

    def namespace_of(self, host: str) -> str:
        """
        The namespace of the client at C{host}, an address as the socket
        gave it (an IPv4-mapped IPv6 address or a scope suffix included).
        """
        found = self.addresses.get(host)
        if found is not None:
            return found
        address = _address(host)
        if address is None:
            return self.default
        found = self.addresses.get(str(address))
        if found is not None:
            return found
        for item in self.networks:
            if address in item.network:
                return item.namespace
        return self.default

    def has_own_dns(self, host: str) -> bool:
        """Whether the client at C{host} (as for L{namespace_of}) has DNS settings of its own."""
        if host in self.own_dns:
            return True
        address = _address(host)
        return address is not None and str(address) in self.own_dns

    def namespaces(self) -> set[str]:
        """Every namespace that has clients, the default one included."""
        return {*self.addresses.values(), *(n.namespace for n in self.networks), self.default}


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """C{host} as a socket reports a peer, as the address it is, or L{None}."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_map(entries: Entries, networks: Iterable[ClientNetwork], default: str) -> ClientMap:
    """
    The map of one load. An address that several sources name keeps the
    first source's namespace (EndpointSlices before Pods); within one
    source, the first namespace in name order, so that every replica fed
    the same files agrees. An address is of a client with its own DNS
    settings when any Pod that claims it has them: then its list is not
    certainly the one autopath would walk.
    """
    addresses: dict[str, str] = {}
    for sources in (
        ((s.origin.namespace, s.pod_addresses) for s in entries.endpoint_slices),
        ((p.namespace, p.addresses) for p in entries.pods),
    ):
        found: dict[str, str] = {}
        for namespace, owned in sources:
            for address in owned:
                if address not in found or namespace < found[address]:
                    found[address] = namespace
        for address, namespace in found.items():
            addresses.setdefault(address, namespace)
    ordered = sorted(networks, key=lambda n: -n.network.prefixlen)
    own_dns = {a for p in entries.pods if p.own_dns for a in p.addresses}
    return ClientMap(addresses, tuple(ordered), default, own_dns)
