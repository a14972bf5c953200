# -*- test-case-name: tests.unit.dns.test_autopath -*-
"""
Autopath: the client's search list, walked by meshdns on the client's behalf.

A pod's resolv.conf says C{options ndots:5}, so glibc tries a name such as
C{www.example.test} under every search domain before the name itself:
C{www.example.test.<ns>.svc.cluster.local} first, then each further domain,
each an NXDOMAIN round trip for A and for AAAA. meshdns knows each client's
search list (L{search_tail}), so when the first of those questions comes,
it asks every further candidate at once (N under the next domain, ..., N
alone) and decides in the client's order, as glibc would:
  - NXDOMAIN: the next candidate decides;
  - records of the asked type: the answer is C{<question> CNAME <candidate>}
    followed by the candidate's answer;
  - NODATA, SERVFAIL, a timeout, an alias, or an answer meshdns cannot read:
    the client gets the original name's own result (its NXDOMAIN), and its
    own search goes on exactly as it would have without autopath.
The original name is asked too, in parallel: autopath applies only where its
own answer is NXDOMAIN, and any other answer of it is given as it is. So a
client never gets an answer it would not have reached itself, only sooner.

Each candidate is asked through the forwarder like any client question
(the client's RD, CD and DO bits and EDNS options), so its answer is cached
as usual and the client's own later questions hit the cache. Mesh names
among the candidates are answered from the table.

Only A and AAAA are searched: they are what a stub resolver's
C{getaddrinfo} asks, and their answers can be put behind a CNAME without
knowing how to rewrite names inside other types' data.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from twisted.names import dns

from meshdns_plugin.config import Config, search_domains
from meshdns_plugin.dns.authority import address_records
from meshdns_plugin.dns.cache import cache_ttl, render
from meshdns_plugin.dns.clusterauthority import ClusterAuthority
from meshdns_plugin.dns.forwarder import CachingForwarder, Done
from meshdns_plugin.dns.message import (
    HEADER,
    NOERROR,
    NXDOMAIN,
    TC,
    TYPE_A,
    TYPE_AAAA,
    Query,
    UpstreamReply,
    name_to_wire,
    opt_record,
    reply_flags,
    wire_to_name,
)
from meshdns_plugin.mesh.table import NameTable
from meshdns_plugin.resolvconf import read_resolv_conf

_FAMILY = {TYPE_A: 4, TYPE_AAAA: 6}

#: The EDNS payload size a candidate's reply is rendered with, to be read
#: (never sent): large enough for any reply the forwarder keeps.
_READ_PAYLOAD = 65535


@dataclass
class AutopathStats:
    """
    Counters of autopath, for C{/metrics} and C{/debug}.

    @ivar searches: queries whose search meshdns did.
    @ivar answers: of those, answered with a CNAME to a further candidate.
    @ivar candidates: candidates asked (of the forwarder or the table).
    @ivar questions_saved: questions the clients did not have to send: for
        an answer from the k-th further candidate, k (the k - 1 NXDOMAINs
        before it and the candidate itself).
    """

    searches: int = 0
    answers: int = 0
    candidates: int = 0
    questions_saved: int = 0


def candidates(name: bytes, first: bytes, rest: Sequence[bytes]) -> tuple[bytes, ...] | None:
    """
    The names a client tries after C{name}, in its order, if C{name} is some
    N under its first search domain C{first}: N under each of C{rest}, then
    N alone; L{None} if it is not.

    N alone comes last whatever its dots: a client that tried it first
    (N had at least C{ndots} dots) got no answer for it, and gets the same
    answer again (from the cache).
    """
    if not name.endswith(b"." + first):
        return None
    base = name[: -len(first) - 1]
    if not base:
        return None
    return (*(base + b"." + domain for domain in rest), base)


def search_tail(config: Config) -> tuple[bytes, ...]:
    """
    The client's search list after its first domain (the first is the
    table's search suffix).

    A sidecar's clients share its own list (C{mesh.search}, or else
    resolv.conf's). With per-client views, each client is a ClusterFirst pod,
    whose list kubelet writes as C{<ns>.svc.<cluster_domain>},
    C{svc.<cluster_domain>}, C{<cluster_domain>}, then the node's search
    line: meshdns's own resolv.conf, less any domain under the cluster
    domain (what it holds when meshdns itself runs with a ClusterFirst
    policy, and not part of the node's line).
    """
    if not config.mesh.per_client_views:
        return tuple(d.encode() for d in search_domains(config)[1:])
    cluster = config.mesh.cluster_domain
    node = read_resolv_conf(config.upstream.resolv_conf).search
    node = tuple(d for d in node if d != cluster and not d.endswith("." + cluster))
    return tuple(d.encode() for d in (f"svc.{cluster}", cluster, *node))


def candidate_query(query: Query, name: bytes) -> Query:
    """The question for candidate C{name}, asked with the client's bits and options."""
    wire = name_to_wire(name)
    return Query(
        0,
        query.flags,
        wire,
        query.qtype,
        query.qclass,
        wire + query.qtype.to_bytes(2) + query.qclass.to_bytes(2),
        query.edns,
        query.payload,
        query.do,
        query.options,
    )


def searched_reply(
    query: Query,
    target: bytes,
    ttl: int,
    records: Sequence[dns.RRHeader],
    recursion: int,
    payload: int,
    limit: int | None,
) -> bytes:
    """
    The reply to C{query}: C{<question> CNAME target}, then C{records}, under
    the client's question as it wrote it; not authoritative (the records are
    forwarded ones, or the mesh's behind a name the client did not ask).

    @param limit: the UDP size limit (L{None} over TCP); past it the records
        are dropped and TC set, and the client asks again over TCP.
    """
    qname = wire_to_name(query.question[:-4])
    # maxSize 0: Twisted's encoder would otherwise cut the bytes at 512.
    message = dns.Message(maxSize=0)
    message.queries = [dns.Query(qname, query.qtype, query.qclass)]
    message.answers = [
        dns.RRHeader(qname, dns.CNAME, ttl=ttl, payload=dns.Record_CNAME(target, ttl)),
        *records,
    ]
    body = message.toStr()[12:]
    flags = reply_flags(query, recursion, NOERROR)
    opt = opt_record(payload, query.do) if query.edns else b""
    arcount = 1 if opt else 0
    data = HEADER.pack(query.ident, flags, 1, len(message.answers), 0, arcount) + body + opt
    if limit is None or len(data) <= limit:
        return data
    return HEADER.pack(query.ident, flags | TC, 1, 0, 0, arcount) + query.question + opt


class _Outcome(enum.Enum):
    """What one name's answer means to the search."""

    PENDING = "pending"
    NXDOMAIN = "nxdomain"
    RECORDS = "records"
    STOP = "stop"


#: A name's outcome, the seconds it holds (NXDOMAIN) or its answer records.
_Result = tuple[_Outcome, int, list[dns.RRHeader]]
_PENDING: _Result = (_Outcome.PENDING, 0, [])
_STOP: _Result = (_Outcome.STOP, 0, [])


def upstream_result(
    query: Query, reply: UpstreamReply | None, age: int, fixed_ttl: int | None
) -> _Result:
    """What the forwarder's answer for candidate C{query} means to the search."""
    if reply is None:
        return _STOP
    if reply.rcode == NXDOMAIN:
        ttl = fixed_ttl if fixed_ttl is not None else max(cache_ttl(reply) - age, 0)
        return (_Outcome.NXDOMAIN, ttl, [])
    if reply.rcode != NOERROR or not reply.counts[0]:
        return _STOP
    message = dns.Message()
    try:
        message.fromStr(render(reply, query, 0, _READ_PAYLOAD, None, age, fixed_ttl))
    except Exception:
        # Twisted's decoder raises several unrelated types; a reply it cannot
        # read is left to the client's own search.
        return _STOP
    answers = message.answers
    if not any(r.type == query.qtype for r in answers):
        return _STOP
    for record in answers:
        record.auth = False
    return (_Outcome.RECORDS, min(r.ttl for r in answers), answers)


class Autopath:
    """
    Does clients' searches (see the module docstring).

    @ivar stats: the L{AutopathStats}.
    """

    def __init__(
        self,
        forwarder: CachingForwarder,
        tail: Sequence[bytes],
        cluster: ClusterAuthority | None = None,
    ) -> None:
        """
        @param forwarder: asks upstream and caches, for the original name
            and every candidate outside the mesh.
        @param tail: the clients' search list after its first domain (the
            table's search suffix), lowercase, without trailing dots.
        @param cluster: answers the absent names of the cluster domain
            (the original name and candidates), which then never go upstream.
        """
        self.forwarder = forwarder
        self.tail = tuple(tail)
        self.cluster = cluster
        self.stats = AutopathStats()
        #: Rotates a mesh candidate's addresses, as the mesh authority does.
        self.rotation = itertools.count()

    @classmethod
    def fromConfig(
        cls, config: Config, forwarder: CachingForwarder, cluster: ClusterAuthority | None = None
    ) -> Autopath:
        """The autopath of C{config}'s clients (L{search_tail})."""
        return cls(forwarder, search_tail(config), cluster)

    def applies(self, query: Query, name: bytes, table: NameTable | None) -> bool:
        """
        Whether C{query} for C{name} (lowercase) is searched: an A or AAAA
        question for a name under the first search domain of C{table}'s
        clients, the mesh not answering it (the caller knows that).
        """
        if table is None or (query.qtype != TYPE_A and query.qtype != TYPE_AAAA):
            return False
        first = table.search_suffix
        return first is not None and name.endswith(b"." + first) and len(name) > len(first) + 1

    def search(
        self,
        query: Query,
        table: NameTable,
        tcp: bool,
        own: Done,
        answer: Callable[[list[dns.RRHeader], bytes, int], None],
    ) -> None:
        """
        Do the search of C{query} (for which L{applies} is true).

        @param own: called as the forwarder calls it with the original
            name's own result, when that is what the client gets.
        @param answer: called with a candidate's answer records, the
            candidate, and the TTL of the CNAME to it.
        """
        name = wire_to_name(query.key)
        first = table.search_suffix
        assert first is not None
        names = candidates(name, first, self.tail) or ()
        self.stats.searches += 1
        _Search(self, query, table, names, tcp, own, answer).start()


class _Search:
    """One query's search: its candidates' results as they come, decided in order."""

    def __init__(
        self,
        autopath: Autopath,
        query: Query,
        table: NameTable,
        names: tuple[bytes, ...],
        tcp: bool,
        own: Done,
        answer: Callable[[list[dns.RRHeader], bytes, int], None],
    ) -> None:
        self.autopath = autopath
        self.query = query
        self.table = table
        self.names = names
        self.tcp = tcp
        self.own = own
        self.answer = answer
        #: Index 0: the original name; then each candidate.
        self.results: list[_Result] = [_PENDING] * (len(names) + 1)
        self.own_reply: tuple[UpstreamReply | None, int, int | None] | None = None
        self.finished = False

    def start(self) -> None:
        forwarder = self.autopath.forwarder
        cluster = self.autopath.cluster
        local = cluster.answer(self.query, self.table) if cluster is not None else None
        if local is not None:
            self._own_result(local, 0, None)
        else:
            forwarder.resolve(self.query, self.tcp, self._own_result)
        for index, name in enumerate(self.names, 1):
            if self.finished:
                # Decided by cached or local answers before the rest were needed.
                return
            self.autopath.stats.candidates += 1
            found = self._from_table(name)
            if found is not None:
                self._set(index, found)
                continue
            asked = candidate_query(self.query, name)
            local = cluster.answer(asked, self.table) if cluster is not None else None
            if local is not None:
                self._upstream_result(index, asked, local, 0, None)
            else:
                forwarder.resolve(asked, self.tcp, partial(self._upstream_result, index, asked))

    def _from_table(self, name: bytes) -> _Result | None:
        """A mesh name's result (an alias stops the search), or L{None} for upstream."""
        table = self.table
        resolution = table.resolve(name)
        if resolution is not None:
            family = _FAMILY[self.query.qtype]
            rotation = next(self.autopath.rotation)
            records = address_records(resolution, family, table.ttl, rotation)
            if not any(r.type == self.query.qtype for r in records):
                return _STOP
            return (_Outcome.RECORDS, table.ttl, records)
        if table.aliases and table.cname(name) is not None:
            return _STOP
        return None

    def _own_result(self, reply: UpstreamReply | None, age: int, fixed_ttl: int | None) -> None:
        self.own_reply = (reply, age, fixed_ttl)
        if reply is not None and reply.rcode == NXDOMAIN:
            self._set(0, upstream_result(self.query, reply, age, fixed_ttl))
        else:
            self._set(0, _STOP)

    def _upstream_result(
        self,
        index: int,
        asked: Query,
        reply: UpstreamReply | None,
        age: int,
        fixed_ttl: int | None,
    ) -> None:
        self._set(index, upstream_result(asked, reply, age, fixed_ttl))

    def _set(self, index: int, result: _Result) -> None:
        self.results[index] = result
        if not self.finished:
            self._decide()

    def _decide(self) -> None:
        """Finish if the results so far decide, in the client's order."""
        ttl = None
        for index, (outcome, seconds, records) in enumerate(self.results):
            if outcome is _Outcome.PENDING:
                return
            if outcome is _Outcome.NXDOMAIN:
                ttl = seconds if ttl is None else min(ttl, seconds)
                continue
            if outcome is _Outcome.RECORDS and index > 0:
                self.finished = True
                stats = self.autopath.stats
                stats.answers += 1
                stats.questions_saved += index
                cname_ttl = seconds if ttl is None else min(ttl, seconds)
                self.answer(records, self.names[index - 1], cname_ttl)
                return
            break
        self.finished = True
        assert self.own_reply is not None
        self.own(*self.own_reply)
