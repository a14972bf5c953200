# -*- test-case-name: tests.unit.dns.test_forwarder -*-
"""
CachingForwarder: what the mesh does not answer, forwarded as the client
asked it, and the upstream's reply cached and passed back as it came.

The server calls L{CachingForwarder.resolve} with the client's query as read
from the wire; the upstream query carries the question as asked, the RD and
CD bits, AD (asking the upstream to say whether it validated), and in EDNS
the DO bit and the end-to-end options. The reply is kept as bytes
(L{meshdns_plugin.dns.cache}); every client waiting for it gets it rendered
under its own ID, question, flags and OPT record.

Besides, the forwarder is an ordinary Twisted Names resolver
(L{ResolverBase}), for the mesh authority's ExternalName targets, the VIP
listeners, and applications that embed meshdns: L{_lookup} asks through the
same cache and decodes the reply into Twisted records.

Identical questions in flight share one upstream query; at most
C{max_concurrent} distinct questions are in flight (each holds one socket
at a time, so this also bounds the upstream sockets), and past that the
client gets SERVFAIL at once rather than an unbounded queue. Failures are
logged at most once per L{FAILURE_LOG_INTERVAL}, with a count of the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.names import common, dns

from meshdns_plugin.config import Config, upstream_servers
from meshdns_plugin.dns.cache import STALE_TTL, CacheKey, ResponseCache, cache_key, render
from meshdns_plugin.dns.health import PROBE_MAX_INTERVAL
from meshdns_plugin.dns.message import (
    AD,
    CD,
    CLASS_IN,
    HEADER,
    RD,
    REFUSED,
    SERVFAIL,
    Query,
    UpstreamReply,
    name_to_wire,
    opt_record,
    wire_to_name,
)
from meshdns_plugin.dns.stats import UpstreamStats
from meshdns_plugin.dns.upstream import UpstreamClient

_log = Logger()

#: Seconds between two log lines about upstream failures.
FAILURE_LOG_INTERVAL = 10.0

#: The EDNS UDP payload size offered upstream (DNS Flag Day 2020).
UPSTREAM_PAYLOAD = 1232

#: Seconds a client with a stale answer in the cache waits for the upstream
#: before it gets the stale answer (RFC 8767 section 5's client response
#: timer, 1.8 s: an answer before the stub resolver's own retry).
CLIENT_RESPONSE_TIMEOUT = 1.8

#: What a resolved query is handed: the reply (L{None}: none came, answer
#: SERVFAIL), seconds to take off its TTLs, and a TTL to put on every record
#: instead (L{None}, or L{STALE_TTL} for an answer served stale).
Done = Callable[[UpstreamReply | None, int, int | None], None]


def upstream_query(query: Query) -> bytes:
    """
    The query sent upstream for C{query}, without its ID (each attempt gets
    a random one): the question as the client wrote it, RD and CD as the
    client set them, AD set (RFC 6840 5.7: report whether the answer was
    validated; the reply's AD reaches only clients that may see it), and
    an OPT record with the client's DO bit and end-to-end options.
    """
    flags = (query.flags & (RD | CD)) | AD
    opt = opt_record(UPSTREAM_PAYLOAD, query.do, 0, query.options)
    return HEADER.pack(0, flags, 1, 0, 0, 1)[2:] + query.question + opt


def query_of(key: CacheKey) -> Query:
    """
    A query that asks what C{key} holds (for a refresh nobody asked): the
    name lowercased, the RD, CD and DO bits and the options of the key.
    """
    name, qtype, qclass, bits, options = key
    question = name + qtype.to_bytes(2) + qclass.to_bytes(2)
    do = bool(bits & 1)
    return Query(
        0, bits & (RD | CD), name, qtype, qclass, question, True, UPSTREAM_PAYLOAD, do, options
    )


def plain_query(name: bytes, qtype: int, qclass: int) -> Query:
    """The L{Query} of a Twisted Names lookup: RD set, EDNS without DO."""
    wire = name_to_wire(name)
    return Query(
        0,
        RD,
        wire.lower(),
        qtype,
        qclass,
        wire + qtype.to_bytes(2) + qclass.to_bytes(2),
        True,
        UPSTREAM_PAYLOAD,
        False,
        b"",
    )


class CachingForwarder(common.ResolverBase):
    """
    Forwards questions to upstream servers, in order with failover, and
    caches the replies (see the module docstring).

    @ivar cache: the L{ResponseCache}.
    @ivar stats: request, failure, hit and latency counters.
    @ivar upstream: the L{UpstreamClient} that asks the servers.
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
        probe_max_interval: float = PROBE_MAX_INTERVAL,
        prefetch: bool = True,
    ) -> None:
        """
        @param servers: C{(ip, port)} pairs, tried in this order.
        @param timeout: seconds that bound a whole forward, failover
            included (see L{meshdns_plugin.dns.exchange}).
        @param max_entries: the cache bound.
        @param serve_stale: seconds past expiry an answer may be served when
            no upstream answered within L{CLIENT_RESPONSE_TIMEOUT} or every
            upstream failed; 0 = never.
        @param max_concurrent: distinct questions forwarded at once.
        @param probe_max_interval: the most seconds between two probes of
            an upstream server that is down.
        @param prefetch: refresh an entry asked in the last tenth of its TTL.
        """
        common.ResolverBase.__init__(self)
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self._reactor = reactor
        self.servers = tuple(servers)
        self.timeout = timeout
        self.max_concurrent = max_concurrent
        self.stats = UpstreamStats()
        self.cache = ResponseCache(max_entries, clock=reactor.seconds, serve_stale=serve_stale)
        self.upstream = UpstreamClient(
            self.servers, timeout, reactor, self.stats, probe_max_interval
        )
        self._inflight: dict[CacheKey, list[tuple[Query, Done]]] = {}
        #: Questions whose clients got the stale answer while the refresh goes on.
        self._servedStale: set[CacheKey] = set()
        #: The client response timers running (see L{_startClientTimer}).
        self._clientTimers: dict[CacheKey, IDelayedCall] = {}
        if prefetch:
            self.cache.near_expiry = self._prefetch
        self._lastFailureLog = float("-inf")
        self._unreportedFailures = 0

    @classmethod
    def fromConfig(cls, config: Config, reactor: IReactorTime | None = None) -> CachingForwarder:
        """
        The forwarder that C{config} describes: its servers (or else
        resolv.conf's nameservers), timeout, cache and concurrency bounds.
        """
        servers = upstream_servers(config)
        if not servers:
            _log.warn(
                "No upstream servers (none configured, none in {path}): "
                "names outside the mesh get SERVFAIL",
                path=config.upstream.resolv_conf,
            )
        return cls(
            servers,
            config.upstream.timeout,
            config.cache.max_entries,
            reactor=reactor,
            serve_stale=config.cache.serve_stale,
            max_concurrent=config.upstream.max_concurrent,
            probe_max_interval=config.upstream.probe_max_interval,
            prefetch=config.cache.prefetch,
        )

    def resolve(self, query: Query, tcp: bool, done: Done) -> None:
        """
        Answer C{query} from the cache, or ask upstream (over TCP if C{tcp})
        and call C{done} when the reply comes (at once for a cache hit).
        """
        key = cache_key(query)
        entry = self.cache.get(key)
        if entry is not None:
            self.stats.cache_hits += 1
            done(entry.reply, int(self.cache.clock() - entry.stored_at), None)
            return
        self.stats.cache_misses += 1
        waiting = self._inflight.get(key)
        if waiting is not None:
            if key in self._servedStale and self._serveStale(key, [(query, done)]):
                return
            waiting.append((query, done))
            self._startClientTimer(key)  # the first client to wait on a prefetch
            return
        if not self.servers:
            self._failed(key, [(query, done)], ["no upstream servers configured"])
            return
        if len(self._inflight) >= self.max_concurrent:
            self.stats.rejected += 1
            done(None, 0, None)
            return
        self._forward(key, query, tcp, [(query, done)])

    def _forward(
        self, key: CacheKey, query: Query, tcp: bool, waiters: list[tuple[Query, Done]]
    ) -> None:
        """
        Ask upstream for C{key}; C{waiters} (empty for a prefetch) get the
        reply, or the stale answer if it is late (see L{_clientResponseTimeout}).
        """
        self._inflight[key] = waiters
        self.stats.requests += 1
        started = self._reactor.seconds()
        if waiters:
            self._startClientTimer(key)

        def replied(reply: UpstreamReply | None, failures: list[str]) -> None:
            self.stats.latency.observe(self._reactor.seconds() - started)
            del self._inflight[key]
            self._servedStale.discard(key)
            timer = self._clientTimers.pop(key, None)
            if timer is not None and timer.active():
                timer.cancel()
            if reply is None or reply.rcode in (SERVFAIL, REFUSED):
                self._failed(key, waiters, failures, reply)
                return
            self.cache.put(key, reply)
            for _, waiter in waiters:
                waiter(reply, 0, None)

        self.upstream.ask(upstream_query(query), query.question.lower(), tcp, replied)

    def _startClientTimer(self, key: CacheKey) -> None:
        """
        Start the client response timer of C{key} if a client waits on it,
        none runs yet, and a stale answer could be served when it fires.
        """
        if key in self._clientTimers or self.cache.stale(key) is None:
            return
        self._clientTimers[key] = self._reactor.callLater(
            CLIENT_RESPONSE_TIMEOUT, self._clientResponseTimeout, key
        )

    def _clientResponseTimeout(self, key: CacheKey) -> None:
        """
        No upstream answer within L{CLIENT_RESPONSE_TIMEOUT}: the clients
        waiting get the stale answer now (RFC 8767 section 5), and so does
        every client that asks while the refresh goes on.
        """
        self._clientTimers.pop(key, None)
        waiters = self._inflight.get(key)
        if waiters is None:
            return
        self._servedStale.add(key)
        served = list(waiters)
        if self._serveStale(key, served):
            del waiters[:]

    def _serveStale(self, key: CacheKey, waiters: list[tuple[Query, Done]]) -> bool:
        """Give C{waiters} the stale answer of C{key}, if it is still within C{serve_stale}."""
        stale = self.cache.stale(key)
        if stale is None:
            return False
        self.stats.stale_served += len(waiters)
        for _, waiter in waiters:
            waiter(stale.reply, 0, STALE_TTL)
        return True

    def _prefetch(self, key: CacheKey) -> None:
        """
        Refresh C{key}, asked in the last tenth of its TTL, in the
        background: the next client finds it fresh instead of waiting on the
        upstream. A refresh counts against C{max_concurrent}, and is skipped
        rather than queued when the bound is reached.
        """
        if key in self._inflight or len(self._inflight) >= self.max_concurrent:
            return
        self.stats.prefetches += 1
        self._forward(key, query_of(key), False, [])

    def _failed(
        self,
        key: CacheKey,
        waiters: list[tuple[Query, Done]],
        failures: list[str],
        last: UpstreamReply | None = None,
    ) -> None:
        """Every server failed: an answer served stale if allowed, else the last reply or none."""
        self.stats.failures += 1
        self._reportFailure(key, failures)
        if self._serveStale(key, waiters):
            return
        for _, waiter in waiters:
            waiter(last, 0, None)

    def _reportFailure(self, key: CacheKey, failures: list[str]) -> None:
        """
        Log an upstream failure, at most one line per L{FAILURE_LOG_INTERVAL}:
        an outage must not turn into one log line per query.
        """
        now = self._reactor.seconds()
        if now - self._lastFailureLog < FAILURE_LOG_INTERVAL:
            self._unreportedFailures += 1
            return
        name = wire_to_name(key[0]).decode("ascii", "replace") or "."
        _log.warn(
            "Upstream failed for {name} {type}: {failures}; "
            "{more} more failures since the last report",
            name=name,
            type=dns.QUERY_TYPES.get(key[1], f"TYPE{key[1]}"),
            failures="; ".join(failures) or "no reply",
            more=self._unreportedFailures,
        )
        self._lastFailureLog = now
        self._unreportedFailures = 0

    def close(self) -> None:
        """Stop probing the upstream servers; each query's socket closes with it."""
        self.upstream.stop()

    # Twisted Names' resolver interface.

    def _lookup(self, name: bytes, cls: int, type: int, timeout: object) -> defer.Deferred:
        query = plain_query(name, type, cls if cls else CLASS_IN)
        d: defer.Deferred = defer.Deferred()

        def done(reply: UpstreamReply | None, age: int, fixed_ttl: int | None) -> None:
            if reply is None:
                d.errback(self.exceptionForCode(SERVFAIL)(name))
                return
            message = dns.Message()
            message.fromStr(render(reply, query, 0, UPSTREAM_PAYLOAD, None, age, fixed_ttl))
            records = (*message.answers, *message.authority, *message.additional)
            for record in records:
                record.auth = False
            if message.rCode != dns.OK:
                d.errback(self.exceptionForCode(message.rCode)(message))
                return
            additional = [r for r in message.additional if r.type != dns.OPT]
            d.callback((message.answers, message.authority, additional))

        self.resolve(query, False, done)
        return d
