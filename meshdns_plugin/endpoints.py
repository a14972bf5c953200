# -*- test-case-name: tests.unit.test_api -*-
"""
TCP endpoints for an address of either family: Twisted has one endpoint
class per family, and every listener and connection of meshdns (the DNS
server, the admin endpoint, the VIP relay) picks between them the same way.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import endpoints

from meshdns_plugin.mesh.addresses import is_ipv6


def tcp_server(reactor: Any, address: str, port: int) -> endpoints.TCP4ServerEndpoint:
    """A server endpoint listening on C{address} (IPv4 or IPv6) and C{port}."""
    kind = endpoints.TCP6ServerEndpoint if is_ipv6(address) else endpoints.TCP4ServerEndpoint
    return kind(reactor, port, interface=address)


def tcp_client(
    reactor: Any, address: str, port: int, timeout: float
) -> endpoints.TCP4ClientEndpoint:
    """A client endpoint connecting to C{address} (IPv4 or IPv6) and C{port}."""
    kind = endpoints.TCP6ClientEndpoint if is_ipv6(address) else endpoints.TCP4ClientEndpoint
    return kind(reactor, address, port, timeout=timeout)
