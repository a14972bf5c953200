# -*- test-case-name: tests.unit.test_resolvconf -*-
"""
Reading C{resolv.conf(5)}: the upstream nameservers and the search list.

Twisted's own L{twisted.names.client.Resolver} parses only C{nameserver} lines
and re-reads the file on a timer; meshdns needs the C{search} line too (it
drives the search-suffix shortcut) and reads the file once per (re)load.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

DNS_PORT = 53


@dataclass(frozen=True)
class ResolvConf:
    """
    What meshdns uses from a resolv.conf file.

    @ivar nameservers: C{(ip, port)} pairs in file order.
    @ivar search: search domains in file order, lowercased, without trailing dots.
    """

    nameservers: tuple[tuple[str, int], ...] = ()
    search: tuple[str, ...] = ()


def parse_resolv_conf(text: str) -> ResolvConf:
    """
    Parse the text of a resolv.conf file.

    Unparseable nameserver addresses are skipped, as the C library does;
    addresses are normalised, keeping an IPv6 zone id. A later
    C{search} or C{domain} line replaces an earlier one, as in glibc.
    """
    nameservers: list[tuple[str, int]] = []
    search: tuple[str, ...] = ()
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) < 2:
            continue
        keyword, values = words[0], words[1:]
        if keyword == "nameserver":
            # Keep an IPv6 zone id (fe80::1%eth0): a link-local server cannot
            # be reached without it.
            try:
                address = str(ipaddress.ip_address(values[0]))
            except ValueError:
                continue
            nameservers.append((address, DNS_PORT))
        elif keyword in ("search", "domain"):
            search = tuple(v.rstrip(".").lower() for v in values if v.rstrip("."))
    return ResolvConf(tuple(nameservers), search)


def read_resolv_conf(path: str) -> ResolvConf:
    """
    Read and parse C{path}; a missing or unreadable file means no servers and
    no search list (the caller decides whether that is an error).
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return parse_resolv_conf(f.read())
    except OSError:
        return ResolvConf()
