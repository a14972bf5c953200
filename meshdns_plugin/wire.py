# -*- test-case-name: tests.test_wire -*-
"""
The wire-level fast path: answers built from pre-encoded bytes.

Stock Twisted Names spends most of a query decoding a whole L{dns.Message},
running Deferred chains and encoding a new message. A mesh answer or a cache
hit needs none of that: this module parses only the header and the question
(and an optional OPT record), and assembles the reply from sections encoded
once, when a table is built or an answer cached, patching in the ID, the
question as the client wrote it, and for cache hits the remaining TTLs.

Anything unusual (other opcodes, several questions, compression in the
question, EDNS options it does not understand, an answer that would need
truncation) is left to the full Twisted Names path, which stays the reference:
L{parse_question} returns L{None} and the caller falls through.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshdns_plugin.table import HostRecords, NameTable

_HEADER = struct.Struct("!HHHHHH")
_TYPE_CLASS = struct.Struct("!HH")
_RR_FIXED = struct.Struct("!HHIH")
_OPT_FIXED = struct.Struct("!HHIH")
_TTL = struct.Struct("!I")

TYPE_A, TYPE_AAAA, TYPE_CNAME, TYPE_OPT = 1, 28, 5, 41
CLASS_IN = 1
#: Header flag bits.
QR, AA, TC, RD, RA = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080
#: How many rotations of a multi-address answer are pre-encoded.
ROTATIONS = 8


@dataclass(slots=True)
class Question:
    """
    The parts of a query the fast path needs.

    Not frozen: one is built per query, and a frozen dataclass takes four
    times as long to build (each field goes through C{object.__setattr__}).

    @ivar key: the question name in wire format, lowercased (ASCII only, as
        DNS compares names); the index key.
    @ivar question: the question section exactly as the client sent it.
    @ivar edns_payload: the client's EDNS UDP size, or L{None} without EDNS.
    """

    ident: int
    flags: int
    key: bytes
    qtype: int
    qclass: int
    question: bytes
    edns_payload: int | None


def parse_question(data: bytes) -> Question | None:
    """
    Parse a plain query: opcode QUERY, one question, no answer or authority
    records, at most an OPT record (version 0, no options) as additional.

    @return: L{None} for anything else, which the full path then handles.
    """
    if len(data) < 17:
        return None
    ident, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data)
    if flags & 0xFA00 or qdcount != 1 or ancount or nscount or arcount > 1:
        # QR, opcode or TC set: not a plain query.
        return None
    offset = 12
    end = len(data)
    while True:
        if offset >= end:
            return None
        length = data[offset]
        if length == 0:
            offset += 1
            break
        if length > 63:
            return None
        offset += 1 + length
    if offset - 12 > 255 or offset + 4 > end:
        return None
    qtype, qclass = _TYPE_CLASS.unpack_from(data, offset)
    question_end = offset + 4
    edns_payload = None
    if arcount:
        # An OPT record: root owner, type OPT, version 0, no options.
        if question_end + 11 != end or data[question_end] != 0:
            return None
        rtype, payload, ttl, rdlength = _OPT_FIXED.unpack_from(data, question_end + 1)
        if rtype != TYPE_OPT or rdlength or ttl & 0x00FF0000:
            return None
        edns_payload = payload
    elif question_end != end:
        return None
    return Question(
        ident,
        flags,
        data[12:offset].lower(),
        qtype,
        qclass,
        data[12:question_end],
        edns_payload,
    )


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


#: The UDP limit for clients without EDNS (RFC 1035).
CLASSIC_UDP_PAYLOAD = 512


def udp_limit(edns_payload: int | None, maximum: int) -> int:
    """The most bytes a UDP reply may have (RFC 1035 / RFC 6891)."""
    if edns_payload is None:
        return CLASSIC_UDP_PAYLOAD
    return max(CLASSIC_UDP_PAYLOAD, min(edns_payload, maximum))


def error_reply(data: bytes, rcode: int) -> bytes | None:
    """
    A header-only reply with C{rcode} to the packet C{data}, or L{None} if
    C{data} has no readable header or is itself a response (never answer a
    response: two servers would bounce errors at each other for ever).
    """
    if len(data) < _HEADER.size:
        return None
    ident, flags = struct.unpack_from("!HH", data)
    if flags & QR:
        return None
    opcode_and_rd = flags & 0x7900
    return _HEADER.pack(ident, QR | opcode_and_rd | rcode, 0, 0, 0, 0)


def opt_record(payload: int) -> bytes:
    """Our OPT record: version 0, no flags, no options."""
    return b"\x00" + _OPT_FIXED.pack(TYPE_OPT, payload, 0, 0)


def reply(
    q: Question,
    flags: int,
    counts: tuple[int, int, int],
    sections: bytes,
    opt: bytes,
    limit: int | None,
) -> bytes | None:
    """
    Assemble a reply, or L{None} if it would exceed C{limit} (the full path
    then truncates it exactly as it truncates everything else).

    @param flags: QR, AA, RA and RCODE bits; RD is copied from the query.
    @param counts: answer, authority and additional record counts (OPT excluded).
    """
    ancount, nscount, arcount = counts
    if q.edns_payload is None:
        opt = b""
    else:
        arcount += 1
    data = (
        _HEADER.pack(q.ident, flags | (q.flags & RD), 1, ancount, nscount, arcount)
        + q.question
        + sections
        + opt
    )
    if limit is not None and len(data) > limit:
        return None
    return data


def packed_address(address: str) -> bytes:
    """
    The 4 or 16 bytes of a normalised IP address string (as entries.py and
    the allocator produce them); C{socket.inet_pton} is an order of magnitude
    cheaper than L{ipaddress}, which matters for tables of 100k hosts.
    """
    return socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)


def reverse_name(address: str) -> bytes:
    """The PTR owner of an address: C{b"1.0.240.240.in-addr.arpa"} (RFC 1035, RFC 3596)."""
    packed = packed_address(address)
    if len(packed) == 4:
        return b".".join(b"%d" % octet for octet in reversed(packed)) + b".in-addr.arpa"
    return b".".join(bytes([c]) for c in reversed(packed.hex().encode())) + b".ip6.arpa"


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
        section = cname_owner + _RR_FIXED.pack(TYPE_CNAME, CLASS_IN, ttl, len(owner_wire))
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
        section += owner + _RR_FIXED.pack(qtype, CLASS_IN, ttl, len(packed)) + packed
    return section


#: Pre-encoded answers for one name and type: C{(section, record count)} per
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
    Pre-encode the answer section for one name and type, in up to
    L{ROTATIONS} address orders (round-robin without per-query encoding).

    @param owner_wire: the owner of the address records (lowercase wire name).
    @param alias_wire: the queried name, when answered through a CNAME.
    """
    addresses = records.addresses(4 if qtype == TYPE_A else 6)
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


class WireIndex:
    """
    Pre-encoded mesh answers for the exact names of one L{NameTable}.

    Built with the table, replaced with it; names found only through a
    wildcard or the search-suffix shortcut are encoded on demand by
    L{WireIndex.encode_resolution} from the same table.
    """

    #: Bound of the memo of answers found through wildcards or the shortcut.
    MAX_DERIVED = 10000

    def __init__(self, table: NameTable) -> None:
        self.table = table
        self._derived: dict[tuple[bytes, int], Rings | None] = {}
        self._needs_derivation = bool(table.wildcards) or table.search_suffix is not None
        self.answers: dict[tuple[bytes, int], Rings] = {}
        for name, records in table.names.items():
            wire = name_to_wire(name)
            for qtype in (TYPE_A, TYPE_AAAA):
                self.answers[(wire, qtype)] = address_answer(wire, records, qtype, table.ttl)

    def lookup(self, key: bytes, qtype: int) -> Rings | None:
        """
        The encoded answers of an A or AAAA question for C{key}, or L{None}
        if the mesh does not know the name.
        """
        found = self.answers.get((key, qtype))
        if found is not None or not self._needs_derivation:
            return found
        memo_key = (key, qtype)
        if memo_key in self._derived:
            return self._derived[memo_key]
        resolution = self.table.resolve(wire_to_name(key))
        if resolution is None:
            found = None
        else:
            alias = None if resolution.alias is None else name_to_wire(resolution.alias)
            owner = name_to_wire(resolution.owner)
            found = address_answer(owner, resolution.records, qtype, self.table.ttl, alias)
        if len(self._derived) >= self.MAX_DERIVED:
            self._derived.clear()
        self._derived[memo_key] = found
        return found


@dataclass(frozen=True, slots=True)
class EncodedSections:
    """
    The answer, authority and additional sections of a cached upstream reply,
    encoded without compression, with the offset of every TTL so that a hit
    only patches them.

    @ivar ttls: C{(offset into body, original TTL)} per record.
    """

    body: bytes
    counts: tuple[int, int, int]
    ttls: tuple[tuple[int, int], ...]

    def aged(self, elapsed: int) -> bytes:
        """The body with every TTL reduced by C{elapsed} seconds (not below 0)."""
        if not elapsed:
            return self.body
        patched = bytearray(self.body)
        for offset, ttl in self.ttls:
            _TTL.pack_into(patched, offset, max(ttl - elapsed, 0))
        return bytes(patched)


def encode_sections(sections: Iterable[Iterable[object]]) -> EncodedSections | None:
    """
    Encode three lists of L{twisted.names.dns.RRHeader} for the cache, or
    L{None} if a record cannot be encoded on its own (the cache entry then
    serves only the full path).
    """
    from io import BytesIO

    body = BytesIO()
    counts = []
    ttls = []
    for records in sections:
        count = 0
        for record in records:
            start = body.tell()
            try:
                record.encode(body, None)
            except Exception:
                return None
            name_length = len(name_to_wire(record.name.name))
            ttls.append((start + name_length + 4, record.ttl))
            count += 1
        counts.append(count)
    return EncodedSections(body.getvalue(), (counts[0], counts[1], counts[2]), tuple(ttls))
