# -*- test-case-name: tests.unit.dns.test_message -*-
"""
DNS messages read and written at the byte level (RFC 1035 section 4, RFC 6891).

meshdns forwards what it does not answer itself as bytes: a client's query is
read once here (header, question, OPT record) and an upstream reply once
(where each record's TTL sits, the rcode, the SOA of a negative answer, the
OPT record), and neither is ever decoded into record objects and encoded
again. That is what makes forwarding transparent: records of types meshdns
does not know, DNSSEC records, and names inside rdata (compressed or not, as
the upstream wrote them) reach the client byte for byte. It is also what
makes the miss path cheap.

Reading is bounded: a name is at most 255 bytes, a compression pointer is
never followed (skipping a name only needs to find its end), and every
length is checked against the packet before it is used. Bad input gives
L{None} or L{MalformedMessage}, never another exception.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

HEADER = struct.Struct("!HHHHHH")
_TYPE_CLASS = struct.Struct("!HH")
_RR_FIXED = struct.Struct("!HHIH")
_OPTION = struct.Struct("!HH")

#: Header flag bits (RFC 1035 4.1.1, RFC 4035 3.2).
QR, OPCODE, AA, TC, RD, RA, AD, CD = 0x8000, 0x7800, 0x0400, 0x0200, 0x0100, 0x0080, 0x0020, 0x0010
RCODE_MASK = 0x000F

TYPE_A, TYPE_CNAME, TYPE_SOA, TYPE_PTR = 1, 5, 6, 12
TYPE_AAAA, TYPE_OPT, TYPE_ANY = 28, 41, 255
CLASS_IN = 1

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
#: RFC 6891 6.1.3: an extended rcode, 1 in the OPT record's upper bits.
BADVERS = 16

#: The DO bit in the OPT record's TTL field (RFC 3225).
DO = 0x8000

#: EDNS options that belong to one hop and are never relayed: NSID (RFC
#: 5001), COOKIE (RFC 7873), TCP keepalive (RFC 7828), padding (RFC 7830).
#: Every other option (client subnet, extended errors, unknown ones) is
#: end to end and passes through.
HOP_BY_HOP_OPTIONS = frozenset((3, 10, 11, 12))

#: The UDP limit for clients without EDNS (RFC 1035 4.2.1).
CLASSIC_UDP_PAYLOAD = 512


class MalformedMessage(ValueError):
    """A message whose records run past its end or break the format."""


@dataclass(slots=True)
class Query:
    """
    A client's query, as read from the wire.

    Not frozen: one is built per query, and a frozen dataclass takes four
    times as long to build.

    @ivar ident: the client's message ID.
    @ivar flags: the client's header flags.
    @ivar key: the question name in wire format, lowercased (DNS compares
        names in ASCII case only); with C{qtype} and C{qclass} the index key.
    @ivar question: the question section exactly as the client wrote it.
    @ivar edns: whether the query had an OPT record.
    @ivar payload: the client's EDNS UDP size (at least 512), or 512.
    @ivar do: the DNSSEC OK bit.
    @ivar options: the end-to-end EDNS options, encoded, to forward as they are.
    @ivar problem: an rcode to answer at once (FORMERR, NOTIMP, BADVERS), or
        L{None} for a query to resolve.
    """

    ident: int
    flags: int
    key: bytes
    qtype: int
    qclass: int
    question: bytes
    edns: bool
    payload: int
    do: bool
    options: bytes
    problem: int | None = None


def name_end(data: bytes, offset: int) -> int:
    """
    The offset just past the (possibly compressed) name at C{offset}.

    @raise MalformedMessage: if the name runs past the packet or is longer
        than 255 bytes, or has a label type other than 0 and 3 (pointer).
    """
    start = offset
    end = len(data)
    while True:
        if offset >= end:
            raise MalformedMessage("name runs past the end")
        length = data[offset]
        if length == 0:
            return offset + 1
        if length >= 0xC0:
            if offset + 2 > end:
                raise MalformedMessage("pointer runs past the end")
            return offset + 2
        if length > 63:
            raise MalformedMessage("unknown label type")
        offset += 1 + length
        if offset - start > 255:
            raise MalformedMessage("name longer than 255 bytes")


def _question_end(data: bytes, offset: int) -> int | None:
    """The end of an uncompressed question name, or L{None}."""
    end = len(data)
    start = offset
    while offset < end:
        length = data[offset]
        if length == 0:
            offset += 1
            return offset if offset - start <= 255 else None
        if length > 63:
            return None
        offset += 1 + length
    return None


def _split_options(rdata: bytes) -> bytes:
    """
    The end-to-end options of an OPT record's rdata, encoded.

    @raise MalformedMessage: if an option runs past the rdata.
    """
    kept = []
    offset = 0
    end = len(rdata)
    while offset < end:
        if offset + 4 > end:
            raise MalformedMessage("EDNS option header runs past the record")
        code, length = _OPTION.unpack_from(rdata, offset)
        stop = offset + 4 + length
        if stop > end:
            raise MalformedMessage("EDNS option runs past the record")
        if code not in HOP_BY_HOP_OPTIONS:
            kept.append(rdata[offset:stop])
        offset = stop
    return b"".join(kept)


def read_query(data: bytes) -> Query | None:
    """
    Read a client's query.

    @return: L{None} if there is no readable question (the caller then
        answers FORMERR from the header, or drops the packet); a L{Query}
        whose C{problem} is set if it must be refused as it is (not a
        QUERY, with or without a question; several questions, two OPT
        records, an EDNS version above 0, records running past the end).
    """
    if len(data) < 12:
        return None
    ident, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(data)
    if flags & QR:
        return None
    if flags & OPCODE:
        # Not a QUERY: NOTIMP whatever follows the header, which meshdns
        # does not read (RFC 1035 4.1.1; RFC 8906's opcode test sends none).
        query = Query(ident, flags, b"", 0, 0, b"", False, CLASSIC_UDP_PAYLOAD, False, b"")
        query.problem = NOTIMP
        return query
    name_stop = _question_end(data, 12)
    if name_stop is None or name_stop + 4 > len(data):
        return None
    qtype, qclass = _TYPE_CLASS.unpack_from(data, name_stop)
    question_end = name_stop + 4
    query = Query(
        ident,
        flags,
        data[12:name_stop].lower(),
        qtype,
        qclass,
        data[12:question_end],
        False,
        CLASSIC_UDP_PAYLOAD,
        False,
        b"",
    )
    if qdcount != 1:
        query.problem = FORMERR
        return query
    if not (ancount or nscount or arcount):
        if question_end != len(data):
            query.problem = FORMERR
        return query
    try:
        _read_query_records(data, question_end, ancount + nscount, arcount, query)
    except MalformedMessage:
        query.problem = FORMERR
    return query


def _records(data: bytes, offset: int, count: int) -> Iterator[tuple[int, int, int, int, int, int]]:
    """
    C{(start, type, class, TTL, rdata start, end)} of each of the C{count}
    records from C{offset} (the TTL field sits 6 bytes before the rdata).

    @raise MalformedMessage: if a record runs past the packet.
    """
    end = len(data)
    for _ in range(count):
        start = offset
        offset = name_end(data, offset)
        if offset + 10 > end:
            raise MalformedMessage("record runs past the end")
        rtype, rclass, ttl, rdlength = _RR_FIXED.unpack_from(data, offset)
        rdata_start = offset + 10
        offset = rdata_start + rdlength
        if offset > end:
            raise MalformedMessage("rdata runs past the end")
        yield start, rtype, rclass, ttl, rdata_start, offset


def _read_query_records(data: bytes, offset: int, skipped: int, arcount: int, query: Query) -> None:
    """Walk a query's records after its question, reading its OPT record into C{query}."""
    record_end = offset
    for index, (owner, rtype, rclass, ttl, rdata_start, record_end) in enumerate(
        _records(data, offset, skipped + arcount)
    ):
        if rtype != TYPE_OPT or index < skipped:
            continue
        if query.edns or data[owner] != 0:
            # RFC 6891 6.1.1: one OPT record, owned by the root.
            raise MalformedMessage("more than one OPT record, or one not owned by the root")
        query.edns = True
        query.payload = max(rclass, CLASSIC_UDP_PAYLOAD)
        query.do = bool(ttl & DO)
        query.options = _split_options(data[rdata_start:record_end])
        if (ttl >> 16) & 0xFF:
            query.problem = BADVERS
    if record_end != len(data):
        raise MalformedMessage("bytes after the last record")


def opt_record(payload: int, do: bool, extended_rcode: int = 0, options: bytes = b"") -> bytes:
    """An OPT record: version 0, C{payload}, the DO bit, upper rcode bits, options."""
    ttl = (extended_rcode << 24) | (DO if do else 0)
    return b"\x00" + _RR_FIXED.pack(TYPE_OPT, payload, ttl, len(options)) + options


def udp_limit(query: Query, maximum: int) -> int:
    """The most bytes a UDP reply to C{query} may have (RFC 1035, RFC 6891)."""
    if not query.edns:
        return CLASSIC_UDP_PAYLOAD
    return max(CLASSIC_UDP_PAYLOAD, min(query.payload, maximum))


def reply_flags(query: Query, recursion: int, rcode: int) -> int:
    """Header flags of a reply: QR, the opcode, RD and CD copied, RA, the rcode's low bits."""
    return QR | (query.flags & (OPCODE | RD | CD)) | recursion | (rcode & RCODE_MASK)


def error_reply(query: Query, rcode: int, recursion: int, payload: int) -> bytes:
    """
    A reply with no records but the question (and an OPT record if the query
    had one, carrying the upper rcode bits): for FORMERR, NOTIMP, REFUSED,
    SERVFAIL and BADVERS. The question is echoed only for a QUERY, whose
    question section meshdns understands; a reply to another opcode has RA
    clear, since recursion is only offered for QUERY (RFC 8906's opcode
    test counts RA there as a fault).
    """
    question = b"" if query.flags & OPCODE else query.question
    opt = opt_record(payload, query.do, rcode >> 4) if query.edns else b""
    header = HEADER.pack(
        query.ident,
        reply_flags(query, 0 if query.flags & OPCODE else recursion, rcode),
        1 if question else 0,
        0,
        0,
        1 if opt else 0,
    )
    return header + question + opt


def header_error_reply(data: bytes, rcode: int) -> bytes | None:
    """
    A header-only reply with C{rcode} to the packet C{data}, or L{None} if
    C{data} has no readable header or is itself a response (never answer a
    response: two servers would bounce errors at each other for ever).
    """
    if len(data) < HEADER.size:
        return None
    ident, flags = struct.unpack_from("!HH", data)
    if flags & QR:
        return None
    return HEADER.pack(ident, QR | (flags & (OPCODE | RD | CD)) | rcode, 0, 0, 0, 0)


def name_to_wire(name: bytes) -> bytes:
    """C{b"a.example"} -> C{b"\\x01a\\x07example\\x00"}."""
    name = name.rstrip(b".")
    if not name:
        return b"\x00"
    return b"".join(bytes([len(label)]) + label for label in name.split(b".")) + b"\x00"


def wire_to_name(wire: bytes) -> bytes:
    """The inverse of L{name_to_wire} for an uncompressed name."""
    labels = []
    offset = 0
    while wire[offset]:
        length = wire[offset]
        labels.append(wire[offset + 1 : offset + 1 + length])
        offset += 1 + length
    return b".".join(labels)


@dataclass(slots=True)
class UpstreamReply:
    """
    What meshdns needs of an upstream's reply, read once when it arrives.

    @ivar data: the reply as it came, less its OPT record (the upstream's
        OPT is about the upstream hop; the client gets meshdns's own), with
        the additional count lowered to match.
    @ivar rcode: the full rcode, upper bits from the OPT record included.
    @ivar flags: the upstream's header flags.
    @ivar question_end: where the question section ends in C{data}.
    @ivar ttl_offsets: where each record's TTL sits in C{data}.
    @ivar ttls: each of those TTLs as the upstream gave it.
    @ivar min_ttl: the smallest TTL of the records (L{None} without any).
    @ivar negative_ttl: RFC 2308 section 5: the SOA record's TTL capped by
        its MINIMUM field, if the authority section has an SOA.
    @ivar options: the upstream's end-to-end EDNS options (extended errors,
        client subnet, unknown ones), encoded.
    """

    data: bytes
    rcode: int
    flags: int
    question_end: int
    ttl_offsets: tuple[int, ...]
    ttls: tuple[int, ...]
    min_ttl: int | None
    negative_ttl: int | None
    options: bytes

    @property
    def counts(self) -> tuple[int, int, int]:
        """The answer, authority and additional record counts (OPT excluded)."""
        _, _, _, ancount, nscount, arcount = HEADER.unpack_from(self.data)
        return ancount, nscount, arcount


def is_reply_to(data: bytes, ident: int, question: bytes) -> bool:
    """
    Whether C{data} is a reply with ID C{ident} to the question section
    C{question} (lowercase), the name compared case-insensitively: what an
    upstream reply must be to count (anything else may be a spoofing attempt
    and is ignored).
    """
    if len(data) < 12 + len(question):
        return False
    reply_ident, flags, qdcount = struct.unpack_from("!HHH", data)
    return (
        reply_ident == ident
        and flags & QR != 0
        and qdcount == 1
        and data[12 : 12 + len(question)].lower() == question
    )


def read_reply(data: bytes, question_end: int) -> UpstreamReply:
    """
    Read an upstream reply already known to answer our question (see
    L{is_reply_to}), whose question section ends at C{question_end}.

    @raise MalformedMessage: if its records do not parse.
    """
    _, flags, _, ancount, nscount, arcount = HEADER.unpack_from(data)
    end = len(data)
    offset = question_end
    ttl_offsets: list[int] = []
    ttls: list[int] = []
    negative: int | None = None
    opt: tuple[int, int, int, int] | None = None
    for index, (start, rtype, _, ttl, rdata_start, record_end) in enumerate(
        _records(data, offset, ancount + nscount + arcount)
    ):
        if rtype == TYPE_OPT:
            if opt is not None or index < ancount + nscount:
                raise MalformedMessage("OPT record out of place or repeated")
            opt = (start, record_end, ttl, rdata_start)
        else:
            ttl &= 0x7FFFFFFF  # RFC 2181 8: a TTL with the top bit set means 0
            ttl_offsets.append(rdata_start - 6)
            ttls.append(ttl)
            in_authority = ancount <= index < ancount + nscount
            if rtype == TYPE_SOA and in_authority and record_end - rdata_start >= 22:
                (minimum,) = struct.unpack_from("!I", data, record_end - 4)
                negative = min(ttl, minimum) if negative is None else negative
        offset = record_end
    rcode = flags & RCODE_MASK
    options = b""
    if opt is not None:
        start, record_end, opt_ttl, rdata_start = opt
        rcode |= (opt_ttl >> 24) << 4
        options = _split_options(data[rdata_start:record_end])
        if record_end != end:
            # Every server puts it last (only a TSIG, which meshdns never
            # asks for, may follow); cutting it out of the middle would move
            # the names that later compression pointers point at.
            raise MalformedMessage("records after the OPT record")
        data = data[:start]
        data = data[:10] + struct.pack("!H", arcount - 1) + data[12:]
    elif offset != end:
        data = data[:offset]
    return UpstreamReply(
        data,
        rcode,
        flags,
        question_end,
        tuple(ttl_offsets),
        tuple(ttls),
        min(ttls) if ttls else None,
        negative,
        options,
    )
