"""
The fake upstream behaves as its docstring says: the integration tests take it
as the reference for what a real upstream does, so it is checked first, as a
separate process, over real sockets.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from tests.support.processes import UpstreamProcess


def ask(
    upstream: UpstreamProcess, name: str, rdtype: str = "A", tcp: bool = False, **kw: Any
) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, **kw)
    send = dns.query.tcp if tcp else dns.query.udp
    return send(query, upstream.address, port=upstream.port, timeout=5)


def addresses(response: dns.message.Message) -> list[str]:
    return sorted(rdata.to_text() for rrset in response.answer for rdata in rrset)


def test_positive_answer_echoes_question_and_flags(module_upstream: UpstreamProcess) -> None:
    query = dns.message.make_query("Foo.Upstream.TEST.", "A", flags=0)
    response = dns.query.udp(query, module_upstream.address, port=module_upstream.port, timeout=5)
    assert response.id == query.id
    assert response.question == query.question
    assert str(response.question[0].name) == "Foo.Upstream.TEST."
    assert response.flags & dns.flags.QR and response.flags & dns.flags.AA
    assert not response.flags & dns.flags.RD
    assert response.edns < 0
    assert addresses(response) == ["127.0.0.10"]
    assert response.answer[0].ttl == 300
    rd = ask(module_upstream, "foo.upstream.test.", "AAAA", use_edns=0)
    assert rd.flags & dns.flags.RD
    assert rd.edns == 0
    assert addresses(rd) == ["::10"]


def test_ttl5(module_upstream: UpstreamProcess) -> None:
    assert ask(module_upstream, "ttl5.upstream.test.").answer[0].ttl == 5


@pytest.mark.parametrize("name", ["nx.upstream.test.", "NXfoo.upstream.test.", "example.com."])
def test_nxdomain_carries_soa(module_upstream: UpstreamProcess, name: str) -> None:
    response = ask(module_upstream, name)
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert not response.answer
    (soa,) = response.authority
    assert soa.rdtype == dns.rdatatype.SOA
    assert soa.ttl == 120
    assert soa[0].minimum == 60


def test_nodata(module_upstream: UpstreamProcess) -> None:
    response = ask(module_upstream, "nodata.upstream.test.")
    assert response.rcode() == dns.rcode.NOERROR
    assert not response.answer
    assert response.authority[0].rdtype == dns.rdatatype.SOA


@pytest.mark.parametrize(
    ("name", "rcode"),
    [
        ("servfail.upstream.test.", dns.rcode.SERVFAIL),
        ("refused.upstream.test.", dns.rcode.REFUSED),
    ],
)
def test_error_rcodes(module_upstream: UpstreamProcess, name: str, rcode: dns.rcode.Rcode) -> None:
    assert ask(module_upstream, name).rcode() == rcode


def test_other_types(module_upstream: UpstreamProcess) -> None:
    txt = ask(module_upstream, "txt.upstream.test.", "TXT")
    assert txt.answer[0][0].strings == (b"fake upstream txt",)
    mx = ask(module_upstream, "upstream.test.", "MX")
    assert mx.answer[0][0].to_text() == "10 mail.upstream.test."


def test_big_is_truncated_over_udp_and_whole_over_tcp(module_upstream: UpstreamProcess) -> None:
    expected = sorted(f"127.0.1.{i}" for i in range(1, 61))
    for kw in ({}, {"use_edns": 0, "payload": 512}):
        truncated = ask(module_upstream, "big.upstream.test.", **kw)
        assert truncated.flags & dns.flags.TC
        assert not truncated.answer
    assert addresses(ask(module_upstream, "big.upstream.test.", tcp=True)) == expected
    edns = ask(module_upstream, "big.upstream.test.", use_edns=0, payload=4096)
    assert not edns.flags & dns.flags.TC
    assert addresses(edns) == expected


def test_tc_is_always_truncated_over_udp(module_upstream: UpstreamProcess) -> None:
    udp = ask(module_upstream, "tc.upstream.test.", use_edns=0, payload=4096)
    assert udp.flags & dns.flags.TC and not udp.answer
    tcp = ask(module_upstream, "tc.upstream.test.", tcp=True)
    assert not tcp.flags & dns.flags.TC
    assert addresses(tcp) == ["127.0.0.11"]


def test_counts_move_per_name_type_and_transport(module_upstream: UpstreamProcess) -> None:
    module_upstream.reset()
    assert module_upstream.counts() == {}
    ask(module_upstream, "Count.upstream.test.")
    ask(module_upstream, "count.upstream.test.")
    ask(module_upstream, "count.upstream.test.", "AAAA", tcp=True)
    assert module_upstream.counts() == {
        ("count.upstream.test.", "A", "udp"): 2,
        ("count.upstream.test.", "AAAA", "tcp"): 1,
    }
    assert module_upstream.count("COUNT.upstream.test") == 2
    module_upstream.reset()
    assert module_upstream.counts() == {}


def test_slow_answers_late_without_blocking_others(module_upstream: UpstreamProcess) -> None:
    slow: list[dns.message.Message] = []
    thread = threading.Thread(
        target=lambda: slow.append(ask(module_upstream, "slow.upstream.test."))
    )
    started = time.monotonic()
    thread.start()
    assert addresses(ask(module_upstream, "fast.upstream.test.")) == ["127.0.0.10"]
    assert time.monotonic() - started < 2
    thread.join(timeout=10)
    assert time.monotonic() - started >= 2.9
    assert addresses(slow[0]) == ["127.0.0.10"]


def test_blackhole_never_answers(module_upstream: UpstreamProcess) -> None:
    query = dns.message.make_query("blackhole.upstream.test.", "A")
    with pytest.raises(dns.exception.Timeout):
        dns.query.udp(query, module_upstream.address, port=module_upstream.port, timeout=0.5)
    assert module_upstream.count("blackhole.upstream.test.") >= 1


def test_wrong_id_mode(upstream_factory: Callable[..., UpstreamProcess]) -> None:
    upstream = upstream_factory("wrong-id")
    query = dns.message.make_query("foo.upstream.test.", "A")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(query.to_wire(), (upstream.address, upstream.port))
        response = dns.message.from_wire(sock.recv(65535))
    assert response.id == (query.id + 1) & 0xFFFF
    assert addresses(response) == ["127.0.0.10"]
    assert upstream.count("foo.upstream.test.") == 1


def test_servfail_all_and_drop_all_modes(upstream_factory: Callable[..., UpstreamProcess]) -> None:
    servfail = upstream_factory("servfail-all")
    assert ask(servfail, "foo.upstream.test.").rcode() == dns.rcode.SERVFAIL
    dropping = upstream_factory("drop-all")
    query = dns.message.make_query("foo.upstream.test.", "A")
    with pytest.raises(dns.exception.Timeout):
        dns.query.udp(query, dropping.address, port=dropping.port, timeout=0.5)
    # The control zone still answers, so that counts can be read while it plays dead.
    assert dropping.count("foo.upstream.test.") == 1


def test_every_reply_sets_aa(upstream_factory: Callable[..., UpstreamProcess]) -> None:
    """AA on answers, negative answers and fail modes: a forwarder's AA scrubbing is exercised."""
    upstream = upstream_factory("refused-all")
    refused = ask(upstream, "foo.upstream.test.")
    assert refused.rcode() == dns.rcode.REFUSED and refused.flags & dns.flags.AA
    assert upstream.count("foo.upstream.test.") == 1


def test_wrong_question_tcp_mode(upstream_factory: Callable[..., UpstreamProcess]) -> None:
    upstream = upstream_factory("wrong-question-tcp")
    assert addresses(ask(upstream, "foo.upstream.test.")) == ["127.0.0.10"]
    # Read without dnspython's own question check, which would reject it.
    query = dns.message.make_query("foo.upstream.test.", "A")
    with socket.create_connection((upstream.address, upstream.port), timeout=5) as sock:
        dns.query.send_tcp(sock, query)
        wrong, _ = dns.query.receive_tcp(sock, time.time() + 5)
    assert wrong.id == query.id
    assert str(wrong.question[0].name) == "wrong.upstream.test."
    assert addresses(wrong) == ["192.0.2.66"]
    assert upstream.count("foo.upstream.test.", transport="tcp") == 1


@pytest.mark.parametrize("size", [2000, 5000])
def test_size_label(module_upstream: UpstreamProcess, size: int) -> None:
    """At least C{size} bytes over TCP; truncated over UDP even with EDNS 4096 when too big."""
    name = f"x.size-{size}.upstream.test."
    query = dns.message.make_query(name, "A")
    whole = dns.query.tcp(query, module_upstream.address, port=module_upstream.port, timeout=5)
    assert len(whole.to_wire()) >= size and len(whole.answer[0]) == -(-size // 16)
    udp = ask(module_upstream, name, use_edns=0, payload=4096)
    assert bool(udp.flags & dns.flags.TC) == (size > 4096)


def test_tc_blackhole_and_delay_labels(module_upstream: UpstreamProcess) -> None:
    name = "x.tc-blackhole.delay-600.upstream.test."
    module_upstream.reset()
    started = time.monotonic()
    udp = ask(module_upstream, name)
    assert time.monotonic() - started >= 0.55
    assert udp.flags & dns.flags.TC and not udp.answer
    query = dns.message.make_query(name, "A")
    with pytest.raises(dns.exception.Timeout):
        dns.query.tcp(query, module_upstream.address, port=module_upstream.port, timeout=1)
    assert module_upstream.count(name, transport="tcp") == 1


def test_unknown_type(module_upstream: UpstreamProcess) -> None:
    response = ask(module_upstream, "unknown.upstream.test.", "TYPE65280")
    (rrset,) = response.answer
    assert rrset.rdtype == 65280 and rrset[0].to_text() == r"\# 4 0a0b0c0d"


def test_signed_names_with_do(module_upstream: UpstreamProcess) -> None:
    plain = ask(module_upstream, "signed.upstream.test.", use_edns=0)
    assert [r.rdtype for r in plain.answer] == [dns.rdatatype.A]
    signed = ask(module_upstream, "signed.upstream.test.", use_edns=0, want_dnssec=True)
    assert signed.ednsflags & dns.flags.DO
    assert [r.rdtype for r in signed.answer] == [dns.rdatatype.A, dns.rdatatype.RRSIG]
    negative = ask(module_upstream, "nx.signed.upstream.test.", use_edns=0, want_dnssec=True)
    assert negative.rcode() == dns.rcode.NXDOMAIN
    assert {r.rdtype for r in negative.authority} == {
        dns.rdatatype.SOA,
        dns.rdatatype.NSEC,
        dns.rdatatype.RRSIG,
    }


def test_options_in_reply(module_upstream: UpstreamProcess) -> None:
    ecs = dns.edns.ECSOption("10.1.2.0", 24)
    response = ask(module_upstream, "options.upstream.test.", use_edns=0, options=[ecs])
    by_code = {option.otype: option for option in response.options}
    assert set(by_code) == {3, 8, 10, 15, 65001}
    assert by_code[8].address == "10.1.2.0" and by_code[8].scopelen == 24
    assert addresses(response) == ["127.0.0.10"]
    assert not ask(module_upstream, "options.upstream.test.").options
