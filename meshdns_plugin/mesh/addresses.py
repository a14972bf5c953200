# -*- test-case-name: tests.unit.mesh.test_table -*-
"""
IP addresses in the forms DNS uses: packed for A/AAAA rdata, reversed for
PTR owners. Shared by the name table and the fast path.
"""

from __future__ import annotations

import socket


def is_ipv6(address: str) -> bool:
    """Whether a normalised IP address string is IPv6 (every IPv6 form has a colon)."""
    return ":" in address


def family(address: str) -> socket.AddressFamily:
    """The socket family of a normalised IP address string."""
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def packed_address(address: str) -> bytes:
    """
    The 4 or 16 bytes of a normalised IP address string (as the kind readers and
    the allocator produce them); C{socket.inet_pton} is an order of magnitude
    cheaper than L{ipaddress}, which matters for tables of 100k hosts.
    """
    return socket.inet_pton(family(address), address)


def reverse_name(address: str) -> bytes:
    """The PTR owner of an address: C{b"1.0.240.240.in-addr.arpa"} (RFC 1035, RFC 3596)."""
    packed = packed_address(address)
    if len(packed) == 4:
        return b".".join(b"%d" % octet for octet in reversed(packed)) + b".in-addr.arpa"
    return b".".join(bytes([c]) for c in reversed(packed.hex().encode())) + b".ip6.arpa"
