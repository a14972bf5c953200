# -*- test-case-name: tests.unit.mesh.test_allocator -*-
"""
Virtual IP allocation for ServiceEntries without addresses.

Istio hands out VIPs in arrival order, so two proxies fed the same entries in a
different order disagree, and adding one entry can move another's address.
meshdns is stronger on purpose:
  - deterministic: a host's first choice is a hash of its name into the range,
    and hosts are placed in sorted order, so replicas agree without talking;
  - stable: a host that already has a VIP (from the previous table, or from
    the state file after a restart) keeps it while it exists;
  - an address that any entry claims (explicitly, or in the status Istio's
    own allocator wrote) is never handed out;
  - collisions probe to the next free address; C{.0} and C{.255} style
    addresses and the range's own network and broadcast addresses are never
    handed out; exhaustion is reported per host, never a duplicate.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import socket
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

STATE_VERSION = 1


@dataclass(frozen=True)
class Vips:
    """
    The VIPs of one host; L{None} where its family's range is exhausted.
    """

    ipv4: str | None
    ipv6: str | None


@dataclass(frozen=True)
class Allocation:
    """
    The result of one allocation run.

    @ivar vips: host -> its VIPs, for every host asked about.
    @ivar problems: one message per host that did not fit in a range.
    """

    vips: Mapping[str, Vips]
    problems: tuple[str, ...] = ()

    def as_state(self) -> dict[str, dict[str, str | None]]:
        """The JSON-able form written to the state file."""
        return {h: {"ipv4": v.ipv4, "ipv6": v.ipv6} for h, v in sorted(self.vips.items())}


class StateError(Exception):
    """The state file cannot be read; C{str()} says which and why."""


def _usable(network: Network, offset: int) -> bool:
    """
    Whether the address at C{offset} may be handed out: not the range's first
    or last address, and for IPv4 no address ending in C{.0} or C{.255}, which
    some clients and middleboxes mistake for network or broadcast addresses.
    """
    if offset == 0 or offset == network.num_addresses - 1:
        return False
    if network.version == 4:
        last_octet = (int(network.network_address) + offset) & 0xFF
        return last_octet not in (0, 255)
    return True


def _capacity(network: Network) -> int:
    """
    How many usable addresses C{network} has, by arithmetic (counting them one
    by one would stall start-up for a large range such as an IPv4 /8).
    """
    if network.version == 4 and network.prefixlen <= 24:
        # Every /24 block loses its .0 and .255, which include the range's
        # own first and last addresses.
        return network.num_addresses // 256 * 254
    # Inside one /24 (or in IPv6) only the range's first and last are unusable.
    return max(network.num_addresses - 2, 0)


def _first_choice(host: str, network: Network) -> int:
    digest = hashlib.sha256(host.encode("utf-8")).digest()
    return int.from_bytes(digest[:16], "big") % network.num_addresses


class _Range:
    """The addresses of one family already taken during one allocation run."""

    def __init__(self, network: Network) -> None:
        self.network = network
        self.capacity = _capacity(network)
        self.used: set[int] = set()
        self._first = int(network.network_address)
        self._size = network.num_addresses
        self._family = socket.AF_INET6 if network.version == 6 else socket.AF_INET

    def _offset(self, address: str) -> int | None:
        """
        Where C{address} sits in the range, or L{None} if it is not in it (or
        not an address). C{inet_pton}, not L{ipaddress}: a load may check
        every explicit address of 100k entries.
        """
        try:
            packed = socket.inet_pton(self._family, address)
        except OSError:
            return None
        offset = int.from_bytes(packed) - self._first
        return offset if 0 <= offset < self._size else None

    def keep(self, address: str | None) -> str | None:
        """Reserve a previous assignment if it is still valid and free."""
        if address is None:
            return None
        offset = self._offset(address)
        if offset is None or offset in self.used or not _usable(self.network, offset):
            return None
        self.used.add(offset)
        # As ipaddress writes it: what the state file and the table hold.
        text = socket.inet_ntop(self._family, socket.inet_pton(self._family, address))
        return text if text == address else str(ipaddress.ip_address(address))

    def reserve(self, address: str) -> None:
        """Take an address that is someone else's, if it is in the range."""
        offset = self._offset(address)
        if offset is not None and offset not in self.used:
            self.used.add(offset)
            if _usable(self.network, offset):
                self.capacity -= 1

    def place(self, host: str) -> str | None:
        """Reserve the first free usable address from the host's hash onwards."""
        if len(self.used) >= self.capacity:
            return None
        size = self.network.num_addresses
        offset = _first_choice(host, self.network)
        # Bounded: at most len(used) + (unusable addresses met) probes, since
        # there is at least one free usable address.
        while offset in self.used or not _usable(self.network, offset):
            offset = (offset + 1) % size
        self.used.add(offset)
        return str(self.network.network_address + offset)


def allocate(
    hosts: Iterable[str],
    ipv4_range: ipaddress.IPv4Network,
    ipv6_range: ipaddress.IPv6Network,
    previous: Mapping[str, Vips] | None = None,
    reserved: Iterable[str] = (),
) -> Allocation:
    """
    Give every host one VIP of each family.

    @param hosts: the eligible host names (lowercase, no trailing dot).
    @param previous: earlier assignments to keep where still valid.
    @param reserved: addresses entries claim: never handed out, and a
        previous assignment that became one of them moves.
    """
    previous = previous or {}
    wanted = sorted(set(hosts))
    v4, v6 = _Range(ipv4_range), _Range(ipv6_range)
    for address in reserved:
        v4.reserve(address)
        v6.reserve(address)
    kept: dict[str, tuple[str | None, str | None]] = {}
    for host in wanted:
        old = previous.get(host)
        if old is not None:
            kept[host] = (v4.keep(old.ipv4), v6.keep(old.ipv6))
    vips: dict[str, Vips] = {}
    problems = []
    for host in wanted:
        ipv4, ipv6 = kept.get(host, (None, None))
        ipv4 = ipv4 or v4.place(host)
        ipv6 = ipv6 or v6.place(host)
        for family, address, network in (("IPv4", ipv4, ipv4_range), ("IPv6", ipv6, ipv6_range)):
            if address is None:
                problems.append(f"{host}: no {family} VIP left in {network}")
        vips[host] = Vips(ipv4, ipv6)
    return Allocation(vips, tuple(problems))


def load_state(path: str) -> dict[str, Vips]:
    """
    Read a state file; a missing file is an empty state.

    @raise StateError: if the file exists but is not a valid state.
    """
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise StateError(f"{path}: cannot read VIP state: {e}") from None
    hosts = raw.get("hosts") if isinstance(raw, dict) else None
    if not isinstance(hosts, dict):
        raise StateError(f"{path}: not a meshdns VIP state file")
    return {
        str(host): Vips(entry.get("ipv4"), entry.get("ipv6"))
        for host, entry in hosts.items()
        if isinstance(entry, dict)
    }


def save_state(path: str, allocation: Allocation) -> None:
    """
    Write the state file atomically (a crash never leaves half a file).

    @raise OSError: if it cannot be written.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=".meshdns-state-", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"version": STATE_VERSION, "hosts": allocation.as_state()}, f, indent=1)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
