# -*- test-case-name: tests.test_wire,tests.test_reliability,tests.test_burst_port -*-
"""
The DNS server: a L{DNSServerFactory} subclass and its UDP and TCP protocols.

Stock L{twisted.names.server.DNSServerFactory} is the reference, but it is
wrong for a proxy in ways this module fixes, each in the method named:
  - L{MeshDNSServerFactory.gotResolverError}: an upstream SERVFAIL, REFUSED or
    timeout reaches the client as such, not as NXDOMAIN; NXDOMAIN carries the
    upstream SOA so that clients can cache it (RFC 2308);
  - L{MeshDNSServerFactory._responseFromMessage}: RD is echoed, AA is set on
    every mesh answer (empty ones included), EDNS is answered with EDNS;
  - L{MeshDNSServerFactory._reply}: UDP answers longer than 512 bytes (or
    the client's EDNS size) are truncated with TC=1, whole records only;
  - L{MeshDNSServerFactory.messageReceived}: QR=1 packets are dropped, and
    REFUSED, NOTIMP and FORMERR replies are real responses (QR=1), where stock
    Twisted echoes the query back with only the rcode changed;
  - no cache here: the L{CachingForwarder} caches, so a hit is not re-cached
    (stock Twisted re-caches every hit, losing a TTL second each time).
The protocols never let an exception out: a packet that cannot be parsed gets
FORMERR when its header is readable, and is dropped otherwise.

Before any of that, L{MeshDNSServerFactory.packetReceived} tries the wire fast
path (L{meshdns_plugin.wire}): a plain query for a mesh name or a fresh cache
entry is answered from pre-encoded bytes; everything else takes the path above.
Over UDP, a packet the fast path has answered before (the same bytes but for
the ID) gets the same reply again without even being parsed, while the table
and the cache entry it came from are unchanged; and a L{BurstUDPPort} sends
the replies to a burst of datagrams together.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Sequence

from twisted.internet import protocol, udp
from twisted.logger import Logger
from twisted.names import dns, error, server
from twisted.names.resolve import ResolverChain
from twisted.protocols.basic import Int16StringReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from meshdns_plugin import stats, wire
from meshdns_plugin.authority import MeshAnswer, MeshAuthority
from meshdns_plugin.replymemo import MemoEntry, ReplyMemo
from meshdns_plugin.upstream import CachedNameError, CacheHit, CachingForwarder

#: The largest UDP answer we send, whatever the client offers: DNS Flag Day
#: 2020's value, which avoids IP fragmentation on common paths.
MAX_UDP_PAYLOAD = 1232

#: Most datagrams L{BurstUDPPort} reads before it sends their replies.
MAX_BURST = 256

_log = Logger()

#: Query types counted under their own name; others are counted as OTHER so
#: that junk cannot grow the metrics without bound.
_COUNTED_TYPES = {
    code: dns.QUERY_TYPES[code]
    for code in (dns.A, dns.AAAA, dns.CNAME, dns.MX, dns.NS, dns.PTR, dns.SOA, dns.SRV, dns.TXT)
}
_COUNTED_TYPES[dns.ALL_RECORDS] = "ANY"
_COUNTED_TYPES[65] = "HTTPS"
_COUNTED_TYPES[64] = "SVCB"


def type_name(qtype: int) -> str:
    """The metrics label of a query type."""
    return _COUNTED_TYPES.get(qtype, "OTHER")


_RCODE_FOR_ERROR: tuple[tuple[type[Exception], int], ...] = (
    (error.DNSNameError, dns.ENAME),
    (error.AuthoritativeDomainError, dns.ENAME),
    (error.DNSQueryRefusedError, dns.EREFUSED),
    (error.DNSNotImplementedError, dns.ENOTIMP),
    (error.DNSServerError, dns.ESERVER),
    (error.DNSFormatError, dns.ESERVER),
    (error.DNSUnknownError, dns.ESERVER),
    # Nobody in the chain would answer: we are neither authoritative nor able
    # to recurse for this name.
    (error.DomainError, dns.EREFUSED),
)


def udp_limit(query: dns._EDNSMessage) -> int:
    """The most bytes a UDP answer to C{query} may have."""
    payload = None if query.ednsVersion is None else query.maxSize
    return wire.udp_limit(payload, MAX_UDP_PAYLOAD)


def encode(message: dns._EDNSMessage, limit: int | None) -> bytes:
    """
    Encode C{message}; if it is over C{limit} bytes, drop every record and set
    TC=1, so the client retries over TCP (RFC 2181 section 9: a truncated
    answer must not be taken for a whole one).

    Stock L{dns.Message.toStr} truncates by cutting bytes, mid-record.
    """
    raw = message._toMessage()
    raw.maxSize = 0
    data = raw.toStr()
    if limit is None or len(data) <= limit:
        return data
    raw.answers, raw.authority = [], []
    raw.additional = [r for r in raw.additional if r.type == dns.OPT]
    raw.trunc = 1
    return raw.toStr()


def parse_query(data: bytes) -> dns._EDNSMessage:
    """
    Decode a query packet.

    @raise ValueError: for anything that is not a well-formed message; Twisted's
        decoder raises several unrelated types, all folded into this one.
    """
    message = dns._EDNSMessage()
    try:
        message.fromStr(data)
    except Exception as e:
        raise ValueError(f"malformed DNS message: {e!r}") from None
    return message


class MeshDNSDatagramProtocol(protocol.DatagramProtocol):
    """
    DNS over UDP, serving side only.

    @ivar pending: while a L{BurstUDPPort} reads a burst, the replies to
        send after it; L{None} otherwise (answers that arrive later from the
        upstream are sent at once).
    """

    pending: list[tuple[bytes, tuple[str, int]]] | None = None

    def __init__(self, controller: MeshDNSServerFactory) -> None:
        self.controller = controller

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        self.controller.packetReceived(data, self, addr)

    def writeBytes(self, data: bytes, address: tuple[str, int]) -> None:
        pending = self.pending
        if pending is not None:
            pending.append((data, address))
        else:
            self.transport.write(data, address)


class BurstUDPPort(udp.Port):
    """
    A UDP port that reads every waiting datagram (up to L{MAX_BURST}), then
    sends all their replies back to back.

    Stock L{udp.Port} answers each datagram before it reads the next, so
    under load every reply wakes the client up on its own, and on a virtual
    machine that wake-up (an interrupt to another CPU) costs more than
    answering from the table: sent in a burst, the replies after the first
    find the client awake (bench/README.md: 1.7x the queries per second).
    Replies go straight to C{socket.sendto}, without the five address checks
    of L{udp.Port.write}: the addresses come from C{recvfrom}. A reply the
    kernel will not take (a full buffer) is dropped and counted, as UDP may.
    """

    protocol: MeshDNSDatagramProtocol

    def doRead(self) -> None:
        protocol = self.protocol
        pending: list[tuple[bytes, tuple[str, int]]] = []
        protocol.pending = pending
        recvfrom = self.socket.recvfrom
        size = self.maxPacketSize
        received = protocol.datagramReceived
        memoized = protocol.controller.memoized
        try:
            for _ in range(MAX_BURST):
                try:
                    data, address = recvfrom(size)
                except OSError:
                    # EAGAIN: all read. Anything else (an ICMP error queued
                    # on the socket) concerns no query of this burst.
                    break
                try:
                    reply = memoized(data, address[0])
                    if reply is not None:
                        pending.append((reply, address))
                    else:
                        # IPv6 addresses come with flow info and scope ID.
                        received(data, address[:2])
                except Exception:
                    _log.failure("Unexpected error answering a datagram")
        finally:
            protocol.pending = None
            sendto = self.socket.sendto
            for data, address in pending:
                try:
                    sendto(data, address)
                except OSError:
                    protocol.controller.stats.dropped += 1


class MeshDNSStreamProtocol(Int16StringReceiver, TimeoutMixin):
    """
    DNS over TCP (two-byte length prefix), serving side only.

    A connection that stays silent (or stalls in the middle of a query) for
    the factory's C{tcp_idle_timeout} is aborted, and one is closed after
    C{tcp_max_queries} queries, so slow or greedy clients cannot hold
    connections and buffers for ever.
    """

    def __init__(self, controller: MeshDNSServerFactory) -> None:
        self.controller = controller
        self.queries = 0
        self.peer_allowed = True

    def connectionMade(self) -> None:
        self.controller.connectionMade(self)
        self.peer_allowed = self.controller.allowed(self.transport.getPeer().host)
        self.setTimeout(self.controller.tcp_idle_timeout)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.setTimeout(None)
        self.controller.connectionLost(self)

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        super().dataReceived(data)

    def timeoutConnection(self) -> None:
        self.transport.abortConnection()

    def stringReceived(self, data: bytes) -> None:
        self.queries += 1
        if self.queries > self.controller.tcp_max_queries:
            self.transport.loseConnection()
            return
        self.controller.packetReceived(data, self)

    def writeBytes(self, data: bytes) -> None:
        if self.transport is not None and self.connected:
            self.sendString(data)


class MeshDNSServerFactory(server.DNSServerFactory):
    """
    A L{DNSServerFactory} with the fixes listed in this module's docstring.
    """

    _messageFactory = dns._EDNSMessage
    protocol = MeshDNSStreamProtocol

    def __init__(
        self,
        authorities=None,
        clients=None,
        verbose: int = 0,
        *,
        allow: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
        tcp_idle_timeout: float = 10.0,
        tcp_max_connections: int = 256,
        tcp_max_queries: int = 100,
    ) -> None:
        """
        @param authorities: resolvers that answer authoritatively (the mesh).
        @param clients: resolvers that recurse (the caching forwarder); their
            presence sets RA.
        @param allow: client networks that may query besides loopback; others
            get REFUSED before any resolver, cache or upstream is touched.
        @param tcp_idle_timeout: seconds a TCP connection may stay silent.
        @param tcp_max_connections: concurrent TCP connections; more are
            closed as soon as they are accepted.
        @param tcp_max_queries: queries per TCP connection.

        The fast path answers mesh names only when a L{MeshAuthority} is the
        first resolver of the chain, and cache hits only when a
        L{CachingForwarder} is the last: exactly the cases where the full
        path would give the same answer.
        """
        super().__init__(authorities=authorities, clients=clients, verbose=verbose)
        resolvers = self.resolver.resolvers
        first = resolvers[0] if resolvers else None
        last = resolvers[-1] if resolvers else None
        self.mesh: MeshAuthority | None = first if isinstance(first, MeshAuthority) else None
        self.forwarder: CachingForwarder | None = (
            last if isinstance(last, CachingForwarder) else None
        )
        # Clients that ask over TCP are forwarded over TCP (UDP over UDP).
        self.streamResolver = (
            ResolverChain([*resolvers[:-1], self.forwarder.overTCP()])
            if self.forwarder is not None
            else self.resolver
        )
        self.stats = stats.ServerStats()
        self.allow = tuple(allow)
        self.tcp_idle_timeout = tcp_idle_timeout
        self.tcp_max_connections = tcp_max_connections
        self.tcp_max_queries = tcp_max_queries
        self._allowed: dict[str, bool] = {}
        self._recursion = wire.RA if self.canRecurse else 0
        self._rotation = 0
        self._opt = wire.opt_record(MAX_UDP_PAYLOAD)
        forwarder = self.forwarder
        self.memo = ReplyMemo(
            self.mesh,
            forwarder.cache.clock if forwarder is not None else time.monotonic,
            self.stats,
            forwarder.stats if forwarder is not None else None,
        )

    #: Bound of the memo of per-address access decisions.
    MAX_ACCESS_MEMO = 4096

    def allowed(self, host: str) -> bool:
        """Whether a client at C{host} may query: loopback, or in C{allow}."""
        decision = self._allowed.get(host)
        if decision is None:
            try:
                address = ipaddress.ip_address(host.split("%", 1)[0])
            except ValueError:
                decision = False
            else:
                if address.version == 6 and address.ipv4_mapped is not None:
                    address = address.ipv4_mapped
                decision = address.is_loopback or any(address in n for n in self.allow)
            if len(self._allowed) >= self.MAX_ACCESS_MEMO:
                self._allowed.clear()
            self._allowed[host] = decision
        return decision

    def buildProtocol(self, addr):
        """A TCP protocol, or L{None} (close at once) past C{tcp_max_connections}."""
        if len(self.connections) >= self.tcp_max_connections:
            self.stats.dropped += 1
            return None
        return super().buildProtocol(addr)

    def fastReply(self, q: wire.Question, udp: bool, packet: bytes | None = None) -> bytes | None:
        """
        The reply to C{q} from pre-encoded bytes, or L{None} when the full
        path must answer (not a mesh name or fresh cache entry, or the reply
        would need truncation).

        @param packet: the UDP query packet C{q} comes from: when given, the
            reply (every rotation of it) is remembered in L{memo}.
        """
        if q.qclass != wire.CLASS_IN:
            return None
        limit = wire.udp_limit(q.edns_payload, MAX_UDP_PAYLOAD) if udp else None
        mesh = self.mesh
        if mesh is not None and (q.qtype == wire.TYPE_A or q.qtype == wire.TYPE_AAAA):
            found = mesh.table.wire.lookup(q.key, q.qtype)
            if found is not None:
                rings = found[0] if q.question[:-4] == q.key else found[1]
                self._rotation += 1
                index = self._rotation % len(rings)
                flags = wire.QR | wire.AA | self._recursion
                # The memo keeps every rotation: encode them all at once, the
                # one sent included; without it, only the one sent.
                shown = rings if packet is not None else (rings[index],)
                replies = [
                    wire.reply(q, flags, (count, 0, 0), section, self._opt, limit)
                    for section, count in shown
                ]
                data = replies[index if packet is not None else 0]
                if data is not None:
                    counter = (type_name(q.qtype), stats.MESH)
                    self.stats.queries[counter] += 1
                    if packet is not None and None not in replies:
                        tails = tuple(r[2:] for r in replies)  # type: ignore[index]
                        self.memo.remember(packet, MemoEntry(tails, counter))
                return data
        forwarder = self.forwarder
        if forwarder is not None:
            if mesh is not None and mesh.table.aliases:
                # An alias (ExternalName) has no pre-encoded answer, but the
                # authority answers it: an answer cached while the name was
                # forwarded, before a reload made it an alias, must not be.
                if mesh.table.cname(wire.wire_to_name(q.key)) is not None:
                    return None
            entry = forwarder.cache.get((q.key, q.qtype, q.qclass))
            if entry is not None and entry.encoded is not None:
                elapsed = int(forwarder.cache.clock() - entry.stored_at)
                encoded = entry.encoded
                data = wire.reply(
                    q,
                    wire.QR | self._recursion | entry.rcode,
                    encoded.counts,
                    encoded.aged(elapsed),
                    self._opt,
                    limit,
                )
                if data is not None:
                    forwarder.stats.cache_hits += 1
                    counter = (type_name(q.qtype), stats.CACHE_HIT)
                    self.stats.queries[counter] += 1
                    if packet is not None:
                        fresh_until = entry.stored_at + elapsed + 1
                        self.memo.remember(packet, MemoEntry((data[2:],), counter, fresh_until))
                return data
        return None

    def memoized(self, data: bytes, host: str) -> bytes | None:
        """
        The reply to the UDP query C{data} from C{host} if L{memo} has one:
        what L{BurstUDPPort} tries before L{packetReceived}. L{None} also
        for a host not yet let in: L{packetReceived} decides about it.
        """
        if not self._allowed.get(host):
            return None
        return self.memo.reply(data)

    def _responseFromMessage(
        self, message, rCode=dns.OK, answers=None, authority=None, additional=None, auth=False
    ):
        answers = answers or []
        response = dns._EDNSMessage(
            id=message.id,
            answer=True,
            opCode=message.opCode,
            recDes=message.recDes,
            recAv=self.canRecurse,
            rCode=rCode,
            auth=auth or any(r.isAuthoritative() for r in answers),
            ednsVersion=None if message.ednsVersion is None else 0,
            maxSize=MAX_UDP_PAYLOAD,
        )
        response.queries = message.queries[:]
        response.answers = answers
        response.authority = authority or []
        response.additional = additional or []
        return response

    def _reply(self, protocol, query, address, **kwargs) -> None:
        """
        Answer C{query}: every reply goes through here (stock C{sendReply}
        is not used), so every reply is encoded and truncated the same way.
        """
        response = self._responseFromMessage(query, **kwargs)
        if address is None:
            protocol.writeBytes(encode(response, None))
        else:
            protocol.writeBytes(encode(response, udp_limit(query)), address)

    def handleQuery(self, message, protocol, address):
        """
        Resolve the first question, through C{streamResolver} when the client
        asked over TCP.
        """
        resolver = self.resolver if address is not None else self.streamResolver
        return (
            resolver.query(message.queries[0])
            .addCallback(self.gotResolverResponse, protocol, message, address)
            .addErrback(self.gotResolverError, protocol, message, address)
        )

    def _count(self, message, outcome: str) -> None:
        qtype = message.queries[0].type if message.queries else 0
        self.stats.queries[type_name(qtype), outcome] += 1

    def gotResolverResponse(self, response, protocol, message, address) -> None:
        if isinstance(response, MeshAnswer):
            self._count(message, stats.MESH)
        elif isinstance(response, CacheHit):
            self._count(message, stats.CACHE_HIT)
        else:
            self._count(message, stats.FORWARDED)
        answers, authority, additional = response
        self._reply(
            protocol,
            message,
            address,
            answers=answers,
            authority=authority,
            additional=additional,
            auth=isinstance(response, MeshAnswer),
        )

    def gotResolverError(self, failure: Failure, protocol, message, address) -> None:
        authority = []
        for kind, rcode in _RCODE_FOR_ERROR:
            if failure.check(kind):
                if rcode == dns.ENAME and failure.value.args:
                    authority = list(getattr(failure.value.args[0], "authority", []))
                break
        else:
            rcode = dns.ESERVER
            if not failure.check(TimeoutError, error.DNSQueryTimeoutError):
                _log.failure("Unexpected error resolving {query}", failure, query=message.queries)
        if rcode != dns.ENAME:
            self._count(message, stats.ERROR)
        elif failure.check(CachedNameError):
            self._count(message, stats.CACHE_HIT)
        else:
            self._count(message, stats.FORWARDED)
        self._reply(protocol, message, address, rCode=rcode, authority=authority)

    def messageReceived(self, message, proto, address=None) -> None:
        if message.answer:
            self.stats.dropped += 1
            return
        if message.opCode != dns.OP_QUERY:
            rcode = dns.ENOTIMP
        elif len(message.queries) != 1:
            rcode = dns.EFORMAT
        elif message.queries[0].cls != dns.IN:
            rcode = dns.EREFUSED
        elif message.queries[0].type == dns.ALL_RECORDS:
            self._answerAny(message, proto, address)
            return
        else:
            self.handleQuery(message, proto, address)
            return
        self._count(message, stats.ERROR)
        self._reply(proto, message, address, rCode=rcode)

    def _answerAny(self, message, proto, address) -> None:
        """
        RFC 8482: answer ANY with one synthesized HINFO record, never forwarded
        (ANY is the favourite query of reflection attacks).
        """
        query = message.queries[0]
        ttl = self.mesh.table.ttl if self.mesh is not None else 30
        hinfo = dns.RRHeader(
            query.name.name.lower(),
            dns.HINFO,
            ttl=ttl,
            payload=dns.Record_HINFO(b"RFC8482", b"", ttl),
            auth=True,
        )
        self._count(message, stats.MESH)
        self._reply(proto, message, address, answers=[hinfo])

    def _refuse(self, data: bytes, proto, address) -> None:
        """REFUSED for a client outside C{allow}, echoing the question if readable."""
        question = wire.parse_question(data)
        if question is not None:
            reply = wire.reply(question, wire.QR | dns.EREFUSED, (0, 0, 0), b"", self._opt, None)
        else:
            reply = wire.error_reply(data, dns.EREFUSED)
        if reply is None:
            self.stats.dropped += 1
            return
        self.stats.queries[
            "OTHER" if question is None else type_name(question.qtype), stats.ERROR
        ] += 1
        if address is None:
            proto.writeBytes(reply)
        else:
            proto.writeBytes(reply, address)

    def packetReceived(self, data: bytes, proto, address=None) -> None:
        """
        Answer C{data} on the fast path if possible, else decode it and
        dispatch it; the single entry point of both protocols, so that no
        decoding error escapes either.
        """
        if not (self.allowed(address[0]) if address is not None else proto.peer_allowed):
            self._refuse(data, proto, address)
            return
        if address is not None:
            memoized = self.memoized(data, address[0])
            if memoized is not None:
                proto.writeBytes(memoized, address)
                return
        question = wire.parse_question(data)
        if question is not None:
            fast = self.fastReply(question, address is not None, data if address else None)
            if fast is not None:
                if address is None:
                    proto.writeBytes(fast)
                else:
                    proto.writeBytes(fast, address)
                return
        try:
            message = parse_query(data)
        except ValueError:
            reply = wire.error_reply(data, dns.EFORMAT)
            if reply is None:
                self.stats.dropped += 1
                return
            self.stats.queries["OTHER", stats.ERROR] += 1
            if address is None:
                proto.writeBytes(reply)
            else:
                proto.writeBytes(reply, address)
            return
        self.messageReceived(message, proto, address)
