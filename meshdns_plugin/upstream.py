# -*- test-case-name: tests.test_upstream -*-
"""
CachingForwarder: a bounded, TTL-correct cache in front of the upstream
servers (asked through L{meshdns_plugin.client.UpstreamClient}).

It fixes what stock Twisted Names gets wrong for a forwarding proxy:
  - L{twisted.names.cache.CacheResolver} re-caches every hit, so a TTL loses a
    second per hit; here a TTL only counts down with wall time, from the
    moment the upstream answered, and is never extended;
  - it is unbounded with one timer per entry; here an LRU of
    C{max_entries} with lazy expiry, and no timer at all;
  - it caches no negative answers; here NXDOMAIN and NODATA are cached per
    RFC 2308 (the SOA's TTL, capped by its MINIMUM field);
  - with C{serve_stale}, an expired answer is kept that much longer and served
    with TTL 30 when every upstream fails (RFC 8767);
  - at most C{max_concurrent} distinct questions are forwarded at once; past
    that, SERVFAIL at once rather than an unbounded queue;
  - C{client.Resolver} re-reads resolv.conf on a timer and has no overall
    deadline; here servers are fixed at construction (meshdns reads resolv.conf
    itself) and the whole forward, failover included, is bounded by C{timeout}.
    An upstream SERVFAIL or REFUSED fails over to the next server; when every
    server fails, the client gets the last rcode seen (SERVFAIL if none).
Identical questions in flight are merged into one upstream query.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.names import common, dns
from twisted.names.error import DNSNameError, DNSServerError
from twisted.python.failure import Failure

from meshdns_plugin.client import UpstreamClient, UpstreamFailure
from meshdns_plugin.stats import UpstreamStats
from meshdns_plugin.wire import EncodedSections, encode_sections, name_to_wire, wire_to_name

_log = Logger()

#: Seconds between two log lines about upstream failures.
FAILURE_LOG_INTERVAL = 10.0

#: TTL of an answer served stale (RFC 8767 section 4).
STALE_TTL = 30

#: (lowercase wire-format name, type, class): the form the wire fast path
#: has at hand without decoding the name.
CacheKey = tuple[bytes, int, int]
Records = list[dns.RRHeader]


@dataclass
class CachedResponse:
    """
    One upstream answer as it arrived.

    @ivar stored_at: wall-clock time of arrival.
    @ivar ttl: seconds it stays fresh (the smallest TTL of its records, or the
        negative TTL of RFC 2308).
    @ivar rcode: C{dns.OK} or C{dns.ENAME}.
    @ivar encoded: the three sections pre-encoded for the wire fast path.
    """

    stored_at: float
    ttl: int
    rcode: int
    answers: Records
    authority: Records
    additional: Records
    encoded: EncodedSections | None = None

    def __post_init__(self) -> None:
        if self.encoded is None:
            self.encoded = encode_sections((self.answers, self.authority, self.additional))

    def aged(self, now: float) -> tuple[Records, Records, Records]:
        """The sections with every TTL reduced by the time spent in the cache."""
        elapsed = int(now - self.stored_at)

        def age(records: Records) -> Records:
            return [
                dns.RRHeader(r.name.name, r.type, r.cls, max(r.ttl - elapsed, 0), r.payload, r.auth)
                for r in records
            ]

        return age(self.answers), age(self.authority), age(self.additional)


def negative_ttl(authority: Records) -> int | None:
    """
    RFC 2308 section 5: a negative answer is cached for the SOA record's TTL
    capped by the SOA MINIMUM field; without an SOA it is not cached.
    """
    for record in authority:
        if record.type == dns.SOA:
            return min(record.ttl, record.payload.minimum)
    return None


class CacheHit(tuple):
    """C{(answers, authority, additional)} served from the cache."""

    __slots__ = ()


class CachedNameError(DNSNameError):
    """An NXDOMAIN served from the cache."""


class ResponseCache:
    """
    A bounded LRU of upstream answers, expired lazily when looked at.

    @ivar evictions: how many fresh-or-stale entries the bound pushed out.
    """

    def __init__(
        self, max_entries: int, clock: Callable[[], float] = time.time, serve_stale: int = 0
    ) -> None:
        """
        @param serve_stale: seconds an expired entry is kept for L{stale}.
        """
        self.max_entries = max_entries
        self.clock = clock
        self.serve_stale = serve_stale
        self.evictions = 0
        self._entries: OrderedDict[CacheKey, CachedResponse] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: CacheKey) -> CachedResponse | None:
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
        return entry

    def stale(self, key: CacheKey) -> CachedResponse | None:
        """An expired entry still within the C{serve_stale} window, or L{None}."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        age = self.clock() - entry.stored_at
        if entry.ttl <= age < entry.ttl + self.serve_stale:
            return entry
        return None

    def put(self, key: CacheKey, entry: CachedResponse) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            self.evictions += 1


def _nxdomain(authority: Records) -> DNSNameError:
    """The error stock resolvers raise for NXDOMAIN, carrying the SOA."""
    message = dns.Message(rCode=dns.ENAME, answer=True)
    message.authority = authority
    return CachedNameError(message)


class CachingForwarder(common.ResolverBase):
    """
    Forwards questions to upstream servers, in order with failover, and caches
    the answers.

    @ivar cache: the L{ResponseCache}.
    @ivar stats: request, failure, hit and latency counters.
    """

    def __init__(
        self,
        servers: Sequence[tuple[str, int]],
        timeout: float = 5.0,
        max_entries: int = 100000,
        reactor: IReactorTime | None = None,
        *,
        serve_stale: int = 0,
        max_concurrent: int = 1000,
    ) -> None:
        """
        @param servers: C{(ip, port)} pairs, tried in this order.
        @param timeout: seconds that bound a whole forward; each server gets an
            equal share of it before the next one is tried.
        @param max_entries: the cache bound.
        @param serve_stale: seconds past expiry an answer may be served when
            every upstream fails; 0 = never.
        @param max_concurrent: distinct questions forwarded at once.
        """
        common.ResolverBase.__init__(self)
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self._reactor = reactor
        self.servers = tuple(servers)
        self.timeout = timeout
        self.cache = ResponseCache(max_entries, clock=reactor.seconds, serve_stale=serve_stale)
        self.max_concurrent = max_concurrent
        self._lastFailureLog = float("-inf")
        self._unreportedFailures = 0
        self.stats = UpstreamStats()
        self._inflight: dict[CacheKey, list[defer.Deferred]] = {}
        self._client: UpstreamClient | None = None
        if self.servers:
            share = max(timeout / len(self.servers), 0.1)
            self._client = UpstreamClient(self.servers, share, reactor)

    def _lookup(self, name: bytes, cls: int, type: int, timeout: object) -> defer.Deferred:
        return self.forward(name, cls, type)

    def overTCP(self) -> common.ResolverBase:
        """
        This forwarder (same cache, same merging) as a resolver that asks
        upstream over TCP, for clients that asked over TCP.
        """
        return _OverTCP(self)

    def forward(self, name: bytes, cls: int, type: int, tcp: bool = False) -> defer.Deferred:
        """
        Answer from the cache, or ask upstream (over TCP if C{tcp}).

        @return: a Deferred of C{(answers, authority, additional)}, or failing
            with the error stock Twisted resolvers raise for the rcode.
        """
        key = (name_to_wire(name.lower()), type, cls)
        entry = self.cache.get(key)
        if entry is not None:
            self.stats.cache_hits += 1
            return self._fromEntry(entry)
        self.stats.cache_misses += 1
        if self._client is None:
            return defer.fail(DNSServerError("no upstream servers configured"))
        waiting = self._inflight.get(key)
        if waiting is not None:
            d: defer.Deferred = defer.Deferred()
            waiting.append(d)
            return d
        if len(self._inflight) >= self.max_concurrent:
            self.stats.rejected += 1
            return defer.fail(DNSServerError("too many questions forwarded at once"))
        self._inflight[key] = []
        self.stats.requests += 1
        started = self._reactor.seconds()
        upstream = self._client.query(dns.Query(name, type, cls), tcp=tcp)
        upstream.addTimeout(self.timeout, self._reactor)
        upstream.addCallbacks(self._sections, self._failure)
        upstream.addCallbacks(self._cachePositive, self._cacheNegative, (key,), None, (key,), None)
        upstream.addErrback(self._serveStale, key)
        upstream.addBoth(self._release, key, started)
        return upstream

    def close(self) -> None:
        """Release the upstream sockets."""
        if self._client is not None:
            self._client.close()

    def _sections(self, message: dns.Message) -> tuple[Records, Records, Records]:
        """A reply -> its sections, or the error Twisted resolvers raise for its rcode."""
        # Twisted marks decoded records authoritative when the upstream set AA;
        # a forwarder's answer is not authoritative (RFC 1035 section 4.1.1).
        for record in (*message.answers, *message.authority, *message.additional):
            record.auth = False
        if message.rCode != dns.OK:
            raise self.exceptionForCode(message.rCode)(message)
        return (message.answers, message.authority, message.additional)

    def _failure(self, reason: Failure) -> Failure:
        """Every upstream failed: the last rcode seen, else SERVFAIL."""
        if reason.check(UpstreamFailure) and reason.value.message is not None:
            message = reason.value.message
            return Failure(self.exceptionForCode(message.rCode)(message))
        if reason.check(UpstreamFailure):
            return Failure(DNSServerError(str(reason.value)))
        return reason

    def _fromEntry(self, entry: CachedResponse) -> defer.Deferred:
        answers, authority, additional = entry.aged(self.cache.clock())
        if entry.rcode == dns.ENAME:
            return defer.fail(_nxdomain(authority))
        return defer.succeed(CacheHit((answers, authority, additional)))

    def _cachePositive(
        self, result: tuple[Records, Records, Records], key: CacheKey
    ) -> tuple[Records, Records, Records]:
        answers, authority, additional = result
        ttl = min((r.ttl for r in answers), default=None) if answers else negative_ttl(authority)
        if ttl:
            now = self.cache.clock()
            self.cache.put(key, CachedResponse(now, ttl, dns.OK, answers, authority, additional))
        return result

    def _cacheNegative(self, reason: Failure, key: CacheKey) -> Failure:
        if not reason.check(DNSNameError):
            self.stats.failures += 1
            self._reportFailure(reason, key)
        elif reason.value.args:
            message = reason.value.args[0]
            authority = list(getattr(message, "authority", []))
            ttl = negative_ttl(authority)
            if ttl:
                now = self.cache.clock()
                self.cache.put(key, CachedResponse(now, ttl, dns.ENAME, [], authority, []))
        return reason

    def _reportFailure(self, reason: Failure, key: CacheKey) -> None:
        """
        Log an upstream failure, at most one line per L{FAILURE_LOG_INTERVAL}:
        an outage must not turn into one log line per query.
        """
        now = self._reactor.seconds()
        if now - self._lastFailureLog < FAILURE_LOG_INTERVAL:
            self._unreportedFailures += 1
            return
        _log.warn(
            "Upstream failed for {name} (type {type}): {error}; "
            "{more} more failures since the last report",
            name=wire_to_name(key[0]).decode("ascii", "replace"),
            type=key[1],
            error=reason.getErrorMessage() or reason.type.__name__,
            more=self._unreportedFailures,
        )
        self._lastFailureLog = now
        self._unreportedFailures = 0

    def _serveStale(self, reason: Failure, key: CacheKey) -> object:
        """Every upstream failed: an expired answer, if still allowed, with TTL 30."""
        if reason.check(DNSNameError) and not reason.check(CachedNameError):
            return reason
        entry = self.cache.stale(key)
        if entry is None:
            return reason
        self.stats.stale_served += 1

        def fresh(records: Records) -> Records:
            return [
                dns.RRHeader(r.name.name, r.type, r.cls, STALE_TTL, r.payload, False)
                for r in records
            ]

        if entry.rcode == dns.ENAME:
            return Failure(_nxdomain(fresh(entry.authority)))
        return (fresh(entry.answers), fresh(entry.authority), fresh(entry.additional))

    def _release(self, result: object, key: CacheKey, started: float) -> object:
        """Give the result to every merged question too."""
        self.stats.latency.observe(self._reactor.seconds() - started)
        for d in self._inflight.pop(key, []):
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)
        return result


class _OverTCP(common.ResolverBase):
    """A L{CachingForwarder} seen as a resolver that forwards over TCP."""

    def __init__(self, forwarder: CachingForwarder) -> None:
        common.ResolverBase.__init__(self)
        self.forwarder = forwarder

    def _lookup(self, name: bytes, cls: int, type: int, timeout: object) -> defer.Deferred:
        return self.forwarder.forward(name, cls, type, tcp=True)
