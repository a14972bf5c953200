# -*- test-case-name: tests.unit.dns.test_fastpath,tests.unit.dns.test_server -*-
"""
The DNS server: a L{DNSServerFactory} subclass that answers what its UDP and
TCP protocols (L{meshdns_plugin.dns.protocols}) hand it.

Every packet is read once at the wire level (L{meshdns_plugin.dns.message}),
then answered by the first of:
  1. the reply memo (UDP: the same packet but for its ID, answered before);
  2. the fast path (L{meshdns_plugin.dns.fastpath}): mesh A/AAAA answers and
     cache hits, from bytes;
  3. the local resolvers through Twisted Names (the mesh authority for PTR,
     ExternalName aliases and answers that need truncation; an embedding
     application's own authorities), when one of them may answer;
  4. the caching forwarder, at the wire level: the client's question goes
     upstream as asked and the reply comes back as the upstream sent it.

Stock L{twisted.names.server.DNSServerFactory} is wrong for a proxy in ways
this module fixes:
  - an upstream SERVFAIL, REFUSED or timeout reaches the client as such, not
    as NXDOMAIN; upstream replies are passed on, never decoded and encoded
    again (unknown types and DNSSEC records would not survive it);
  - RD and CD are echoed, and DO in the OPT record (RFC 3225); AA is set on
    every mesh answer (empty ones included) and never on a forwarded one;
  - UDP answers longer than 512 bytes (or the client's EDNS size, at most
    1232) are truncated with TC=1, whole records only;
  - QR=1 packets are dropped; REFUSED, NOTIMP, FORMERR and BADVERS replies are
    real responses (QR=1) where stock Twisted echoes the query back with only
    the rcode changed; a query with two OPT records gets FORMERR and one with
    EDNS version above 0 gets BADVERS (RFC 6891);
  - no cache here: the forwarder caches, so a hit is not re-cached (stock
    Twisted re-caches every hit, losing a TTL second each time).
A packet that cannot be read gets FORMERR when its header is readable, and
is dropped otherwise.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from twisted.logger import Logger
from twisted.names import dns, error, server
from twisted.names.resolve import ResolverChain
from twisted.python.failure import Failure

from meshdns_plugin.dns import message as wire
from meshdns_plugin.dns import stats
from meshdns_plugin.dns.authority import MeshAnswer, MeshAuthority
from meshdns_plugin.dns.autopath import Autopath, searched_reply
from meshdns_plugin.dns.cache import render
from meshdns_plugin.dns.clusterauthority import ClusterAuthority, ClusterReply
from meshdns_plugin.dns.fastpath import MAX_UDP_PAYLOAD, FastPath, Route, type_name
from meshdns_plugin.dns.forwarder import CachingForwarder
from meshdns_plugin.dns.message import AA, Query, UpstreamReply
from meshdns_plugin.dns.protocols import MeshDNSStreamProtocol
from meshdns_plugin.dns.views import ViewPath, ViewRouter
from meshdns_plugin.mesh.table import NameTable

_log = Logger()

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
    Decode a query packet with Twisted Names, for the local resolvers.

    @raise ValueError: for anything that is not a well-formed message; Twisted's
        decoder raises several unrelated types, all folded into this one.
    """
    message = dns._EDNSMessage()
    try:
        message.fromStr(data)
    except Exception as e:
        raise ValueError(f"malformed DNS message: {e!r}") from None
    return message


class MeshDNSServerFactory(server.DNSServerFactory):
    """
    A L{DNSServerFactory} with the fixes listed in this module's docstring.

    @ivar fastpath: the L{FastPath} asked first.
    @ivar forwarder: the L{CachingForwarder} that answers the rest, or
        L{None} when the last client resolver is not one (it is then asked
        through Twisted Names like the authorities).
    @ivar views: with per-client views, the L{ViewRouter} that picks each
        query's view by its source address (L{None}: every client gets the
        mesh authority's table).
    @ivar outstanding: queries taken and not yet answered (upstream or in a
        local resolver): a process handing over to a successor waits for
        them (L{meshdns_plugin.dns.handover.Drain}).
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
        per_client_views: bool = False,
        autopath: Autopath | None = None,
        cluster: ClusterAuthority | None = None,
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
        @param per_client_views: pick a view per client (L{views}); needs a
            L{MeshAuthority} first, whose table is the default view's.
        @param autopath: does the clients' searches for them (needs the
            forwarder last and no other local resolver).
        @param cluster: answers NXDOMAIN for the absent names of the
            cluster domain instead of forwarding them.

        The fast path answers mesh names only when a L{MeshAuthority} is the
        first resolver, and cache hits only when a L{CachingForwarder} is the
        last: exactly the cases where the full path would give the same
        answer.
        """
        authorities = list(authorities or [])
        clients = list(clients or [])
        super().__init__(authorities=authorities, clients=clients, verbose=verbose)
        first = authorities[0] if authorities else None
        last = clients[-1] if clients else None
        self.mesh: MeshAuthority | None = first if isinstance(first, MeshAuthority) else None
        self.forwarder: CachingForwarder | None = (
            last if isinstance(last, CachingForwarder) else None
        )
        local = authorities + (clients[:-1] if self.forwarder is not None else clients)
        # Asked through Twisted Names only when one of them may answer.
        self.resolver = ResolverChain(local)
        self.stats = stats.ServerStats()
        self.allow = tuple(allow)
        self.tcp_idle_timeout = tcp_idle_timeout
        self.tcp_max_connections = tcp_max_connections
        self.tcp_max_queries = tcp_max_queries
        self._capReached = False
        self.outstanding = 0
        self._allowed: dict[str, bool] = {}
        self._recursion = wire.RA if self.canRecurse else 0
        self._others = local[1:] if self.mesh is not None else local
        self.autopath = autopath if self.forwarder is not None else None
        self.cluster = cluster
        self.fastpath = self._fastpath(self.mesh, bool(local) and local != [self.mesh])
        self.views: ViewRouter | None = None
        if per_client_views and self.mesh is not None:
            default = ViewPath(self.mesh, self.fastpath, self.resolver)
            self.views = ViewRouter(default, self._view_path)

    def _fastpath(self, authority: MeshAuthority | None, others: bool) -> FastPath:
        forwarder = self.forwarder
        return FastPath(
            authority,
            forwarder.cache if forwarder is not None else None,
            self.stats,
            forwarder.stats if forwarder is not None else None,
            self._recursion,
            others=others,
            autopath=self.autopath,
        )

    def _view_path(self, authority: MeshAuthority) -> ViewPath:
        """A view's own fast path and resolvers, the embedder's authorities included."""
        local = [authority, *self._others]
        return ViewPath(authority, self._fastpath(authority, len(local) > 1), ResolverChain(local))

    def _view(self, proto, address) -> ViewPath:
        """The view of the client of a UDP C{address} or of a TCP C{proto}."""
        assert self.views is not None
        return self.views.path(address[0] if address is not None else proto.peer_host)

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
            if not self._capReached:
                # One line per episode, not one per connection refused.
                self._capReached = True
                _log.warn(
                    "{count} TCP connections open, the most allowed: new ones are closed "
                    "until some end (listen.tcp_max_connections, the open files limit)",
                    count=len(self.connections),
                )
            return None
        if self._capReached and len(self.connections) < self.tcp_max_connections * 0.9:
            self._capReached = False
        return super().buildProtocol(addr)

    def memoized(self, data: bytes, host: str, local_only: bool = False) -> bytes | None:
        """
        The reply to the UDP query C{data} from C{host} if the memo has one:
        what L{BurstUDPPort} tries before L{packetReceived}. L{None} also
        for a host not yet let in: L{packetReceived} decides about it.

        @param local_only: whether it came to a loopback listener (see
            L{on_loopback}).
        """
        if not (local_only or self._allowed.get(host)):
            return None
        if self.views is not None:
            return self.views.path(host).fastpath.memoized(data)
        return self.fastpath.memoized(data)

    @staticmethod
    def _send(proto, data: bytes, address) -> None:
        if address is None:
            proto.writeBytes(data)
        else:
            proto.writeBytes(data, address)

    def packetReceived(self, data: bytes, proto, address=None) -> None:
        """
        Answer C{data}: the single entry point of both protocols (C{address}
        is L{None} over TCP), so that no decoding error escapes either.
        """
        if address is None:
            allowed = proto.peer_allowed
        else:
            allowed = proto.local_only or self.allowed(address[0])
        if not allowed:
            self._refuse(data, proto, address)
            return
        if self.views is None:
            fastpath, search = self.fastpath, True
        else:
            view, search = self.views.route(
                address[0] if address is not None else proto.peer_host
            )
            fastpath = view.fastpath
        if address is not None:
            memoized = fastpath.memoized(data)
            if memoized is not None:
                proto.writeBytes(memoized, address)
                return
        query = wire.read_query(data)
        if query is None:
            self._headerError(data, wire.FORMERR, proto, address)
            return
        if query.problem is not None:
            self._error(query, query.problem, proto, address)
            return
        if query.qclass != wire.CLASS_IN:
            self._error(query, wire.REFUSED, proto, address)
            return
        limit = wire.udp_limit(query, MAX_UDP_PAYLOAD) if address is not None else None
        fast = fastpath.answer(query, limit, data if address is not None else None, search)
        if fast is Route.FORWARD or fast is Route.AUTOPATH:
            self._forward(query, proto, address, limit, fastpath.table, fast is Route.AUTOPATH)
        elif fast is Route.LOCAL:
            try:
                message = parse_query(data)
            except ValueError:
                self._error(query, wire.FORMERR, proto, address)
                return
            self.messageReceived(message, proto, address, query)
        else:
            self._send(proto, fast, address)

    def _error(self, query: Query, rcode: int, proto, address) -> None:
        self.stats.queries[type_name(query.qtype), stats.ERROR] += 1
        self._send(proto, wire.error_reply(query, rcode, self._recursion, MAX_UDP_PAYLOAD), address)

    def _forward(
        self,
        query: Query,
        proto,
        address,
        limit: int | None,
        table: NameTable | None = None,
        search: bool = False,
    ) -> None:
        """
        Have the forwarder answer C{query}, at the wire level; with the table
        of the client's view, the cluster authority first, and with
        C{search}, through autopath.
        """
        cluster = self.cluster
        if table is not None and cluster is not None and not search:
            local = cluster.answer(query, table)
            if local is not None:
                self._cluster_reply(query, local, proto, address, limit)
                return
        forwarder = self.forwarder
        if forwarder is None:
            self._error(query, wire.REFUSED, proto, address)
            return
        asked = [True]
        self.outstanding += 1

        def done(reply: UpstreamReply | None, age: int, fixed_ttl: int | None) -> None:
            self.outstanding -= 1
            if reply is None:
                self._error(query, wire.SERVFAIL, proto, address)
                return
            if isinstance(reply, ClusterReply):
                self._cluster_reply(query, reply, proto, address, limit)
                return
            outcome = stats.CACHE_HIT if asked[0] else stats.FORWARDED
            if reply.rcode in (wire.SERVFAIL, wire.REFUSED):
                outcome = stats.ERROR
            self.stats.queries[type_name(query.qtype), outcome] += 1
            data = render(reply, query, self._recursion, MAX_UDP_PAYLOAD, limit, age, fixed_ttl)
            self._send(proto, data, address)

        if not search or table is None or self.autopath is None:
            forwarder.resolve(query, address is None, done)
        else:

            def answer(records: list[dns.RRHeader], target: bytes, ttl: int) -> None:
                # Instead of done: the query is answered all the same.
                self.outstanding -= 1
                self.stats.queries[type_name(query.qtype), stats.FORWARDED] += 1
                data = searched_reply(
                    query, target, ttl, records, self._recursion, MAX_UDP_PAYLOAD, limit
                )
                self._send(proto, data, address)

            self.autopath.search(query, table, address is None, done, answer)
        asked[0] = False

    def _cluster_reply(
        self, query: Query, reply: ClusterReply, proto, address, limit: int | None
    ) -> None:
        """The cluster authority's NXDOMAIN, authoritative (AA) as kube-dns gives it."""
        self.stats.queries[type_name(query.qtype), stats.MESH] += 1
        data = render(reply, query, self._recursion | AA, MAX_UDP_PAYLOAD, limit)
        self._send(proto, data, address)

    def _refuse(self, data: bytes, proto, address) -> None:
        """REFUSED for a client outside C{allow}, echoing the question if readable."""
        query = wire.read_query(data)
        if query is not None:
            self._error(query, wire.REFUSED, proto, address)
        else:
            self._headerError(data, wire.REFUSED, proto, address)

    def _headerError(self, data: bytes, rcode: int, proto, address) -> None:
        """C{rcode} to a packet with no readable question, or drop it (a response, junk)."""
        reply = wire.header_error_reply(data, rcode)
        if reply is None:
            self.stats.dropped += 1
            return
        self.stats.queries["OTHER", stats.ERROR] += 1
        self._send(proto, reply, address)

    # The full Twisted Names path, for what a local resolver answers.

    def messageReceived(self, message, proto, address=None, query: Query | None = None) -> None:
        """
        Answer a decoded query with the local resolvers; what none of them
        answers is forwarded (C{query} is its wire form).
        """
        if message.answer:
            self.stats.dropped += 1
            return
        if len(message.queries) != 1 or message.opCode != dns.OP_QUERY:
            rcode = dns.EFORMAT if message.opCode == dns.OP_QUERY else dns.ENOTIMP
            self._count(message, stats.ERROR)
            self._reply(proto, message, address, rCode=rcode)
            return
        if message.queries[0].type == dns.ALL_RECORDS:
            self._answerAny(message, proto, address)
            return
        resolver = self.resolver if self.views is None else self._view(proto, address).resolver
        self.outstanding += 1
        d = resolver.query(message.queries[0])
        d.addCallback(self.gotResolverResponse, proto, message, address)
        d.addErrback(self.gotResolverError, proto, message, address, query)
        d.addBoth(self._settled)

    def _settled(self, result: object) -> object:
        """A query of the full path is answered (or forwarded, counted anew)."""
        self.outstanding -= 1
        return result

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
            checkingDisabled=message.checkingDisabled,
            ednsVersion=None if message.ednsVersion is None else 0,
            dnssecOK=message.dnssecOK,
            maxSize=MAX_UDP_PAYLOAD,
        )
        response.queries = message.queries[:]
        response.answers = answers
        response.authority = authority or []
        response.additional = additional or []
        return response

    def _reply(self, protocol, query, address, **kwargs) -> None:
        """
        Answer C{query}: every reply of the full path goes through here (stock
        C{sendReply} is not used), so every one is encoded and truncated the
        same way.
        """
        response = self._responseFromMessage(query, **kwargs)
        if address is None:
            protocol.writeBytes(encode(response, None))
        else:
            payload = 0 if query.ednsVersion is None else query.maxSize
            limit = max(wire.CLASSIC_UDP_PAYLOAD, min(payload, MAX_UDP_PAYLOAD))
            protocol.writeBytes(encode(response, limit), address)

    def _count(self, message, outcome: str) -> None:
        qtype = message.queries[0].type if message.queries else 0
        self.stats.queries[type_name(qtype), outcome] += 1

    def gotResolverResponse(self, response, protocol, message, address) -> None:
        self._count(message, stats.MESH if isinstance(response, MeshAnswer) else stats.FORWARDED)
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

    def gotResolverError(self, failure: Failure, protocol, message, address, query=None) -> None:
        if failure.check(error.DomainError) and self.forwarder is not None and query is not None:
            # No local resolver knows the name: it goes upstream.
            limit = wire.udp_limit(query, MAX_UDP_PAYLOAD) if address is not None else None
            self._forward(query, protocol, address, limit)
            return
        authority = []
        for kind, rcode in _RCODE_FOR_ERROR:
            if failure.check(kind):
                if rcode == dns.ENAME and failure.value.args:
                    authority = list(getattr(failure.value.args[0], "authority", []))
                break
        else:
            rcode = dns.ESERVER
            _log.failure("Unexpected error resolving {query}", failure, query=message.queries)
        self._count(message, stats.ERROR if rcode != dns.ENAME else stats.FORWARDED)
        self._reply(protocol, message, address, rCode=rcode, authority=authority)

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
