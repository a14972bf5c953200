# -*- test-case-name: tests.unit.dns.test_forwarder,tests.unit.dns.test_server -*-
"""
The forwarder's cache: upstream replies kept as bytes, served with their
TTLs counted down.

It fixes what L{twisted.names.cache.CacheResolver} gets wrong for a proxy:
  - a TTL counts down with wall time from the moment the upstream answered
    and is never extended (Twisted re-caches every hit, so a TTL loses a
    second per hit);
  - it is a bounded LRU with lazy expiry and no timer per entry;
  - NXDOMAIN and NODATA are cached per RFC 2308 (the SOA's TTL capped by
    its MINIMUM field), their CNAME or DNAME chain included (RFC 6604);
  - with C{serve_stale}, an expired answer is kept that much longer, to be
    served with TTL 30 when the upstream is late or fails (RFC 8767);
  - an entry asked in the last tenth of its TTL is reported to
    C{near_expiry}, for a refresh before it expires.

The key holds what changes the answer besides the question: the RD, CD and
DO bits and the end-to-end EDNS options of the query. So a client that did
not ask for DNSSEC records never gets them, one that did never gets a copy
without them, and an answer fetched with checking disabled (CD=1, possibly
bogus) never reaches a client that wants validated data.
"""

from __future__ import annotations

import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from meshdns_plugin.dns.message import (
    AD,
    CD,
    HEADER,
    NOERROR,
    NXDOMAIN,
    RD,
    TC,
    Query,
    UpstreamReply,
    opt_record,
    reply_flags,
)

#: (lowercase wire name, type, class, RD|CD|DO bits, end-to-end options).
CacheKey = tuple[bytes, int, int, int, bytes]

#: TTL of an answer served stale (RFC 8767 section 4).
STALE_TTL = 30

#: An entry asked in this last part of its TTL is refreshed before it expires
#: (as unbound's C{prefetch} does).
PREFETCH_FRACTION = 0.1

_TTL = struct.Struct("!I")


def cache_key(query: Query) -> CacheKey:
    """The cache key of C{query}: see the module docstring."""
    bits = (query.flags & (RD | CD)) | (1 if query.do else 0)
    return (query.key, query.qtype, query.qclass, bits, query.options)


def cache_ttl(reply: UpstreamReply) -> int:
    """
    How long C{reply} may be cached: the smallest TTL of its records, or for
    a negative answer (an SOA in the authority section, RFC 2308 section 5)
    the SOA's negative TTL if smaller; 0 (do not cache) for any other rcode
    and for an NXDOMAIN or NODATA without an SOA.
    """
    if reply.rcode not in (NOERROR, NXDOMAIN) or reply.min_ttl is None:
        return 0
    if reply.negative_ttl is not None:
        return min(reply.min_ttl, reply.negative_ttl)
    ancount = reply.counts[0]
    return reply.min_ttl if reply.rcode == NOERROR and ancount else 0


def render(
    reply: UpstreamReply,
    query: Query,
    recursion: int,
    payload: int,
    limit: int | None,
    age: int = 0,
    fixed_ttl: int | None = None,
) -> bytes:
    """
    The reply to C{query}: the upstream's records as they came, under a
    header and OPT record of meshdns's own.

    The header echoes the client's ID, RD and CD; AA is never set (a
    forwarder's answer is not authoritative, RFC 1035 4.1.1); AD is kept
    only for a client that set DO or AD (RFC 6840 5.8), never for one that
    set CD (its answer may not have been validated). The question is the
    client's own bytes: the same length as the upstream's, so every
    compression pointer still points where it did.

    @param age: seconds to take off every TTL (not below 0).
    @param fixed_ttl: a TTL for every record instead (serve stale).
    @param limit: the most bytes the reply may have (UDP); past it, the
        records are dropped and TC set, so the client retries over TCP.
    """
    data = reply.data
    flags = reply_flags(query, recursion, reply.rcode)
    if reply.flags & AD and not query.flags & CD and (query.do or query.flags & AD):
        flags |= AD
    _, _, _, ancount, nscount, arcount = HEADER.unpack_from(data)
    if age or fixed_ttl is not None:
        patched = bytearray(data)
        for offset, ttl in zip(reply.ttl_offsets, reply.ttls, strict=True):
            _TTL.pack_into(patched, offset, max(ttl - age, 0) if fixed_ttl is None else fixed_ttl)
        data = bytes(patched)
    opt = opt_record(payload, query.do, reply.rcode >> 4, reply.options) if query.edns else b""
    count = 1 if opt else 0
    whole = (
        HEADER.pack(query.ident, flags, 1, ancount, nscount, arcount + count)
        + query.question
        + data[reply.question_end :]
        + opt
    )
    if limit is None or len(whole) <= limit:
        return whole
    return HEADER.pack(query.ident, flags | TC, 1, 0, 0, count) + query.question + opt


@dataclass(slots=True)
class CachedAnswer:
    """
    One upstream reply as it arrived.

    @ivar stored_at: the cache clock's time of arrival.
    @ivar ttl: seconds it stays fresh (L{cache_ttl}).
    """

    reply: UpstreamReply
    stored_at: float
    ttl: int


class ResponseCache:
    """
    A bounded LRU of upstream replies, expired lazily when looked at.

    @ivar evictions: how many fresh-or-stale entries the bound pushed out.
    """

    def __init__(
        self, max_entries: int, clock: Callable[[], float] = time.time, serve_stale: int = 0
    ) -> None:
        """
        @param clock: the time source TTLs are counted on.
        @param serve_stale: seconds an expired entry is kept for L{stale}.
        """
        self.max_entries = max_entries
        self.clock = clock
        self.serve_stale = serve_stale
        self.evictions = 0
        #: Called with the key of a fresh entry asked in its last
        #: L{PREFETCH_FRACTION} of TTL (the forwarder's prefetch), or L{None}.
        self.near_expiry: Callable[[CacheKey], None] | None = None
        self._entries: OrderedDict[CacheKey, CachedAnswer] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: CacheKey) -> CachedAnswer | None:
        """
        A fresh entry for C{key}, or L{None}; an expired one is dropped unless
        it may still be served stale.
        """
        entry = self._entries.get(key)
        if entry is None:
            return None
        age = self.clock() - entry.stored_at
        if age >= entry.ttl:
            if age >= entry.ttl + self.serve_stale:
                del self._entries[key]
            return None
        self._entries.move_to_end(key)
        near_expiry = self.near_expiry
        if near_expiry is not None and age >= entry.ttl * (1 - PREFETCH_FRACTION):
            near_expiry(key)
        return entry

    def stale(self, key: CacheKey) -> CachedAnswer | None:
        """An expired entry still within the C{serve_stale} window, or L{None}."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        age = self.clock() - entry.stored_at
        if entry.ttl <= age < entry.ttl + self.serve_stale:
            return entry
        return None

    def put(self, key: CacheKey, reply: UpstreamReply) -> CachedAnswer | None:
        """
        Keep C{reply} if it may be cached (L{cache_ttl}).

        @return: the new entry, or L{None} if it was not kept.
        """
        ttl = cache_ttl(reply)
        if ttl <= 0:
            return None
        entry = CachedAnswer(reply, self.clock(), ttl)
        entries = self._entries
        entries[key] = entry
        entries.move_to_end(key)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)
            self.evictions += 1
        return entry
