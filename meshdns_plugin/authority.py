# -*- test-case-name: tests.test_wire,tests.test_api -*-
"""
MeshAuthority: a Twisted Names resolver that answers from the current
L{NameTable}.

It is an ordinary L{IResolver} (a L{ResolverBase} with C{_lookup}), so it goes
into a L{ResolverChain} or a C{DNSServerFactory(authorities=[...])} beside any
other resolver. Names it does not know fail with L{DomainError} ("not mine, ask
the next resolver"); only A, AAAA (and PTR of mesh addresses) are answered here,
every other type of a mesh name goes on to the next resolver, as Istio does.
"""

from __future__ import annotations

import itertools

from twisted.internet import defer
from twisted.names import common, dns
from twisted.names.error import DomainError

from meshdns_plugin.table import NameTable, Resolution

_FAMILY = {dns.A: 4, dns.AAAA: 6}


class MeshAnswer(tuple):
    """
    C{(answers, authority, additional)} given authoritatively by the mesh.

    Stock Twisted sets AA only when an answer record is authoritative, so an
    empty answer (a known name without the asked family) would lose it; the
    server checks for this type to set AA on those too.
    """

    __slots__ = ()


def address_records(
    resolution: Resolution, family: int, ttl: int, rotation: int
) -> list[dns.RRHeader]:
    """
    The answer section for an A or AAAA question; owners are lowercased.

    @param rotation: how far to rotate several addresses, so that clients
        spread over them as with round-robin DNS.
    """
    answers = []
    owner = resolution.owner
    if resolution.alias is not None:
        answers.append(
            dns.RRHeader(
                resolution.alias,
                dns.CNAME,
                ttl=ttl,
                payload=dns.Record_CNAME(owner, ttl),
                auth=True,
            )
        )
    addresses = resolution.records.addresses(family)
    if addresses:
        start = rotation % len(addresses)
        ordered = addresses[start:] + addresses[:start]
        record = dns.Record_A if family == 4 else dns.Record_AAAA
        answers.extend(
            dns.RRHeader(owner, record.TYPE, ttl=ttl, payload=record(a, ttl), auth=True)
            for a in ordered
        )
    return answers


class MeshAuthority(common.ResolverBase):
    """
    Answers mesh names from a L{NameTable} snapshot.

    @ivar table: the current snapshot. Replacing it is the whole of a reload:
        one assignment, so a lookup sees the old table or the new one.
    """

    def __init__(self, table: NameTable) -> None:
        common.ResolverBase.__init__(self)
        self.table = table
        self._rotation = itertools.count()

    def _lookup(self, name: bytes, cls: int, type: int, timeout: object) -> defer.Deferred:
        if cls != dns.IN:
            return defer.fail(DomainError(name))
        table = self.table
        key = name.lower().rstrip(b".")
        family = _FAMILY.get(type)
        if family is not None:
            resolution = table.resolve(key)
            if resolution is None:
                return defer.fail(DomainError(name))
            answers = address_records(resolution, family, table.ttl, next(self._rotation))
            return defer.succeed(MeshAnswer((answers, [], [])))
        if type == dns.PTR:
            hosts = table.pointers.get(key)
            if hosts:
                answers = [
                    dns.RRHeader(
                        key, dns.PTR, ttl=table.ttl, payload=dns.Record_PTR(h, table.ttl), auth=True
                    )
                    for h in hosts
                ]
                return defer.succeed(MeshAnswer((answers, [], [])))
        return defer.fail(DomainError(name))
