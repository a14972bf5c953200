"""
Wire reading and writing (L{meshdns_plugin.dns.message}) against dnspython,
an independent implementation: queries and replies that dnspython writes are
read as dnspython reads them, and what meshdns writes dnspython reads back.
"""

from __future__ import annotations

import struct

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshdns_plugin.dns import message as wire
from meshdns_plugin.dns.cache import cache_ttl, render


def _reply(query: dns.message.Message, rcode=dns.rcode.NOERROR, options=()) -> dns.message.Message:
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    if options:
        response.use_edns(0, 0, 1232, options=list(options))
    return response


def _read(response: dns.message.Message) -> wire.UpstreamReply:
    data = response.to_wire(max_size=65535)
    question = dns.message.from_wire(data).question[0]
    question_end = 12 + len(question.name.to_wire()) + 4
    return wire.read_reply(data, question_end)


def test_query_fields() -> None:
    ecs = dns.edns.ECSOption("192.0.2.0", 24)
    message = dns.message.make_query(
        "WWW.Example.ORG", "AAAA", use_edns=0, payload=4096, want_dnssec=True, options=[ecs]
    )
    message.flags |= dns.flags.CD
    query = wire.read_query(message.to_wire())
    assert query is not None and query.problem is None
    assert query.ident == message.id
    assert query.key == dns.name.from_text("www.example.org").to_wire()
    assert (query.qtype, query.qclass) == (28, 1)
    assert query.question[:-4] == dns.name.from_text("WWW.Example.ORG").to_wire()
    assert query.edns and query.payload == 4096 and query.do
    assert query.flags & wire.CD
    # The ECS option is end to end: kept as it was written.
    option = ecs.to_wire()
    assert query.options == struct.pack("!HH", 8, len(option)) + option


def test_two_opt_records_are_formerr() -> None:
    data = dns.message.make_query("a.example", "A", use_edns=0).to_wire()
    opt = data[-11:]
    doubled = data[:10] + b"\x00\x02" + data[12:] + opt
    query = wire.read_query(doubled)
    assert query is not None and query.problem == wire.FORMERR


def test_badvers_reply() -> None:
    query = wire.read_query(dns.message.make_query("a.example", "A", use_edns=1).to_wire())
    assert query is not None and query.problem == wire.BADVERS
    reply = dns.message.from_wire(wire.error_reply(query, wire.BADVERS, wire.RA, 1232))
    # RFC 6891 6.1.3: BADVERS (16, upper bits in the OPT record), version 0.
    assert reply.rcode() == dns.rcode.BADVERS and reply.edns == 0
    assert reply.flags & dns.flags.QR


def test_reply_ttls_and_opt() -> None:
    query = dns.message.make_query("a.example", "A", use_edns=0, want_dnssec=True)
    response = _reply(
        query,
        options=[dns.edns.GenericOption(3, b"nsid"), dns.edns.GenericOption(15, b"\x00\x06")],
    )
    response.answer.append(dns.rrset.from_text("a.example.", 300, "IN", "A", "192.0.2.1"))
    response.answer.append(
        dns.rrset.from_text("a.example.", 250, "IN", "TYPE65280", r"\# 4 0a000001")
    )
    reply = _read(response)
    assert reply.ttls == (300, 250) and reply.min_ttl == 250
    assert reply.counts == (2, 0, 0)  # the OPT record is meshdns's business
    # NSID is per hop; the extended error (15) passes through.
    assert reply.options == b"\x00\x0f\x00\x02\x00\x06"
    assert cache_ttl(reply) == 250


def test_negative_ttl_is_the_soa_minimum_capped_by_its_ttl() -> None:
    query = dns.message.make_query("nx.example", "A")
    for soa_ttl, minimum, expected in ((300, 60, 60), (20, 60, 20)):
        response = _reply(query, dns.rcode.NXDOMAIN)
        response.authority.append(
            dns.rrset.from_text("example.", soa_ttl, "IN", "SOA", f"ns. host. 1 2 3 4 {minimum}")
        )
        assert cache_ttl(_read(response)) == expected


def test_nxdomain_chain_is_kept_and_its_ttl_counts() -> None:
    query = dns.message.make_query("alias.example", "A", use_edns=0)
    response = _reply(query, dns.rcode.NXDOMAIN)
    response.answer.append(
        dns.rrset.from_text("alias.example.", 10, "IN", "CNAME", "gone.example.")
    )
    response.authority.append(
        dns.rrset.from_text("example.", 300, "IN", "SOA", "ns. host. 1 2 3 4 60")
    )
    reply = _read(response)
    assert cache_ttl(reply) == 10
    client = wire.read_query(query.to_wire())
    assert client is not None
    again = dns.message.from_wire(render(reply, client, wire.RA, 1232, None))
    assert again.rcode() == dns.rcode.NXDOMAIN
    assert [r.to_text() for r in again.answer] == ["alias.example. 10 IN CNAME gone.example."]


def test_render_is_byte_transparent_for_rdata() -> None:
    query = dns.message.make_query("d.example", "A", use_edns=0)
    response = _reply(query)
    response.answer.append(dns.rrset.from_text("d.example.", 60, "IN", "DNAME", "target.example."))
    response.answer.append(
        dns.rrset.from_text("d.example.", 60, "IN", "TYPE65280", r"\# 3 abcdef")
    )
    upstream = response.to_wire()
    reply = _read(response)
    client = wire.read_query(query.to_wire())
    assert client is not None
    ours = render(reply, client, wire.RA, 1232, None)
    # Everything after the question is the upstream's, byte for byte, up to the OPT record.
    body_end = len(upstream) - 11
    start = 12 + len(client.question)
    assert ours[start:body_end] == upstream[start:body_end]


def test_truncation_keeps_question_and_opt() -> None:
    query = dns.message.make_query("big.example", "TXT", use_edns=0, payload=1232)
    response = _reply(query)
    response.answer.append(
        dns.rrset.from_text_list(
            "big.example.", 60, "IN", "TXT", [f'"{"x" * 200}{i}"' for i in range(10)]
        )
    )
    reply = _read(response)
    client = wire.read_query(query.to_wire())
    assert client is not None
    data = render(reply, client, wire.RA, 1232, wire.udp_limit(client, 1232))
    truncated = dns.message.from_wire(data)
    assert truncated.flags & dns.flags.TC and not truncated.answer and truncated.edns == 0
    assert len(data) <= 1232


def test_records_after_opt_are_refused() -> None:
    query = dns.message.make_query("a.example", "A", use_edns=0)
    response = _reply(query)
    response.answer.append(dns.rrset.from_text("a.example.", 60, "IN", "A", "192.0.2.1"))
    data = response.to_wire()
    extra = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\xc0\x00\x02\x02"
    arcount = int.from_bytes(data[10:12]) + 1
    bad = data[:10] + arcount.to_bytes(2) + data[12:] + extra
    with pytest.raises(wire.MalformedMessage):
        wire.read_reply(bad, 12 + len(dns.name.from_text("a.example").to_wire()) + 4)


def test_is_reply_to() -> None:
    query = dns.message.make_query("Case.Example", "A")
    response = _reply(query)
    data = response.to_wire()
    question = dns.name.from_text("case.example").to_wire() + b"\x00\x01\x00\x01"
    assert wire.is_reply_to(data, query.id, question)
    assert not wire.is_reply_to(data, query.id ^ 1, question)
    assert not wire.is_reply_to(query.to_wire(), query.id, question)  # not a response
    other = dns.name.from_text("other.example").to_wire() + b"\x00\x01\x00\x01"
    assert not wire.is_reply_to(data, query.id, other)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_junk_never_raises_anything_else(data: bytes) -> None:
    """Reading is total: a query gives a Query or None, a reply a reply or MalformedMessage."""
    wire.read_query(data)
    if len(data) >= 17:
        try:
            wire.read_reply(data, 17)
        except wire.MalformedMessage:
            pass
