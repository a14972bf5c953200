"""
A small, real upstream DNS server for meshdns's integration tests.

meshdns forwards every name the mesh does not know; to test forwarding, caching,
truncation and failover against something that behaves like a real server (and
not like a mock inside the same reactor), the integration tests run this module
as a separate process::

    python tests/support/fakeupstream.py --port 0 [--address 127.0.0.1] [--fail-mode MODE]

It serves UDP and TCP on the same loopback port (C{--port 0} picks a free one)
and prints C{READY udp=PORT tcp=PORT} on stdout once both sockets listen. It
stops cleanly on SIGTERM or SIGINT. It refuses any address that is not
loopback, and only ever replies to whoever asked.

The zone C{upstream.test.} (names are matched case-insensitively; the
question is echoed as asked, QR and AA are set, RD is copied, EDNS is answered
with EDNS when the query has it):

  - any name below the zone: A C{127.0.0.10}, AAAA C{::10}, TTL 300; other
    types NOERROR with no answer and the SOA in authority (NODATA);
  - C{ttl5.upstream.test.}: the same addresses with TTL 5;
  - a name with any label starting with C{nx} below the zone: NXDOMAIN;
  - C{nodata.upstream.test.}: NODATA for every type;
  - C{servfail.upstream.test.}: SERVFAIL; C{refused.upstream.test.}: REFUSED;
  - C{big.upstream.test.} A: 60 A records C{127.0.1.1 .. 127.0.1.60} (about
    1 KB), so a UDP query without EDNS, or with an EDNS size too small, gets
    TC=1 with an empty answer, while TCP or a large enough EDNS size gets all;
  - C{tc.upstream.test.} A: TC=1 over UDP always, A C{127.0.0.11} over TCP;
  - C{slow.upstream.test.}: a normal answer, sent 3 s late without holding up
    other queries; C{blackhole.upstream.test.}: never answered;
  - C{txt.upstream.test.} TXT: C{"fake upstream txt"}; C{upstream.test.} MX:
    C{10 mail.upstream.test.}; C{upstream.test.} SOA: the zone's SOA;
  - C{unknown.upstream.test.} TYPE65280 (a private-use type no software knows):
    one record, C{\\# 4 0a0b0c0d} in RFC 3597 form;
  - C{signed.upstream.test.} and the names below it look like a signed zone to
    a query with DO=1 (whose reply echoes DO, RFC 3225): every answer RRset is
    followed by its RRSIG, a negative answer carries an NSEC record and the
    RRSIGs of the SOA and the NSEC in authority, and NSEC is answered with the
    NSEC record; with DO=0 they are plain names (a real signed zone sends
    DNSSEC records only to DO=1 queries);
  - C{options.upstream.test.}, to a query with EDNS: the usual answer, with the
    reply's OPT record carrying NSID (3) C{fake-upstream}, COOKIE (10) (the
    query's client cookie, else 8 zero bytes, plus a 16-byte server cookie),
    ECS (8) (the query's, with scope = source prefix, else C{192.0.2.0/24}
    scope 24), EDE (15) info-code 0 C{fake upstream}, and option 65001 (local
    use) C{fake upstream}: per-hop options a forwarder must not relay next to
    end-to-end ones it must;
  - the apex for other types: NODATA; any name outside the zone: NXDOMAIN.

Fault labels: any label below the zone may be one of these, and they combine
(C{x.tc-blackhole.delay-1500.upstream.test.} is truncated over UDP after
1.5 s and never answered over TCP); the name otherwise answers as above:

  - C{delay-MS}: the reply, whatever it is, is sent MS milliseconds late (at
    most 10 s), without holding up other queries;
  - C{size-N} (N at most 60000): A is answered with C{ceil(N / 16)} A records
    C{127.1.X.Y} (16 bytes each on the wire), so the encoded reply is at least
    N bytes: over UDP it is truncated (TC=1, no records) past the query's
    limit, over TCP it is whole;
  - C{tc-blackhole}: UDP gets TC=1 with no records, TCP is never answered.

NXDOMAIN and NODATA carry the SOA C{ns.upstream.test. hostmaster.upstream.test.
1 3600 600 86400 60} with TTL 120 (RFC 2308: a negative answer is cached for
min(SOA TTL, SOA minimum) = 60 s).

Counting. Every query received for a name outside C{control.} is counted per
C{(lowercased name with trailing dot, type mnemonic, "udp" or "tcp")}, whatever
the reply (blackholed and slow queries included). The counts are read in band,
through the control zone C{control.}, which is never counted and ignores the
fail mode, so it works even while the server plays dead:

  - C{counts.control.} TXT: one TXT record whose strings, concatenated, are a
    JSON list of C{[name, type, transport, count]}; ask over TCP (it may not
    fit a UDP answer), or use L{read_counts};
  - C{reset.control.}: sets every count back to zero, NOERROR;
  - any other name below C{control.}: NOERROR, empty (a harmless probe).

Extra names (C{--record NAME=IP}, repeatable), for tests that need real
addresses, such as the backends of meshdns's VIP listeners: NAME, in any zone,
answers A (for an IPv4 IP) or AAAA (for an IPv6 one) with TTL 300; the
other type, and other types, are NODATA. They are counted as the zone is.

Fail modes (C{--fail-mode}), for fault tests: C{servfail-all} answers every
counted query with SERVFAIL; C{refused-all} with REFUSED (a server that will
not recurse for us); C{drop-all} never answers; C{wrong-id} sends the normal
answer with the ID plus one (a spoofing attempt a client must ignore);
C{wrong-question-tcp} answers UDP normally but every TCP query with a reply
about another name (C{wrong.upstream.test.}, the question asked with that
name, A C{192.0.2.66}), which a client must not take for the answer. Every
reply of every mode has QR and AA set (the zone is authoritative), so a
forwarder's AA scrubbing is really exercised.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import signal
import socket
import struct
import sys
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY.TXT import TXT

ZONE = dns.name.from_text("upstream.test.")
CONTROL = dns.name.from_text("control.")
SOA = "ns.upstream.test. hostmaster.upstream.test. 1 3600 600 86400 60"
SOA_TTL = 120
TTL = 300
SLOW_DELAY = 3.0
FAIL_MODES = ("servfail-all", "refused-all", "drop-all", "wrong-id", "wrong-question-tcp")
#: The owner of the reply C{wrong-question-tcp} sends, and its address.
WRONG_NAME = dns.name.from_text("wrong.upstream.test.")
WRONG_ADDRESS = "192.0.2.66"
#: Bounds of the fault labels C{delay-MS} and C{size-N}.
MAX_DELAY_MS = 10_000
MAX_SIZE = 60_000
#: Wire bytes of one A record with a compressed owner: pointer, type, class,
#: TTL, length, address.
A_RECORD_SIZE = 16
#: The private-use type of C{unknown.upstream.test.} (RFC 6895 section 3.1).
UNKNOWN_TYPE = 65280
UNKNOWN_RDATA = r"\# 4 0a0b0c0d"
#: An EDNS option code of the local/experimental range (RFC 6891 section 9).
UNKNOWN_OPTION = 65001
NSID = b"fake-upstream"
SERVER_COOKIE = bytes(range(16))
RRSIG_FIELDS = "13 3 {ttl} 20300101000000 20200101000000 12345 upstream.test. ZmFrZSBzaWduYXR1cmU="
NSEC_NEXT = "zz.upstream.test."
#: The UDP answer limit for queries without EDNS (RFC 1035).
CLASSIC_UDP_PAYLOAD = 512
#: The longest a single TXT string may be.
TXT_CHUNK = 255

#: How often blocking socket calls wake up to notice a stop request.
_POLL = 0.2
#: An idle TCP client is dropped after this long, so that no thread lives forever.
_TCP_IDLE = 30.0

Counts = dict[tuple[str, str, str], int]


@dataclass(frozen=True)
class Reply:
    """
    What to send back for one query.

    @ivar message: the answer, or L{None} to never answer.
    @ivar delay: seconds to wait before sending it.
    """

    message: dns.message.Message | None
    delay: float = 0.0


def _name(relative: str) -> dns.name.Name:
    return dns.name.from_text(relative, ZONE)


_BIG = _name("big")
_TC = _name("tc")
_SLOW = _name("slow")
_BLACKHOLE = _name("blackhole")
_TTL5 = _name("ttl5")
_NODATA = _name("nodata")
_SERVFAIL = _name("servfail")
_REFUSED = _name("refused")
_TXT = _name("txt")
_UNKNOWN = _name("unknown")
_SIGNED = _name("signed")
_OPTIONS = _name("options")
_COUNTS = dns.name.from_text("counts", CONTROL)
_RESET = dns.name.from_text("reset", CONTROL)


class FakeUpstream:
    """
    The zone's behaviour and the query counts, independent of sockets, so that
    it can be reasoned about (and tested) one query at a time.
    """

    def __init__(
        self, fail_mode: str | None = None, records: dict[str, list[str]] | None = None
    ) -> None:
        """
        @param fail_mode: one of L{FAIL_MODES}, or L{None} to behave.
        @param records: extra names -> their IP addresses (C{--record}).
        """
        if fail_mode is not None and fail_mode not in FAIL_MODES:
            raise ValueError(f"unknown fail mode {fail_mode!r}")
        self.fail_mode = fail_mode
        self.records = {
            dns.name.from_text(name): [ipaddress.ip_address(a) for a in addresses]
            for name, addresses in (records or {}).items()
        }
        self._counts: Counter[tuple[str, str, str]] = Counter()
        self._lock = threading.Lock()

    def counts(self) -> Counts:
        """A snapshot of the query counts."""
        with self._lock:
            return dict(self._counts)

    def reset(self) -> None:
        """Forget every count."""
        with self._lock:
            self._counts.clear()

    def handle(self, data: bytes, transport: str) -> tuple[bytes | None, float]:
        """
        Answer one packet received over C{transport} (C{"udp"} or C{"tcp"}).

        @return: the wire reply (L{None}: send nothing) and the delay before
            sending it. Unparseable packets and responses are dropped.
        """
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return None, 0.0
        if query.flags & dns.flags.QR:
            return None, 0.0
        reply = self.respond(query, transport)
        if reply.message is None:
            return None, 0.0
        return encode(query, reply.message, transport), reply.delay

    def respond(self, query: dns.message.Message, transport: str) -> Reply:
        """Count C{query} (unless it is a control query) and decide the reply."""
        if query.opcode() != dns.opcode.QUERY:
            return Reply(_response(query, dns.rcode.NOTIMP))
        if len(query.question) != 1:
            return Reply(_response(query, dns.rcode.FORMERR))
        question = query.question[0]
        qname = question.name
        if qname.is_subdomain(CONTROL):
            return Reply(self._control(query, qname))
        key = (qname.to_text().lower(), dns.rdatatype.to_text(question.rdtype), transport)
        with self._lock:
            self._counts[key] += 1
        if self.fail_mode == "drop-all":
            return Reply(None)
        if self.fail_mode == "servfail-all":
            return Reply(_response(query, dns.rcode.SERVFAIL))
        if self.fail_mode == "refused-all":
            return Reply(_response(query, dns.rcode.REFUSED))
        if self.fail_mode == "wrong-question-tcp" and transport == "tcp":
            return Reply(_wrong_question(query))
        recorded = self.records.get(qname)
        reply = answer(query, transport) if recorded is None else _recorded(query, recorded)
        if self.fail_mode == "wrong-id" and reply.message is not None:
            reply.message.id = (query.id + 1) & 0xFFFF
        return reply

    def _control(self, query: dns.message.Message, qname: dns.name.Name) -> dns.message.Message:
        response = _response(query, dns.rcode.NOERROR)
        if qname == _RESET:
            self.reset()
        elif qname == _COUNTS and query.question[0].rdtype == dns.rdatatype.TXT:
            rows = [[*key, n] for key, n in sorted(self.counts().items())]
            text = json.dumps(rows, separators=(",", ":")).encode("ascii")
            chunks = [text[i : i + TXT_CHUNK] for i in range(0, len(text), TXT_CHUNK)]
            rdata = TXT(dns.rdataclass.IN, dns.rdatatype.TXT, chunks)
            response.answer.append(dns.rrset.from_rdata(qname, 0, rdata))
        return response


def _recorded(
    query: dns.message.Message, addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address]
) -> Reply:
    """The answer for a C{--record} name: its addresses of the asked family."""
    response = _response(query, dns.rcode.NOERROR)
    rdtype = query.question[0].rdtype
    version = {dns.rdatatype.A: 4, dns.rdatatype.AAAA: 6}.get(rdtype)
    matching = [str(a) for a in addresses if a.version == version]
    if matching:
        response.answer.append(
            dns.rrset.from_text_list(query.question[0].name, TTL, "IN", rdtype, matching)
        )
    return Reply(response)


def _wrong_question(query: dns.message.Message) -> dns.message.Message:
    """A well-formed reply with the query's ID, about L{WRONG_NAME} instead."""
    response = _response(query, dns.rcode.NOERROR)
    asked = query.question[0]
    response.question = [dns.rrset.RRset(WRONG_NAME, asked.rdclass, asked.rdtype)]
    response.answer.append(dns.rrset.from_text(WRONG_NAME, TTL, "IN", "A", WRONG_ADDRESS))
    return response


def _response(query: dns.message.Message, rcode: dns.rcode.Rcode) -> dns.message.Message:
    """A reply skeleton: ID, question, RD, EDNS and DO copied, QR and AA set."""
    response = dns.message.make_response(query, our_payload=4096)
    response.flags |= dns.flags.AA
    response.set_rcode(rcode)
    if query.ednsflags & dns.flags.DO:
        response.ednsflags |= dns.flags.DO
    return response


def _negative(query: dns.message.Message, rcode: dns.rcode.Rcode) -> dns.message.Message:
    """NXDOMAIN or NODATA, with the zone's SOA so that it can be cached."""
    response = _response(query, rcode)
    response.authority.append(dns.rrset.from_text(ZONE, SOA_TTL, "IN", "SOA", SOA))
    return response


@dataclass(frozen=True)
class Faults:
    """
    The fault labels of a name (see the module docstring).

    @ivar delay: seconds to hold the reply back.
    @ivar size: the least size of an A answer, in bytes, or 0.
    @ivar tc_blackhole: truncate over UDP, never answer over TCP.
    """

    delay: float = 0.0
    size: int = 0
    tc_blackhole: bool = False

    @classmethod
    def of(cls, qname: dns.name.Name) -> Faults:
        """The faults that C{qname}'s labels below the zone ask for."""
        delay, size, tc_blackhole = 0.0, 0, False
        for raw in qname.relativize(ZONE).labels:
            label = raw.decode("ascii", "replace").lower()
            kind, _, number = label.partition("-")
            if kind == "delay" and number.isdigit():
                delay = min(int(number), MAX_DELAY_MS) / 1000
            elif kind == "size" and number.isdigit():
                size = min(int(number), MAX_SIZE)
            elif label == "tc-blackhole":
                tc_blackhole = True
        return cls(delay, size, tc_blackhole)


def answer(query: dns.message.Message, transport: str) -> Reply:
    """
    The zone's answer to a one-question query, as the module docstring lists,
    with the name's fault labels applied.
    """
    qname = query.question[0].name
    if not qname.is_subdomain(ZONE):
        return Reply(_negative(query, dns.rcode.NXDOMAIN))
    faults = Faults.of(qname)
    if faults.tc_blackhole and transport == "tcp":
        return Reply(None)
    reply = _zone_answer(query, transport, faults)
    if faults.tc_blackhole and reply.message is not None:
        reply.message.answer.clear()
        reply.message.authority.clear()
        reply.message.flags |= dns.flags.TC
    if reply.message is not None and _signed(query):
        _sign(reply.message)
    if reply.message is not None and qname == _OPTIONS and query.edns >= 0:
        reply.message.use_edns(0, reply.message.ednsflags, 4096, options=_reply_options(query))
    return Reply(reply.message, max(reply.delay, faults.delay))


def _signed(query: dns.message.Message) -> bool:
    """Whether the reply to C{query} gets DNSSEC records."""
    return bool(query.ednsflags & dns.flags.DO) and query.question[0].name.is_subdomain(_SIGNED)


def _sign(response: dns.message.Message) -> None:
    """
    Make C{response} look signed: an RRSIG after every answer RRset, and for a
    negative answer an NSEC (with RRSIGs for it and the SOA) in authority. The
    signatures are not valid; only their presence matters to a forwarder.
    """
    for section in (response.answer, response.authority):
        for rrset in list(section):
            section.append(_rrsig(rrset))
    if not response.answer and response.authority:
        nsec = dns.rrset.from_text(
            response.question[0].name, SOA_TTL, "IN", "NSEC", f"{NSEC_NEXT} A AAAA RRSIG NSEC"
        )
        response.authority += [nsec, _rrsig(nsec)]


def _rrsig(rrset: dns.rrset.RRset) -> dns.rrset.RRset:
    """A (fake) RRSIG covering C{rrset}."""
    covered = dns.rdatatype.to_text(rrset.rdtype)
    rdata = f"{covered} {RRSIG_FIELDS.format(ttl=rrset.ttl)}"
    return dns.rrset.from_text(rrset.name, rrset.ttl, "IN", "RRSIG", rdata)


def _reply_options(query: dns.message.Message) -> list[dns.edns.Option]:
    """The EDNS options of C{options.upstream.test.} (see the module docstring)."""
    asked = {option.otype: option for option in query.options}
    cookie = asked.get(dns.edns.OptionType.COOKIE)
    client_cookie = cookie.client if isinstance(cookie, dns.edns.CookieOption) else bytes(8)
    ecs = asked.get(dns.edns.OptionType.ECS)
    if isinstance(ecs, dns.edns.ECSOption):
        subnet = dns.edns.ECSOption(ecs.address, ecs.srclen, ecs.srclen)
    else:
        subnet = dns.edns.ECSOption("192.0.2.0", 24, 24)
    return [
        dns.edns.NSIDOption(NSID),
        dns.edns.CookieOption(client_cookie, SERVER_COOKIE),
        subnet,
        dns.edns.EDEOption(dns.edns.EDECode.OTHER, "fake upstream"),
        dns.edns.GenericOption(UNKNOWN_OPTION, b"fake upstream"),
    ]


def _zone_answer(query: dns.message.Message, transport: str, faults: Faults) -> Reply:
    """The answer for a name inside the zone, before fault labels and signing."""
    question = query.question[0]
    qname, rdtype = question.name, question.rdtype
    if any(label.lower().startswith(b"nx") for label in qname.relativize(ZONE).labels):
        return Reply(_negative(query, dns.rcode.NXDOMAIN))
    if qname == _BLACKHOLE:
        return Reply(None)
    if qname == _SERVFAIL:
        return Reply(_response(query, dns.rcode.SERVFAIL))
    if qname == _REFUSED:
        return Reply(_response(query, dns.rcode.REFUSED))
    records = _records(qname, rdtype, faults)
    if not records:
        return Reply(_negative(query, dns.rcode.NOERROR))
    response = _response(query, dns.rcode.NOERROR)
    ttl = 5 if qname == _TTL5 else TTL
    response.answer.append(dns.rrset.from_text_list(qname, ttl, "IN", rdtype, records))
    if qname == _TC and transport == "udp":
        response.answer.clear()
        response.flags |= dns.flags.TC
    return Reply(response, SLOW_DELAY if qname == _SLOW else 0.0)


def _records(qname: dns.name.Name, rdtype: dns.rdatatype.RdataType, faults: Faults) -> list[str]:
    """The rdata texts of C{qname}/C{rdtype}; empty means NODATA."""
    if qname == ZONE:
        return {
            dns.rdatatype.MX: ["10 mail.upstream.test."],
            dns.rdatatype.SOA: [SOA],
        }.get(rdtype, [])
    if qname == _NODATA:
        return []
    if rdtype == dns.rdatatype.TXT and qname == _TXT:
        return ['"fake upstream txt"']
    if rdtype == UNKNOWN_TYPE and qname == _UNKNOWN:
        return [UNKNOWN_RDATA]
    if rdtype == dns.rdatatype.NSEC and qname.is_subdomain(_SIGNED):
        return [f"{NSEC_NEXT} A AAAA RRSIG NSEC"]
    if rdtype == dns.rdatatype.A:
        if faults.size:
            count = -(-faults.size // A_RECORD_SIZE)
            return [f"127.1.{i // 256}.{i % 256}" for i in range(count)]
        if qname == _BIG:
            return [f"127.0.1.{i}" for i in range(1, 61)]
        if qname == _TC:
            return ["127.0.0.11"]
        return ["127.0.0.10"]
    if rdtype == dns.rdatatype.AAAA:
        return ["::10"]
    return []


def encode(query: dns.message.Message, response: dns.message.Message, transport: str) -> bytes:
    """
    Encode C{response}; over UDP, an answer longer than the query allows (512
    bytes, or its EDNS payload size) becomes TC=1 with every section emptied,
    as a real server does, so that the client retries over TCP.
    """
    if transport != "udp":
        # Over TCP the EDNS payload size does not apply (RFC 6891 6.2.3);
        # dnspython would otherwise hold a response to the query's.
        return response.to_wire(max_size=65535)
    limit = CLASSIC_UDP_PAYLOAD if query.edns < 0 else max(CLASSIC_UDP_PAYLOAD, query.payload)
    try:
        return response.to_wire(max_size=limit)
    except dns.exception.TooBig:
        response.answer.clear()
        response.authority.clear()
        response.additional.clear()
        response.flags |= dns.flags.TC
        return response.to_wire(max_size=limit)


def read_counts(address: str, port: int, timeout: float = 5.0) -> Counts:
    """Ask a running fake upstream for its counts, over TCP (see the module docstring)."""
    query = dns.message.make_query(_COUNTS, dns.rdatatype.TXT)
    response = dns.query.tcp(query, address, port=port, timeout=timeout)
    (rdata,) = response.answer[0]
    rows = json.loads(b"".join(rdata.strings).decode())
    return {(name, rdtype, transport): n for name, rdtype, transport, n in rows}


def reset_counts(address: str, port: int, timeout: float = 5.0) -> None:
    """Set a running fake upstream's counts back to zero."""
    query = dns.message.make_query(_RESET, dns.rdatatype.A)
    dns.query.tcp(query, address, port=port, timeout=timeout)


class Server:
    """
    L{FakeUpstream} on a UDP and a TCP socket sharing one loopback port, served
    by daemon threads (one for UDP, one per TCP connection, one per delayed
    reply), so that a slow answer never holds up the others.
    """

    def __init__(self, upstream: FakeUpstream, address: str = "127.0.0.1", port: int = 0) -> None:
        """
        @param address: a loopback address (anything else is refused).
        @param port: the port for both UDP and TCP; 0 picks a free one.
        """
        if not ipaddress.ip_address(address).is_loopback:
            raise ValueError(f"{address} is not a loopback address")
        self.upstream = upstream
        self.address = address
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._udp, self._tcp = _bind_pair(address, port)
        self.port: int = self._udp.getsockname()[1]

    def start(self) -> None:
        """Serve in the background."""
        for target in (self._serve_udp, self._serve_tcp):
            thread = threading.Thread(target=target, daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self) -> None:
        """Stop serving, close both sockets and every open TCP connection."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=2 * _POLL + 1)
        self._udp.close()
        self._tcp.close()
        with self._connections_lock:
            for connection in self._connections:
                with contextlib.suppress(OSError):  # the client may be gone already
                    connection.shutdown(socket.SHUT_RDWR)

    def _later(self, delay: float, send: Callable[..., None], *args: object) -> None:
        """Call C{send(*args)} now, or after C{delay} on its own thread."""
        if delay <= 0:
            send(*args)
            return
        timer = threading.Timer(delay, send, args)
        timer.daemon = True
        timer.start()

    def _serve_udp(self) -> None:
        self._udp.settimeout(_POLL)
        while not self._stopping.is_set():
            try:
                data, peer = self._udp.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            reply, delay = self.upstream.handle(data, "udp")
            if reply is not None:
                self._later(delay, self._send_udp, reply, peer)

    def _send_udp(self, reply: bytes, peer: tuple) -> None:
        try:
            self._udp.sendto(reply, peer)
        except OSError:
            pass  # the socket closed while a slow reply waited: nobody listens

    def _serve_tcp(self) -> None:
        self._tcp.settimeout(_POLL)
        while not self._stopping.is_set():
            try:
                connection, _ = self._tcp.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve_connection, args=(connection,), daemon=True).start()

    def _serve_connection(self, connection: socket.socket) -> None:
        """Read length-prefixed queries until the client closes or idles out."""
        lock = threading.Lock()

        def send(reply: bytes) -> None:
            with lock:
                try:
                    connection.sendall(struct.pack("!H", len(reply)) + reply)
                except OSError:
                    pass  # the client went away before a slow reply

        connection.settimeout(_TCP_IDLE)
        with self._connections_lock:
            self._connections.add(connection)
        try:
            while not self._stopping.is_set():
                try:
                    (length,) = struct.unpack("!H", _recv_exactly(connection, 2))
                    data = _recv_exactly(connection, length)
                except (OSError, EOFError):
                    return
                reply, delay = self.upstream.handle(data, "tcp")
                if reply is not None:
                    self._later(delay, send, reply)
        finally:
            with self._connections_lock:
                self._connections.discard(connection)
            connection.close()


def _recv_exactly(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def _bind_pair(address: str, port: int, attempts: int = 20) -> tuple[socket.socket, socket.socket]:
    """
    Bind UDP and TCP sockets to the same port. With C{port} 0, the port the
    kernel picks for UDP may be taken for TCP, so a few tries are allowed.
    """
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    for _ in range(attempts if port == 0 else 1):
        udp = socket.socket(family, socket.SOCK_DGRAM)
        tcp = socket.socket(family, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            udp.bind((address, port))
            tcp.bind((address, udp.getsockname()[1]))
            tcp.listen(64)
        except OSError:
            udp.close()
            tcp.close()
            if port != 0:
                raise
            continue
        return udp, tcp
    raise OSError(f"no port free for both UDP and TCP on {address}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="UDP and TCP port; 0 picks one")
    parser.add_argument("--address", default="127.0.0.1", help="loopback address to bind")
    parser.add_argument("--fail-mode", choices=FAIL_MODES, help="misbehave, for fault tests")
    parser.add_argument(
        "--record",
        action="append",
        default=[],
        metavar="NAME=IP",
        help="answer NAME with IP (A or AAAA), in any zone; repeatable",
    )
    args = parser.parse_args(argv)
    records: dict[str, list[str]] = {}
    for record in args.record:
        name, sep, address = record.partition("=")
        if not sep or not name:
            parser.error(f"--record {record!r}: expected NAME=IP")
        records.setdefault(name, []).append(address)
    try:
        server = Server(FakeUpstream(args.fail_mode, records), args.address, args.port)
    except (ValueError, OSError) as e:
        parser.error(str(e))
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    server.start()
    print(f"READY udp={server.port} tcp={server.port}", flush=True)
    while not stop.wait(1.0):
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
