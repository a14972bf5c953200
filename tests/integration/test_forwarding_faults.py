"""
Forwarding under upstream faults, tested from outside: the real C{twistd -n
meshdns} over real sockets, against fake upstreams (L{tests.support.fakeupstream})
that misbehave on purpose, with meshdns's C{/metrics} and the upstreams' query
counts as witnesses.

Each test here fails if meshdns loses the behaviour it names (failover, the
question check on TCP replies, the forward deadline, the 1232-byte UDP cap,
FORMERR/NOTIMP/REFUSED as real responses with RD copied, AA scrubbing,
dropping responses, the TCP retry of a truncated answer). Expected values come
from the RFCs or from the fake upstream itself, never from meshdns; what
meshdns must not do is shown by a counter, never by a reply that did not come.
"""

from __future__ import annotations

import socket
import struct
import time
import urllib.request
from collections.abc import Callable, Iterator

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from tests.support.fakeupstream import WRONG_ADDRESS
from tests.support.processes import MeshdnsProcess, UpstreamProcess, free_port, launch_meshdns
from tests.support.waiting import wait_until

#: upstream.timeout of the meshdns processes here: long enough to tell a
#: per-server share (timeout / number of servers) from the whole of it.
TIMEOUT = 2.0
#: Slack for a loaded machine: process scheduling, Python, loopback.
MARGIN = 0.7
#: The largest UDP reply meshdns may send (DNS Flag Day 2020, issue 11).
MAX_UDP = 1232
#: The address every ordinary name of the fake upstream's zone has.
ZONE_ADDRESS = "127.0.0.10"


def addresses(reply: dns.message.Message) -> list[str]:
    """Every A/AAAA address in the answer section, whatever its owner, sorted."""
    return sorted(
        rdata.address
        for rrset in reply.answer
        if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)
        for rdata in rrset
    )


def raw_udp(meshdns: MeshdnsProcess, data: bytes, timeout: float = 5.0) -> bytes:
    """Send C{data} as it is and return the first datagram that comes back."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(data, (meshdns.address, meshdns.port))
        return sock.recv(65535)


def metric(admin_port: int, name: str) -> float:
    """One unlabelled sample of meshdns's C{/metrics}."""
    url = f"http://127.0.0.1:{admin_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.fixture(scope="module")
def admin_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def meshdns(
    module_upstream: UpstreamProcess, admin_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MeshdnsProcess]:
    """One meshdns forwarding to a well-behaved fake upstream, with its admin port."""
    process = launch_meshdns(
        tmp_path_factory.mktemp("meshdns"),
        {
            "upstream": {"servers": [module_upstream.server], "timeout": TIMEOUT},
            "admin": {"port": admin_port},
        },
    )
    yield process
    process.stop()


def start_pair(
    start_meshdns: Callable[..., MeshdnsProcess],
    upstream_factory: Callable[..., UpstreamProcess],
    first_mode: str,
) -> tuple[MeshdnsProcess, UpstreamProcess, UpstreamProcess]:
    """meshdns with a misbehaving first server and a good second one."""
    first = upstream_factory(first_mode)
    second = upstream_factory()
    meshdns = start_meshdns(
        {"upstream": {"servers": [first.server, second.server], "timeout": TIMEOUT}}
    )
    return meshdns, first, second


# --- failover -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "within"),
    [
        # An answer from the first server is final at once: the second is
        # asked without waiting for the first's share of the timeout.
        ("refused-all", TIMEOUT / 2),
        ("servfail-all", TIMEOUT / 2),
        # Silence: the first gets its share (TIMEOUT / 2), then the second.
        ("drop-all", TIMEOUT / 2 + MARGIN),
    ],
    ids=["refused", "servfail", "timeout"],
)
def test_failover_to_second_server(start_meshdns, upstream_factory, mode, within) -> None:
    meshdns, first, second = start_pair(start_meshdns, upstream_factory, mode)
    name = f"failover-{mode}.upstream.test."
    started = time.monotonic()
    reply = meshdns.query(name, timeout=TIMEOUT + 3)
    elapsed = time.monotonic() - started
    assert reply.rcode() == dns.rcode.NOERROR
    assert addresses(reply) == [ZONE_ADDRESS]
    assert elapsed < within, elapsed
    assert first.count(name) == 1 and second.count(name) == 1


def test_tcp_reply_about_another_name_is_not_accepted(start_meshdns, upstream_factory) -> None:
    """
    The first server answers every TCP query about C{wrong.upstream.test.}
    (with the right ID): meshdns must not take that for the answer, whether
    the client asked over TCP or a UDP answer was truncated.
    """
    meshdns, first, second = start_pair(start_meshdns, upstream_factory, "wrong-question-tcp")
    name = "asked-over-tcp.upstream.test."
    reply = meshdns.query(name, tcp=True, timeout=TIMEOUT + 3)
    assert WRONG_ADDRESS not in addresses(reply)
    assert addresses(reply) == [ZONE_ADDRESS]
    assert first.count(name, transport="tcp") == 1
    # The wrong reply marked the first server down; its health probes (over
    # UDP, which it answers well) bring it back first in line.
    wait_until(lambda: f"Upstream {first.server} answers again" in meshdns.log(),
               "the first server marked up again", 10.0)
    # tc.upstream.test. is truncated over UDP: the TCP retry meets the wrong reply.
    reply = meshdns.query("tc.upstream.test.", timeout=TIMEOUT + 3)
    assert WRONG_ADDRESS not in addresses(reply)
    assert addresses(reply) == ["127.0.0.11"]
    assert first.count("tc.upstream.test.", transport="tcp") == 1


# --- the forward deadline --------------------------------------------------------


def test_every_upstream_blackholed_servfail_within_timeout(start_meshdns, upstream_factory) -> None:
    """
    Two silent servers: SERVFAIL once the whole C{upstream.timeout} is spent,
    not before the first server had its share (C{timeout / 2}), and both asked.
    """
    first, second = upstream_factory("drop-all"), upstream_factory("drop-all")
    meshdns = start_meshdns(
        {"upstream": {"servers": [first.server, second.server], "timeout": TIMEOUT}}
    )
    name = "all-blackholed.upstream.test."
    started = time.monotonic()
    reply = meshdns.query(name, timeout=TIMEOUT + 5)
    elapsed = time.monotonic() - started
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert TIMEOUT / 2 - 0.1 <= elapsed <= TIMEOUT + MARGIN, elapsed
    assert first.count(name) == 1 and second.count(name) == 1


def test_deadline_bounds_the_tcp_retry(meshdns, module_upstream) -> None:
    """
    The UDP answer comes truncated after 1.5 s and the TCP retry is never
    answered: the deadline of the whole forward, not a fresh timeout for the
    retry, decides when SERVFAIL goes out.
    """
    name = "deadline.tc-blackhole.delay-1500.upstream.test."
    started = time.monotonic()
    reply = meshdns.query(name, timeout=TIMEOUT + 5)
    elapsed = time.monotonic() - started
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert 1.5 <= elapsed <= TIMEOUT + MARGIN, elapsed
    assert module_upstream.count(name, transport="udp") == 1
    assert module_upstream.count(name, transport="tcp") == 1


# --- sizes and truncation ----------------------------------------------------------


@pytest.mark.parametrize("size", [2000, 5000])
def test_udp_answers_capped_at_1232_bytes(meshdns, module_upstream, size) -> None:
    """
    A client offering EDNS 4096 gets TC=1 in at most 1232 bytes for a 2,000-
    (and a 5,000-) byte answer, forwarded or cached; over TCP it gets the
    answer whole, as the upstream gives it.
    """
    name = f"cap.size-{size}.upstream.test."
    direct = dns.query.tcp(
        dns.message.make_query(name, "A"),
        module_upstream.address,
        port=module_upstream.port,
        timeout=5,
    )
    assert len(direct.to_wire()) > size
    for _ in ("forwarded", "cached"):
        query = dns.message.make_query(name, "A", use_edns=0, payload=4096)
        data = raw_udp(meshdns, query.to_wire())
        reply = dns.message.from_wire(data)
        assert reply.id == query.id
        assert reply.flags & dns.flags.TC
        assert len(data) <= MAX_UDP
    whole = meshdns.query(name, tcp=True)
    assert not whole.flags & dns.flags.TC
    assert addresses(whole) == addresses(direct)


def test_truncated_answer_retried_over_tcp(meshdns, module_upstream) -> None:
    """C{tc.upstream.test.} is TC=1 over UDP, whole over TCP: one of each upstream."""
    name = "tc.upstream.test."
    reply = meshdns.query(name)
    assert addresses(reply) == ["127.0.0.11"]
    assert not reply.flags & dns.flags.TC
    assert module_upstream.count(name, transport="udp") == 1
    assert module_upstream.count(name, transport="tcp") == 1


# --- replies meshdns makes itself ------------------------------------------------------


def _query(name: str, rd: bool, rdtype: str = "A") -> dns.message.Message:
    return dns.message.make_query(name, rdtype, flags=dns.flags.RD if rd else 0)


def _check_response(query_id: int, rd: bool, reply: dns.message.Message, rcode: int) -> None:
    """RFC 1035 4.1.1: QR=1 in a response, ID and RD copied from the query."""
    assert reply.id == query_id
    assert reply.flags & dns.flags.QR
    assert bool(reply.flags & dns.flags.RD) == rd
    assert reply.rcode() == rcode


@pytest.mark.parametrize("rd", [True, False])
def test_two_questions_formerr(meshdns, rd) -> None:
    """RFC 9619: a query with QDCOUNT 2 is answered FORMERR."""
    query = _query("two-a.upstream.test.", rd)
    query.question.append(
        dns.rrset.RRset(
            dns.name.from_text("two-b.upstream.test."), dns.rdataclass.IN, dns.rdatatype.A
        )
    )
    reply = dns.message.from_wire(raw_udp(meshdns, query.to_wire()))
    _check_response(query.id, rd, reply, dns.rcode.FORMERR)
    assert not reply.answer


@pytest.mark.parametrize("rd", [True, False])
def test_notimp_refused_formerr_are_responses_with_rd(meshdns, rd) -> None:
    """
    An opcode meshdns does not serve (NOTIFY) gets NOTIMP, class CH gets
    REFUSED, a readable header with a broken body gets FORMERR: each one a
    response (QR=1) with the query's ID and RD.
    """
    notify = _query("notify.upstream.test.", rd)
    notify.set_opcode(dns.opcode.NOTIFY)
    reply = dns.message.from_wire(raw_udp(meshdns, notify.to_wire()))
    _check_response(notify.id, rd, reply, dns.rcode.NOTIMP)
    chaos = dns.message.make_query("version.bind.", "TXT", "CH", flags=dns.flags.RD if rd else 0)
    reply = dns.message.from_wire(raw_udp(meshdns, chaos.to_wire()))
    _check_response(chaos.id, rd, reply, dns.rcode.REFUSED)
    # One question announced; its name is a compression pointer to itself.
    header = struct.pack("!HHHHHH", 0x4242, 0x0100 if rd else 0, 1, 0, 0, 0)
    data = raw_udp(meshdns, header + b"\xc0\x0c\x00\x01\x00\x01")
    ident, flags = struct.unpack_from("!HH", data)
    assert ident == 0x4242 and flags & 0x8000 and flags & 0x000F == dns.rcode.FORMERR
    assert bool(flags & 0x0100) == rd


def test_aa_scrubbed_from_forwarded_answers(meshdns, module_upstream) -> None:
    """
    The upstream sets AA (checked first); meshdns is not authoritative for
    what it forwards (RFC 1035 4.1.1), over UDP, over TCP, or from its cache.
    """
    names = ("aa-udp.upstream.test.", "aa-tcp.upstream.test.", "nx-aa.upstream.test.")
    for name in names:
        direct = dns.query.udp(
            dns.message.make_query(name, "A"),
            module_upstream.address,
            port=module_upstream.port,
            timeout=5,
        )
        assert direct.flags & dns.flags.AA
    module_upstream.reset()
    for name, tcp in zip(names, (False, True, False), strict=True):
        for _ in ("forwarded", "cached"):
            reply = meshdns.query(name, tcp=tcp)
            assert not reply.flags & dns.flags.AA, (name, tcp)
            assert reply.flags & dns.flags.RA
        assert module_upstream.count(name, transport="tcp" if tcp else "udp") == 1
    assert addresses(meshdns.query(names[0])) == [ZONE_ADDRESS]


def test_responses_are_dropped_and_counted(meshdns, module_upstream, admin_port) -> None:
    """
    A packet with QR=1 is never answered nor forwarded: meshdns's dropped
    counter rises by one per such packet (UDP and TCP), and the upstream
    never hears of its name. Nor is a datagram too short for a header.
    """
    name = "qr-set.upstream.test."
    before = metric(admin_port, "meshdns_queries_dropped_total")
    response = dns.message.make_response(dns.message.make_query(name, "A"))
    probe = dns.message.make_query("probe.upstream.test.", "A")
    probe.set_opcode(dns.opcode.STATUS)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(response.to_wire(), (meshdns.address, meshdns.port))
        sock.sendto(b"\x01\x02\x03", (meshdns.address, meshdns.port))
        # Datagrams are read in order: once the probe is answered, the
        # response before it has been dealt with.
        sock.sendto(probe.to_wire(), (meshdns.address, meshdns.port))
        assert dns.message.from_wire(sock.recv(65535)).id == probe.id
    with socket.create_connection((meshdns.address, meshdns.port), timeout=5) as sock:
        dns.query.send_tcp(sock, response)
        dns.query.send_tcp(sock, probe)
        reply, _ = dns.query.receive_tcp(sock, time.time() + 5)
        assert reply.id == probe.id
    dropped = before
    deadline = time.monotonic() + 3
    while dropped < before + 3 and time.monotonic() < deadline:
        time.sleep(0.05)
        dropped = metric(admin_port, "meshdns_queries_dropped_total")
    assert dropped == before + 3
    assert module_upstream.count(name, transport="udp") == 0
    assert module_upstream.count(name, transport="tcp") == 0
