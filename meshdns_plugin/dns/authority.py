# -*- test-case-name: tests.unit.dns.test_authority,tests.unit.dns.test_fastpath -*-
"""
MeshAuthority: a Twisted Names resolver that answers from the current
L{NameTable}.

It is an ordinary L{IResolver} (a L{ResolverBase} with C{_lookup}), so it goes
into a L{ResolverChain} or a C{DNSServerFactory(authorities=[...])} beside any
other resolver. Names it does not know fail with L{DomainError} ("not mine, ask
the next resolver"); only A, AAAA (and PTR of mesh addresses) are answered here,
every other type of a mesh name goes on to the next resolver, as Istio does.

The names of Kubernetes Services of type C{ExternalName} are aliases: A and
AAAA (and CNAME) questions for them are answered with a CNAME to the
Service's C{externalName}, followed by the target's addresses, which come from
the table when the target is a mesh name and otherwise from the resolver
given to chase them with (the caching forwarder), as Kubernetes DNS answers
them.
"""

from __future__ import annotations

import itertools

from twisted.internet import defer
from twisted.internet.interfaces import IResolver
from twisted.logger import Logger
from twisted.names import common, dns
from twisted.names.error import AuthoritativeDomainError, DomainError
from twisted.python.failure import Failure

from meshdns_plugin.mesh.table import NameTable, Resolution

_FAMILY = {dns.A: 4, dns.AAAA: 6}

#: How many CNAMEs an answer follows from alias to alias before it gives up
#: (ExternalName Services pointing at each other in a loop, or a long chain).
MAX_ALIAS_STEPS = 8

#: How a chase resolver fails when it cannot answer: not worth a log line.
_CHASE_FAILURES = (DomainError, AuthoritativeDomainError, defer.TimeoutError, TimeoutError)

_log = Logger()


class MeshAnswer(tuple):
    """
    C{(answers, authority, additional)} given authoritatively by the mesh.

    Stock Twisted sets AA only when an answer record is authoritative, so an
    empty answer (a known name without the asked family) would lose it; the
    server checks for this type to set AA on those too.
    """

    __slots__ = ()


def cname_record(alias: bytes, target: bytes, ttl: int) -> dns.RRHeader:
    """C{alias CNAME target}, authoritative."""
    return dns.RRHeader(alias, dns.CNAME, ttl=ttl, payload=dns.Record_CNAME(target, ttl), auth=True)


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
        answers.append(cname_record(resolution.alias, owner, ttl))
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
    @ivar chase: the resolver that looks up the targets of aliases outside
        the mesh, or L{None}.
    @ivar rotation: the counter that rotates several addresses, shared
        with the wire fast path so that both take turns alike.
    """

    def __init__(self, table: NameTable, chase: IResolver | None = None) -> None:
        """
        @param chase: where the C{externalName} of an ExternalName Service
            is looked up when the mesh does not know it (meshdns gives its
            caching forwarder); its answer records follow the CNAME. Without
            one, or when it fails, the CNAME is answered alone (NOERROR),
            for the client's resolver to follow.
        """
        common.ResolverBase.__init__(self)
        self.table = table
        self.chase = chase
        self.rotation = itertools.count()

    def _lookup(self, name: bytes, cls: int, type: int, timeout: object) -> defer.Deferred:
        if cls != dns.IN:
            return defer.fail(DomainError(name))
        table = self.table
        key = name.lower().rstrip(b".")
        family = _FAMILY.get(type)
        if family is not None:
            resolution = table.resolve(key)
            if resolution is not None:
                answers = address_records(resolution, family, table.ttl, next(self.rotation))
                return defer.succeed(MeshAnswer((answers, [], [])))
            target = table.cname(key)
            if target is None:
                return defer.fail(DomainError(name))
            return self._aliasAnswer(table, key, target, type, timeout)
        if type == dns.CNAME:
            target = table.cname(key)
            if target is not None:
                return defer.succeed(MeshAnswer(([cname_record(key, target, table.ttl)], [], [])))
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

    def _aliasAnswer(
        self, table: NameTable, alias: bytes, target: bytes, type: int, timeout: object
    ) -> defer.Deferred:
        """
        C{alias CNAME target}, then the target's records of C{type} (A or
        AAAA): from C{table} when the target is a mesh name, following
        further aliases up to L{MAX_ALIAS_STEPS} CNAMEs; else from the chase
        resolver. A loop or a chain too long ends the answer with the
        CNAMEs given so far, each once.
        """
        answers = []
        seen = {alias}
        for _ in range(MAX_ALIAS_STEPS):
            answers.append(cname_record(alias, target, table.ttl))
            if target in seen:
                break
            seen.add(target)
            resolution = table.resolve(target)
            if resolution is not None:
                rotation = next(self.rotation)
                answers += address_records(resolution, _FAMILY[type], table.ttl, rotation)
                break
            following = table.cname(target)
            if following is None:
                return self._chased(answers, target, type, timeout)
            alias, target = target, following
        return defer.succeed(MeshAnswer((answers, [], [])))

    def _chased(
        self, answers: list[dns.RRHeader], target: bytes, type: int, timeout: object
    ) -> defer.Deferred:
        """C{answers} (the CNAMEs), then the chase resolver's answer records for C{target}."""
        if self.chase is None:
            return defer.succeed(MeshAnswer((answers, [], [])))

        def chased(result: tuple[list[dns.RRHeader], object, object]) -> MeshAnswer:
            return MeshAnswer(([*answers, *result[0]], [], []))

        def failed(reason: Failure) -> MeshAnswer:
            if not reason.check(*_CHASE_FAILURES):
                _log.failure("Unexpected error looking up {target}", reason, target=target)
            return MeshAnswer((answers, [], []))

        d = defer.maybeDeferred(self.chase.query, dns.Query(target, type, dns.IN), timeout)
        return d.addCallbacks(chased, failed)
