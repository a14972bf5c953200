# -*- test-case-name: tests.unit.dns.test_fastpath,tests.unit.dns.test_replymemo -*-
"""
The fast path: mesh answers and cache hits assembled from bytes, with no
Twisted Names message, no Deferred and no record object per query.

One L{FastPath} is built from the mesh authority (whose C{table} reloads
replace) and the forwarder's cache; the server asks it first, and only what
it declines takes the full path. Mesh answers are encoded the first time a
(name, type) is asked, in up to L{ROTATIONS} address orders, and kept until
the table is replaced; cache hits are rendered from the cached reply with
their TTLs counted down. Both are remembered in the L{ReplyMemo} for UDP
repeats. The full Twisted Names path stays the reference for mesh answers:
a test feeds the same queries to both and compares the decoded answers.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterator

from meshdns_plugin.dns import stats
from meshdns_plugin.dns.authority import MeshAuthority
from meshdns_plugin.dns.autopath import Autopath
from meshdns_plugin.dns.cache import CachedAnswer, ResponseCache, cache_key, render
from meshdns_plugin.dns.message import (
    AA,
    CLASS_IN,
    HEADER,
    NOERROR,
    NXDOMAIN,
    TYPE_A,
    TYPE_AAAA,
    TYPE_ANY,
    TYPE_CNAME,
    TYPE_PTR,
    Query,
    name_to_wire,
    opt_record,
    reply_flags,
    wire_to_name,
)
from meshdns_plugin.dns.replymemo import MemoEntry, ReplyMemo
from meshdns_plugin.dns.stats import ServerStats, UpstreamStats
from meshdns_plugin.mesh.addresses import packed_address
from meshdns_plugin.mesh.table import HostRecords, NameTable

#: How many rotations of a multi-address answer are encoded.
ROTATIONS = 8

#: The largest UDP reply meshdns sends, whatever the client offers: DNS Flag
#: Day 2020's value, which avoids IP fragmentation on common paths.
MAX_UDP_PAYLOAD = 1232

_RR_FIXED_TYPES = {TYPE_A: 4, TYPE_AAAA: 6}


def type_name(qtype: int) -> str:
    """The metrics label of a query type (others are OTHER, so junk cannot grow the metrics)."""
    return _COUNTED_TYPES.get(qtype, "OTHER")


_COUNTED_TYPES = {
    1: "A", 28: "AAAA", 5: "CNAME", 15: "MX", 2: "NS", 12: "PTR", 6: "SOA", 33: "SRV", 16: "TXT",
    255: "ANY", 65: "HTTPS", 64: "SVCB",
}


def _pointer(offset: int) -> bytes:
    """A compression pointer to C{offset} (RFC 1035 section 4.1.4)."""
    return bytes((0xC0 | offset >> 8, offset & 0xFF))


def encode_answer(
    qname_wire: bytes,
    owner_wire: bytes,
    addresses: tuple[str, ...],
    qtype: int,
    ttl: int,
    lowercase_question: bool,
    alias: bool = False,
) -> bytes:
    """
    Encode an answer section as it follows a question for C{qname_wire}.

    Names are compressed as Twisted's encoder would for a lowercase question
    (owners point at the question); for a question in mixed case, the owner
    is written once in lowercase and pointed at afterwards, so the section is
    never smaller than the full path's, and a reply the fast path finds small
    enough is small enough for the full path too.

    @param alias: whether to start with C{qname CNAME owner}.
    """
    answer_start = 12 + len(qname_wire) + 4
    question_pointer = _pointer(12)
    section = b""
    if alias:
        cname_owner = question_pointer if lowercase_question else qname_wire
        section = cname_owner + _rr_fixed(TYPE_CNAME, ttl, len(owner_wire))
        owner_reference = _pointer(answer_start + len(section))
        section += owner_wire
        first_owner = owner_reference
    elif lowercase_question:
        owner_reference = first_owner = question_pointer
    else:
        owner_reference, first_owner = _pointer(answer_start), owner_wire
    for index, address in enumerate(addresses):
        packed = packed_address(address)
        owner = first_owner if index == 0 else owner_reference
        section += owner + _rr_fixed(qtype, ttl, len(packed)) + packed
    return section


def _rr_fixed(rtype: int, ttl: int, rdlength: int) -> bytes:
    return rtype.to_bytes(2) + CLASS_IN.to_bytes(2) + ttl.to_bytes(4) + rdlength.to_bytes(2)


#: Encoded answers for one name and type: C{(section, record count)} per
#: rotation, for a lowercase question and for one in mixed case.
Rings = tuple[tuple[tuple[bytes, int], ...], tuple[tuple[bytes, int], ...]]

#: The answer of a name without addresses of the type asked (NODATA): one
#: shared value, as most names have addresses of one family only.
NO_ADDRESSES: Rings = (((b"", 0),), ((b"", 0),))


def address_answer(
    owner_wire: bytes,
    records: HostRecords,
    qtype: int,
    ttl: int,
    alias_wire: bytes | None = None,
) -> Rings:
    """
    Encode the answer section for one name and type, in up to L{ROTATIONS}
    address orders (round-robin without per-query encoding).

    @param owner_wire: the owner of the address records (lowercase wire name).
    @param alias_wire: the queried name, when answered through a CNAME.
    """
    addresses = records.addresses(_RR_FIXED_TYPES[qtype])
    if not addresses and alias_wire is None:
        return NO_ADDRESSES
    qname_wire = alias_wire or owner_wire
    count = len(addresses) + (1 if alias_wire else 0)
    n = len(addresses)
    starts = sorted({(i * n) // ROTATIONS for i in range(ROTATIONS)}) if n > 1 else [0]
    orders = [addresses[start:] + addresses[:start] for start in starts]
    return tuple(
        tuple(
            (
                encode_answer(
                    qname_wire, owner_wire, order, qtype, ttl, lowercase, alias_wire is not None
                ),
                count,
            )
            for order in orders
        )
        for lowercase in (True, False)
    )  # type: ignore[return-value]


class Route(enum.Enum):
    """Where a query the fast path does not answer goes."""

    #: To the local resolvers, through Twisted Names (the mesh answers it,
    #: or another authority may).
    LOCAL = "local"
    #: Straight to the forwarder: no local resolver knows the name.
    FORWARD = "forward"
    #: To autopath (L{meshdns_plugin.dns.autopath}): a name under the
    #: client's first search domain, not known to exist.
    AUTOPATH = "autopath"


class FastPath:
    """
    Answers what can be answered from bytes (see the module docstring), and
    says where the rest goes: so that the question "does the mesh know this
    name?" is asked once per query, here.

    @ivar memo: the UDP replies remembered for repeats.
    """

    #: Bound of the encoded mesh answers kept for one table.
    MAX_ANSWERS = 200_000

    def __init__(
        self,
        authority: MeshAuthority | None,
        cache: ResponseCache | None,
        server_stats: ServerStats,
        upstream_stats: UpstreamStats | None,
        recursion: int,
        others: bool = False,
        autopath: Autopath | None = None,
    ) -> None:
        """
        @param authority: the mesh, when it is the first resolver of the
            chain (its names are answered here); L{None} otherwise.
        @param cache: the forwarder's cache, when the forwarder is the last
            resolver (its hits are answered here); L{None} otherwise.
        @param recursion: the RA bit, or 0.
        @param others: whether resolvers other than the mesh come before the
            forwarder (every name the fast path does not answer then takes
            the full path, since they may know it); also true when there is
            no forwarder.
        @param autopath: searches for clients (then a name under their
            first search domain that the mesh does not answer, and that is
            not cached or cached as NXDOMAIN, goes to L{Route.AUTOPATH}).
        """
        self._authority = authority
        self._autopath = autopath if cache is not None and not others else None
        self._cache = cache
        self._stats = server_stats
        self._upstream = upstream_stats
        self._recursion = recursion
        self._others = others or cache is None
        self._rotation: Iterator[int] = (
            authority.rotation if authority is not None else itertools.count()
        )
        self._table: NameTable | None = None
        self._answers: dict[tuple[bytes, int], Rings] = {}
        clock = cache.clock if cache is not None else (lambda: 0.0)
        self.memo = ReplyMemo(clock, server_stats, upstream_stats, self._rotation)
        self._opts = (opt_record(MAX_UDP_PAYLOAD, False), opt_record(MAX_UDP_PAYLOAD, True))

    def _current_table(self) -> NameTable | None:
        """The authority's table; what was kept for another table is dropped."""
        authority = self._authority
        table = authority.table if authority is not None else None
        if table is not self._table:
            self._table = table
            self._answers = {}
            self.memo.clear()
        return table

    @property
    def table(self) -> NameTable | None:
        """The table the last query was answered with."""
        return self._table

    def memoized(self, packet: bytes) -> bytes | None:
        """The reply to the UDP query C{packet} from the memo, or L{None}."""
        if self._authority is not None and self._authority.table is not self._table:
            self._current_table()
            return None
        return self.memo.reply(packet)

    def answer(
        self, query: Query, limit: int | None, packet: bytes | None, search: bool = True
    ) -> bytes | Route:
        """
        The reply to C{query} (a plain QUERY of class IN), or where it goes.

        @param limit: the UDP size limit, or L{None} over TCP. A mesh answer
            over it is left to the full path, which truncates as it always
            does; a cached reply over it is truncated here.
        @param packet: the UDP query packet: its reply is remembered in
            L{memo}.
        @param search: whether autopath may search for this client (its
            search list is the one autopath walks). A client it may not
            search for gets what it would get without autopath, and that
            reply is not remembered: the same packet from a client autopath
            searches for must still be searched.
        """
        table = self._current_table()
        qtype = query.qtype
        name: bytes | None = None
        if table is not None:
            if qtype == TYPE_A or qtype == TYPE_AAAA:
                rings = self._answers.get((query.key, qtype))
                if rings is None:
                    name = wire_to_name(query.key)
                    rings = self._mesh_rings(table, name, query.key, qtype)
                if rings is not None:
                    return self._mesh_reply(query, rings, limit, packet) or Route.LOCAL
            if table.aliases:
                # An alias (ExternalName) has no encoded answer, but the
                # authority answers it: an answer cached while the name was
                # forwarded, before a reload made it an alias, must not be.
                name = name or wire_to_name(query.key)
                if table.cname(name) is not None:
                    return Route.LOCAL
        cache = self._cache
        if cache is not None:
            entry = cache.get(cache_key(query))
            autopath = self._autopath
            if (
                autopath is not None
                and (entry is None or entry.reply.rcode == NXDOMAIN)
                and autopath.applies(query, name or wire_to_name(query.key), table)
            ):
                if search:
                    return Route.AUTOPATH
                packet = None
            if entry is not None:
                return self._cached_reply(query, entry, limit, packet)
        if self._others or qtype == TYPE_ANY:
            return Route.LOCAL
        if table is not None and qtype == TYPE_PTR:
            if table.pointers.get(name or wire_to_name(query.key)):
                return Route.LOCAL
        return Route.FORWARD

    def _mesh_rings(self, table: NameTable, name: bytes, key: bytes, qtype: int) -> Rings | None:
        """The encoded answers of a mesh name, or L{None} if the mesh does not know it."""
        resolution = table.resolve(name)
        if resolution is None:
            return None
        alias = None if resolution.alias is None else name_to_wire(resolution.alias)
        found = address_answer(
            name_to_wire(resolution.owner), resolution.records, qtype, table.ttl, alias
        )
        if len(self._answers) >= self.MAX_ANSWERS:
            self._answers.clear()
        self._answers[(key, qtype)] = found
        return found

    def _cached_reply(
        self, query: Query, entry: CachedAnswer, limit: int | None, packet: bytes | None
    ) -> bytes:
        cache = self._cache
        assert cache is not None
        age = int(cache.clock() - entry.stored_at)
        data = render(entry.reply, query, self._recursion, MAX_UDP_PAYLOAD, limit, age)
        self._upstream.cache_hits += 1  # type: ignore[union-attr]
        counter = (type_name(query.qtype), stats.CACHE_HIT)
        self._stats.queries[counter] += 1
        if packet is not None:
            fresh_until = entry.stored_at + age + 1
            self.memo.remember(packet, MemoEntry((data[2:],), counter, fresh_until))
        return data

    def _mesh_reply(
        self, query: Query, rings: Rings, limit: int | None, packet: bytes | None
    ) -> bytes | None:
        ring = rings[0] if query.question[:-4] == query.key else rings[1]
        index = next(self._rotation) % len(ring)
        header_flags = reply_flags(query, AA | self._recursion, NOERROR)
        opt = self._opts[query.do] if query.edns else b""
        # The memo keeps every rotation: encode them all at once, the one
        # sent included; without it, only the one sent.
        shown = ring if packet is not None else (ring[index],)
        replies = []
        for section, count in shown:
            data = (
                HEADER.pack(query.ident, header_flags, 1, count, 0, 1 if opt else 0)
                + query.question
                + section
                + opt
            )
            if limit is not None and len(data) > limit:
                return None
            replies.append(data)
        counter = (type_name(query.qtype), stats.MESH)
        self._stats.queries[counter] += 1
        if packet is not None:
            self.memo.remember(packet, MemoEntry(tuple(r[2:] for r in replies), counter))
            return replies[index]
        return replies[0]
