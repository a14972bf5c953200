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
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

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
    """

    addresses: Mapping[str, str]
    networks: tuple[ClientNetwork, ...]
    default: str

    def namespace_of(self, host: str) -> str:
        """
        The namespace of the client at C{host}, an address as the socket
        gave it (an IPv4-mapped IPv6 address or a scope suffix included).
        """
        found = self.addresses.get(host)
        if found is not None:
            return found
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return self.default
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        found = self.addresses.get(str(address))
        if found is not None:
            return found
        for item in self.networks:
            if address in item.network:
                return item.namespace
        return self.default

    def namespaces(self) -> set[str]:
        """Every namespace that has clients, the default one included."""
        return {*self.addresses.values(), *(n.namespace for n in self.networks), self.default}


def client_map(entries: Entries, networks: Iterable[ClientNetwork], default: str) -> ClientMap:
    """
    The map of one load. An address that several sources name keeps the
    first source's namespace (EndpointSlices before Pods); within one
    source, the first namespace in name order, so that every replica fed
    the same files agrees.
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
    return ClientMap(addresses, tuple(ordered), default)
