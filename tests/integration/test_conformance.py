"""
meshdns judged against real DNS software: the lab of L{tests.support.dnslab} (NSD
serving signed, unsigned and broken zones, a validating unbound in front of
it) and one C{twistd meshdns} forwarding to that unbound.

Every test asks meshdns and unbound the same question and compares the two by
the RFCs' rules, not byte for byte where a forwarder may legitimately differ:
  - rcode, RD, RA, CD and TC as unbound has them (RFC 1035, RFC 4035 3.2.2);
    QR always; AA never, a forwarder's answer is not authoritative;
  - AD only when unbound set it and the client set DO or AD (RFC 6840 5.8),
    and never for a CD=1 query: a client that checks for itself must not be
    told that someone else did;
  - an OPT record exactly when the query had one, version 0, DO echoed
    (RFC 6891 6.1.1, RFC 3225 3);
  - each section as RRsets (owner, type, class, rdata bytes) equal to
    unbound's, so RRSIG, NSEC and NSEC3 appear exactly when unbound gives them;
  - TTLs at most unbound's (plus one second, as the two count whole seconds
    from different instants) and at most L{TTL_LAG} seconds below it;
  - the Extended DNS Errors unbound sent (RFC 8914), and never unbound's NSID:
    NSID is per hop (RFC 5001).
Unbound is asked first: meshdns's answer comes through unbound's cache
afterwards, so its TTLs can only have counted further down.

The tests are black-box on purpose: they talk to the twistd process over real
sockets and import nothing of meshdns. The few tests named C{test_lab_...} check
the lab itself (unbound alone), so that a pass elsewhere means something.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from tests.support import dnslab
from tests.support.processes import MeshdnsProcess, launch_meshdns
from tests.support.required import unavailable
from tests.support.waiting import wait_until

#: How many seconds meshdns's TTLs may lag unbound's: the time between the two
#: questions, plus rounding.
TTL_LAG = 3
#: How many seconds meshdns's TTL may be above unbound's: both count down whole
#: seconds, from different instants.
TTL_ROUNDING = 1
#: meshdns's cap on UDP answers (its design: 1232 bytes, as DNS Flag Day 2020 advises).
MESHDNS_UDP_CAP = 1232
TIMEOUT = 3.0
#: Types that exist for DNSSEC only: a DO=0 client must never see them unasked.
DNSSEC_TYPES = {dns.rdatatype.RRSIG, dns.rdatatype.NSEC, dns.rdatatype.NSEC3}
#: An EDNS option code from the range for local and experimental use (RFC 6891 9).
UNKNOWN_OPTION = 65001
IN = dns.rdataclass.IN
#: RFC 8914's info-codes that say DNSSEC validation failed (1, 2, 5 to 12).
VALIDATION_FAILURES = {1, 2, 5, 6, 7, 8, 9, 10, 11, 12}


@dataclass(frozen=True)
class Combo:
    """What a client asks for: EDNS or not, and the DO, AD and CD bits."""

    edns: bool = True
    do: bool = False
    ad: bool = False
    cd: bool = False


#: The client kinds the RFCs tell apart: a plain stub without EDNS, an EDNS stub,
#: a validating stub (DO), a stub that trusts its resolver's AD (RFC 6840 5.7)
#: and a stub that validates by itself (CD with DO).
COMBOS = {
    "classic": Combo(edns=False),
    "do0": Combo(),
    "do1": Combo(do=True),
    "ad1": Combo(ad=True),
    "cd1": Combo(do=True, cd=True),
}
DNSSEC_COMBOS = ("do0", "do1", "ad1", "cd1")

#: Questions asked in every zone: (name relative to the zone, type).
QUESTIONS = [
    ("www", "A"),
    ("www", "AAAA"),
    ("", "MX"),
    ("txt", "TXT"),
    ("_sip._tcp", "SRV"),
    ("", "HTTPS"),
    ("svc", "SVCB"),
    ("unknown", "TYPE65280"),
    ("", "DNSKEY"),
    ("", "SOA"),
    ("", "NS"),
    ("alias", "A"),  # CNAME to an existing name
    ("dangling", "A"),  # CNAME to nothing: NXDOMAIN with a chain
    ("host.old", "A"),  # through a DNAME
    ("missing.old", "A"),  # a DNAME, then NXDOMAIN
    ("any.wild", "A"),  # a wildcard
    ("nope", "A"),  # NXDOMAIN
    ("www", "MX"),  # NODATA
    ("big700", "TXT"),  # over 512 bytes, under 1232
]
#: The broken zone answers SERVFAIL to a validating question whatever is asked.
BROKEN_QUESTIONS = [("www", "A"), ("txt", "TXT"), ("nope", "A")]


def qname(label: str, zone: str) -> str:
    """C{label} below C{zone}, or the zone's apex for C{""}."""
    return f"{label}.{zone}" if label else zone


def make_query(
    name: str,
    rdtype: str,
    combo: Combo,
    payload: int = 1232,
    options: list[dns.edns.Option] | None = None,
) -> dns.message.QueryMessage:
    """A recursive query (RD=1) for C{name} C{rdtype}, as C{combo}'s client sends it."""
    query = dns.message.make_query(
        name,
        rdtype,
        use_edns=0 if combo.edns else False,
        payload=payload,
        want_dnssec=combo.do,
        options=options,
    )
    if combo.ad:
        query.flags |= dns.flags.AD
    if combo.cd:
        query.flags |= dns.flags.CD
    return query


@dataclass(frozen=True)
class Server:
    """Somewhere to ask: unbound or meshdns."""

    address: str
    port: int

    def ask(self, query: dns.message.Message, tcp: bool = False) -> dns.message.Message:
        """One exchange over UDP or TCP; a truncated UDP answer is returned as it is."""
        send = dns.query.tcp if tcp else dns.query.udp
        return send(query, self.address, port=self.port, timeout=TIMEOUT)

    def exchange(self, wire: bytes) -> bytes:
        """Send raw bytes over UDP and return the raw reply: for queries dnspython will not make."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(TIMEOUT)
            sock.sendto(wire, (self.address, self.port))
            return sock.recv(65535)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dnslab.Lab]:
    """
    The lab, for the whole module. Missing Debian packages fail the module
    when we are root or on CI (C{test.sh} installs them, so their absence is a
    bug of the set-up) and skip it otherwise, saying what to install.
    """
    missing = dnslab.missing_packages()
    if missing:
        unavailable(f"the DNSSEC lab needs the Debian packages {' '.join(missing)}")
    try:
        with dnslab.running_lab(tmp_path_factory.mktemp("dnslab")) as running:
            yield running
    except dnslab.LabError as error:
        pytest.fail(f"the DNSSEC lab did not start: {error}")


@pytest.fixture(scope="module")
def meshdns_process(
    lab: dnslab.Lab, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MeshdnsProcess]:
    """One meshdns for the module, forwarding everything to the lab's unbound."""
    process = launch_meshdns(
        tmp_path_factory.mktemp("meshdns"),
        {"upstream": {"servers": [lab.unbound.server], "timeout": TIMEOUT}},
    )
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def unbound(lab: dnslab.Lab) -> Server:
    return Server(lab.unbound.address, lab.unbound.port)


@pytest.fixture(scope="module")
def meshdns(meshdns_process: MeshdnsProcess) -> Server:
    return Server(meshdns_process.address, meshdns_process.port)


# -- comparing by the RFCs' rules ------------------------------------------------------------


def rrset_key(rrset: dns.rrset.RRset) -> tuple:
    """
    What must be equal between two copies of an RRset: owner (case-insensitive,
    as DNS names compare), class, type, covered type, and every rdata as
    bytes, uncompressed, so that names inside rdata and unknown types count
    byte for byte. Not the TTL: that is compared on its own.
    """
    rdatas = frozenset(rdata.to_wire() for rdata in rrset)
    return (rrset.name, rrset.rdclass, rrset.rdtype, rrset.covers, rdatas)


def section_keys(section: list[dns.rrset.RRset]) -> set[tuple]:
    return {rrset_key(rrset) for rrset in section}


def dnssec_rrsets(reply: dns.message.Message) -> set[tuple]:
    """(section, owner, type, covered type) of every RRSIG, NSEC and NSEC3 RRset."""
    return {
        (index, rrset.name, dns.rdatatype.to_text(rrset.rdtype), rrset.covers)
        for index, section in enumerate(reply.sections[1:], start=1)
        for rrset in section
        if rrset.rdtype in DNSSEC_TYPES
    }


def option_data(reply: dns.message.Message, code: int) -> list[bytes]:
    """The data of each EDNS option C{code} in C{reply}."""
    return [option.to_wire() for option in reply.options if option.otype == code]


def error_kinds(reply: dns.message.Message) -> set[int | str]:
    """
    The Extended DNS Errors of C{reply} (RFC 8914), by info-code, except that
    the codes of a DNSSEC validation failure count as one kind: unbound names
    the cause (7, Signature Expired) when a zone first fails and answers 6
    (DNSSEC Bogus) from its cache after that, so which of the two reaches
    meshdns depends only on who asked first.
    """
    return {
        "validation failure" if error.code in VALIDATION_FAILURES else error.code
        for error in reply.extended_errors()
    }


def describe_errors(reply: dns.message.Message) -> list[str]:
    """C{reply}'s Extended DNS Errors as RFC 8914 writes them: code (text)."""
    return [f"{error.code} ({error.text or ''})" for error in reply.extended_errors()]


def flag(message: dns.message.Message, bit: int) -> bool:
    return bool(message.flags & bit)


def assert_header(query: dns.message.Message, got: dns.message.Message) -> None:
    """The header rules that do not depend on unbound's answer."""
    assert flag(got, dns.flags.QR), "QR=0 in a reply"
    assert not flag(got, dns.flags.AA), "AA=1: a forwarded answer is not authoritative"
    assert flag(got, dns.flags.RD) == flag(query, dns.flags.RD), "RD not echoed"
    assert flag(got, dns.flags.CD) == flag(query, dns.flags.CD), "CD not echoed (RFC 4035 3.2.2)"
    assert got.question == query.question, f"question {got.question} for {query.question}"


def assert_edns(query: dns.message.Message, got: dns.message.Message) -> None:
    """An OPT record iff the query had one (RFC 6891 7), version 0, DO echoed (RFC 3225 3)."""
    if query.edns < 0:
        assert got.edns < 0, "an OPT record in the reply to a query without EDNS"
        return
    assert got.edns == 0, f"EDNS version {got.edns} in the reply (OPT missing if -1)"
    asked_do = bool(query.ednsflags & dns.flags.DO)
    assert bool(got.ednsflags & dns.flags.DO) == asked_do, "DO not echoed"


def assert_conforms(
    query: dns.message.Message, got: dns.message.Message, expected: dns.message.Message
) -> None:
    """
    C{got} (meshdns's reply to C{query}) is what a forwarder may answer when
    the resolver behind it answered C{expected} to the same query.
    """
    rcode = dns.rcode.to_text(got.rcode())
    expected_rcode = dns.rcode.to_text(expected.rcode())
    assert rcode == expected_rcode, f"rcode {rcode}, unbound's {expected_rcode}"
    assert_header(query, got)
    assert flag(got, dns.flags.RA) == flag(expected, dns.flags.RA), "RA differs from unbound's"
    assert flag(got, dns.flags.TC) == flag(expected, dns.flags.TC), "TC differs from unbound's"
    client_wants_ad = bool(query.ednsflags & dns.flags.DO) or flag(query, dns.flags.AD)
    want_ad = flag(expected, dns.flags.AD) and client_wants_ad and not flag(query, dns.flags.CD)
    assert flag(got, dns.flags.AD) == want_ad, (
        f"AD={int(flag(got, dns.flags.AD))}, want {int(want_ad)} (unbound "
        f"AD={int(flag(expected, dns.flags.AD))}; RFC 6840 5.8, none for CD=1)"
    )
    assert_edns(query, got)
    if not query.ednsflags & dns.flags.DO and query.question[0].rdtype not in DNSSEC_TYPES:
        assert not dnssec_rrsets(got), f"DNSSEC records for a DO=0 client: {dnssec_rrsets(got)}"
    if flag(expected, dns.flags.TC):
        return  # a truncated answer may hold any part of the whole (RFC 2181 9)
    assert dnssec_rrsets(got) == dnssec_rrsets(expected), "RRSIG/NSEC/NSEC3 differ from unbound's"
    for index, title in ((1, "answer"), (2, "authority"), (3, "additional")):
        assert section_keys(got.sections[index]) == section_keys(expected.sections[index]), (
            f"{title} section differs:\n{got}\n--- unbound:\n{expected}"
        )
    expected_ttls = {
        rrset_key(rrset): rrset.ttl for section in expected.sections[1:] for rrset in section
    }
    for section in got.sections[1:]:
        for rrset in section:
            ttl = expected_ttls[rrset_key(rrset)]
            assert ttl - TTL_LAG <= rrset.ttl <= ttl + TTL_ROUNDING, (
                f"TTL {rrset.ttl} for {rrset.name} {dns.rdatatype.to_text(rrset.rdtype)}, "
                f"unbound's {ttl}"
            )
    assert error_kinds(got) == error_kinds(expected), (
        f"Extended DNS Errors {describe_errors(got)}, unbound's {describe_errors(expected)}"
    )
    assert dnslab.UNBOUND_NSID.encode() not in option_data(got, dns.edns.OptionType.NSID), (
        "unbound's NSID relayed: NSID is per hop (RFC 5001)"
    )


def compare(
    meshdns: Server, unbound: Server, query: dns.message.Message, tcp: bool = False
) -> dns.message.Message:
    """Ask unbound, then meshdns, the same C{query}; check meshdns's reply; return it."""
    expected = unbound.ask(query, tcp)
    got = meshdns.ask(query, tcp)
    assert_conforms(query, got, expected)
    return got


# -- the lab itself --------------------------------------------------------------------------


@pytest.mark.parametrize("zone", ["secure.test.", "nsec3.test."])
def test_lab_unbound_validates_the_signed_zones(unbound: Server, zone: str) -> None:
    reply = unbound.ask(make_query(f"www.{zone}", "A", COMBOS["do1"]))
    assert reply.rcode() == dns.rcode.NOERROR
    assert flag(reply, dns.flags.AD)
    name = dns.name.from_text(f"www.{zone}")
    assert reply.find_rrset(reply.answer, name, IN, dns.rdatatype.RRSIG, dns.rdatatype.A)


def test_lab_unbound_servfails_the_broken_zone_with_an_extended_error(unbound: Server) -> None:
    reply = unbound.ask(make_query("www.broken.test.", "A", COMBOS["do1"]))
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert reply.extended_errors(), "unbound sent no Extended DNS Error (ede: yes)"
    checking_disabled = unbound.ask(make_query("www.broken.test.", "A", COMBOS["cd1"]))
    assert checking_disabled.rcode() == dns.rcode.NOERROR
    assert {rrset.rdtype for rrset in checking_disabled.answer} == {
        dns.rdatatype.A,
        dns.rdatatype.RRSIG,
    }


def test_lab_unbound_finds_plain_test_insecure(unbound: Server) -> None:
    reply = unbound.ask(make_query("www.plain.test.", "A", COMBOS["do1"]))
    assert reply.rcode() == dns.rcode.NOERROR
    assert not flag(reply, dns.flags.AD)
    assert [rrset.rdtype for rrset in reply.answer] == [dns.rdatatype.A]


@pytest.mark.parametrize(("zone", "proof"), [("secure.test.", "NSEC"), ("nsec3.test.", "NSEC3")])
@pytest.mark.parametrize(
    ("label", "rdtype", "rcode"), [("nope", "A", "NXDOMAIN"), ("www", "MX", "NOERROR")]
)
def test_lab_unbound_proves_nxdomain_and_nodata(
    unbound: Server, zone: str, proof: str, label: str, rdtype: str, rcode: str
) -> None:
    reply = unbound.ask(make_query(qname(label, zone), rdtype, COMBOS["do1"]))
    assert dns.rcode.to_text(reply.rcode()) == rcode
    assert not reply.answer
    assert flag(reply, dns.flags.AD)
    types = {dns.rdatatype.to_text(rrset.rdtype) for rrset in reply.authority}
    assert types == {"SOA", proof, "RRSIG"}


def test_lab_answer_sizes_straddle_the_limits(unbound: Server) -> None:
    """big700 fits 1232 bytes but not 512; big1500 fits 4096 but not 1232; big5000 fits nothing."""
    sizes = {}
    for name in dnslab.BIG_TXT:
        reply = unbound.ask(make_query(f"{name}.secure.test.", "TXT", COMBOS["do0"]), tcp=True)
        sizes[name] = len(reply.to_wire())
    assert 512 < sizes["big700"] <= 1232 - 200  # room left for an RRSIG and the OPT
    assert 1232 < sizes["big1500"] <= 4096 - 200
    assert sizes["big5000"] > 4096
    # unbound itself sends 4096 bytes over UDP, so meshdns's own cap is what is tested.
    udp = unbound.ask(make_query("big1500.secure.test.", "TXT", COMBOS["do0"], payload=4096))
    assert not flag(udp, dns.flags.TC)


def test_lab_unbound_answers_nsid(unbound: Server) -> None:
    query = make_query("www.secure.test.", "A", COMBOS["do0"], options=[dns.edns.NSIDOption(b"")])
    reply = unbound.ask(query)
    assert option_data(reply, dns.edns.OptionType.NSID) == [dnslab.UNBOUND_NSID.encode()]


def test_lab_unbound_refuses_names_outside_the_lab(unbound: Server) -> None:
    """Nothing outside the test zones is resolved: unbound never iterates off this machine."""
    reply = unbound.ask(make_query("example.com.", "A", COMBOS["do0"]))
    assert reply.rcode() == dns.rcode.REFUSED


# -- meshdns against unbound -----------------------------------------------------------------


def matrix() -> list[pytest.param]:
    """Every question in every zone, for every kind of client, over UDP and TCP."""
    params = []
    zones = ["secure.test.", "nsec3.test.", "plain.test."]
    cases = [(zone, q) for zone in zones for q in QUESTIONS]
    cases += [("broken.test.", q) for q in BROKEN_QUESTIONS]
    for zone, (label, rdtype) in cases:
        for combo in COMBOS:
            for transport in ("udp", "tcp"):
                name = qname(label, zone)
                test_id = f"{name}{rdtype}-{combo}-{transport}"
                params.append(pytest.param(name, rdtype, combo, transport, id=test_id))
    return params


@pytest.mark.parametrize(("name", "rdtype", "combo", "transport"), matrix())
def test_answer_matches_unbound(
    meshdns: Server, unbound: Server, name: str, rdtype: str, combo: str, transport: str
) -> None:
    compare(meshdns, unbound, make_query(name, rdtype, COMBOS[combo]), tcp=transport == "tcp")


def test_dig_dnssec_gets_ad_and_rrsig(meshdns: Server) -> None:
    """The README's walk-through: C{dig +dnssec www.secure.test} through meshdns."""
    reply = meshdns.ask(make_query("www.secure.test.", "A", COMBOS["do1"]))
    assert flag(reply, dns.flags.AD), "no AD for a validated answer asked with DO=1"
    assert {dns.rdatatype.to_text(rrset.rdtype) for rrset in reply.answer} == {"A", "RRSIG"}


@pytest.mark.parametrize("zone", ["secure.test.", "nsec3.test.", "plain.test."])
@pytest.mark.parametrize(
    ("label", "chain"),
    # A DNAME is followed by the CNAME synthesised from it (RFC 6672 2.3).
    [("dangling", ["CNAME"]), ("missing.old", ["DNAME", "CNAME"])],
)
def test_chain_before_nxdomain_is_kept(
    meshdns: Server, zone: str, label: str, chain: list[str]
) -> None:
    """RFC 6604: NXDOMAIN refers to the chain's last name, and the chain stays in the answer."""
    reply = meshdns.ask(make_query(qname(label, zone), "A", COMBOS["do0"]))
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert [dns.rdatatype.to_text(rrset.rdtype) for rrset in reply.answer] == chain


@pytest.mark.parametrize("zone", ["secure.test.", "nsec3.test."])
def test_wildcard_signature_keeps_its_labels_field(meshdns: Server, zone: str) -> None:
    """
    An answer synthesised from C{*.wild} is signed with the labels field of the
    wildcard (RFC 4034 3.1.3): one less than the owner's, which is how a
    validator knows to look for the proof that no closer name exists.
    """
    name = dns.name.from_text(f"labels.wild.{zone}")
    reply = meshdns.ask(make_query(name.to_text(), "A", COMBOS["do1"]))
    signature = reply.get_rrset(reply.answer, name, IN, dns.rdatatype.RRSIG, dns.rdatatype.A)
    assert signature is not None, f"no RRSIG for the A record of a DO=1 answer:\n{reply}"
    assert signature[0].labels == len(name.labels) - 2  # neither the root label nor the leftmost


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_unknown_type_rdata_byte_for_byte(meshdns: Server, transport: str) -> None:
    """RFC 3597: a type nobody here knows comes back with the zone file's bytes, unchanged."""
    reply = meshdns.ask(
        make_query("unknown.secure.test.", "TYPE65280", COMBOS["do0"]), tcp=transport == "tcp"
    )
    assert [rdata.to_wire() for rrset in reply.answer for rdata in rrset] == [b"\x0a\x00\x00\x01"]


@pytest.mark.parametrize("combo", ["do0", "do1", "ad1"])
def test_broken_zone_servfail_carries_unbound_extended_error(
    meshdns: Server, unbound: Server, combo: str
) -> None:
    query = make_query("txt.broken.test.", "TXT", COMBOS[combo])
    got = compare(meshdns, unbound, query)
    assert got.rcode() == dns.rcode.SERVFAIL
    assert got.extended_errors(), "unbound's Extended DNS Error was not passed on (RFC 8914)"


def test_broken_zone_data_with_checking_disabled(meshdns: Server, unbound: Server) -> None:
    got = compare(meshdns, unbound, make_query("txt.broken.test.", "TXT", COMBOS["cd1"]))
    assert got.rcode() == dns.rcode.NOERROR
    assert {dns.rdatatype.to_text(rrset.rdtype) for rrset in got.answer} == {"TXT", "RRSIG"}


def test_question_case_is_echoed_as_asked(meshdns: Server) -> None:
    """Resolvers that use 0x20 case randomisation (RFC 9018 style) match replies by case."""
    name = "WwW.SeCuRe.TeSt."
    reply = meshdns.ask(make_query(name, "A", COMBOS["do0"]))
    assert reply.question[0].name.to_text() == name


def test_rd_zero_is_echoed(meshdns: Server) -> None:
    query = make_query("www.secure.test.", "A", COMBOS["do0"])
    query.flags &= ~dns.flags.RD
    assert_header(query, meshdns.ask(query))


# -- sizes -----------------------------------------------------------------------------------


def assert_truncated(query: dns.message.Message, got: dns.message.Message, limit: int) -> None:
    assert flag(got, dns.flags.TC), f"TC=0 for an answer over {limit} bytes"
    assert len(got.to_wire()) <= limit, f"{len(got.to_wire())} bytes over UDP, limit {limit}"
    assert got.rcode() == dns.rcode.NOERROR
    assert_header(query, got)
    assert_edns(query, got)


@pytest.mark.parametrize("name", ["big700", "big1500"])
def test_udp_without_edns_is_truncated_over_512_bytes(meshdns: Server, name: str) -> None:
    """RFC 1035 4.2.1: without EDNS, UDP messages are at most 512 bytes."""
    query = make_query(f"{name}.secure.test.", "TXT", COMBOS["classic"])
    assert_truncated(query, meshdns.ask(query), 512)


@pytest.mark.parametrize("payload", [1232, 4096])
@pytest.mark.parametrize("name", ["big1500", "big5000"])
@pytest.mark.parametrize("combo", ["do0", "do1"])
def test_udp_with_edns_is_truncated_over_1232_bytes(
    meshdns: Server, name: str, payload: int, combo: str
) -> None:
    """The client's EDNS size, and meshdns's cap of 1232 however large the client's."""
    query = make_query(f"{name}.secure.test.", "TXT", COMBOS[combo], payload=payload)
    assert_truncated(query, meshdns.ask(query), MESHDNS_UDP_CAP)


@pytest.mark.parametrize("combo", ["do0", "do1"])
def test_udp_with_edns_under_1232_bytes_is_whole(
    meshdns: Server, unbound: Server, combo: str
) -> None:
    query = make_query("big700.secure.test.", "TXT", COMBOS[combo], payload=4096)
    got = compare(meshdns, unbound, query)
    assert not flag(got, dns.flags.TC)


@pytest.mark.parametrize("name", list(dnslab.BIG_TXT))
@pytest.mark.parametrize("combo", ["classic", "do0", "do1"])
def test_tcp_answer_is_whole(meshdns: Server, unbound: Server, name: str, combo: str) -> None:
    got = compare(meshdns, unbound, make_query(f"{name}.secure.test.", "TXT", COMBOS[combo]), True)
    assert not flag(got, dns.flags.TC)


# -- EDNS ------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_edns_version_1_gets_badvers(meshdns: Server, transport: str) -> None:
    """RFC 6891 6.1.3: BADVERS (extended rcode 16), with an OPT of the highest version known, 0."""
    query = dns.message.make_query("www.secure.test.", "A", use_edns=1)
    reply = meshdns.ask(query, tcp=transport == "tcp")
    assert reply.rcode() == dns.rcode.BADVERS
    assert reply.edns == 0
    assert not reply.answer


def test_two_opt_records_get_formerr(meshdns: Server) -> None:
    """RFC 6891 6.1.1: more than one OPT record makes the query malformed."""
    query = make_query("www.secure.test.", "A", COMBOS["do0"])
    wire = bytearray(query.to_wire())
    # The OPT is the last record: repeat it and count it in ARCOUNT.
    opt = struct.pack("!BHHIH", 0, dns.rdatatype.OPT, 1232, 0, 0)
    assert wire.endswith(opt)
    wire += opt
    struct.pack_into("!H", wire, 10, 2)
    reply = meshdns.exchange(bytes(wire))
    ident, flags = struct.unpack_from("!HH", reply)
    assert ident == query.id
    assert flags & dns.flags.QR
    rcode = dns.rcode.to_text(flags & 0xF)
    assert rcode == "FORMERR", f"{rcode} for a query with two OPT records"


def test_nsid_is_not_relayed(meshdns: Server, unbound: Server) -> None:
    """NSID names the server that answers (RFC 5001): unbound's is not meshdns's."""
    query = make_query("www.secure.test.", "A", COMBOS["do0"], options=[dns.edns.NSIDOption(b"")])
    compare(meshdns, unbound, query)


@pytest.mark.parametrize("combo", ["do0", "do1"])
def test_unknown_edns_option_does_not_break_the_answer(
    meshdns: Server, unbound: Server, combo: str
) -> None:
    """RFC 6891 6.1.2: unknown options are ignored, not an error."""
    option = dns.edns.GenericOption(UNKNOWN_OPTION, b"meshdns-lab")
    compare(meshdns, unbound, make_query("www.secure.test.", "A", COMBOS[combo], options=[option]))


# -- the same question again, from meshdns's cache -------------------------------------------


def cache_cases() -> list[pytest.param]:
    """
    Every (first, then) pair of DNSSEC combinations, on a name of its own (so
    the first question is the only one before it): a signed positive answer,
    a signed NXDOMAIN, and a bogus answer.
    """
    params = []
    for first in DNSSEC_COMBOS:
        for then in DNSSEC_COMBOS:
            for kind, template in (
                ("positive", "{}-{}.wild.secure.test."),
                ("nxdomain", "nx-{}-{}.secure.test."),
                ("bogus", "{}-{}.wild.broken.test."),
            ):
                name = template.format(first, then)
                params.append(pytest.param(name, first, then, id=f"{kind}-{first}-then-{then}"))
    return params


@pytest.mark.parametrize(("name", "first", "then"), cache_cases())
def test_cached_answer_serves_each_dnssec_combination(
    meshdns: Server, unbound: Server, name: str, first: str, then: str
) -> None:
    """
    Whatever was asked first, the second client gets what unbound gives it: no
    RRSIGs for DO=0, no unsigned copy for DO=1, and no CD=1 answer (data from
    a bogus zone) for a CD=0 client, which must get SERVFAIL.
    """
    meshdns.ask(make_query(name, "A", COMBOS[first]))
    compare(meshdns, unbound, make_query(name, "A", COMBOS[then]))


#: Seconds between the first and the second question of the countdown tests.
AGE = 2.5
COUNTDOWN_CASES = {
    f"{kind}-{combo}": (template.format(combo), combo)
    for kind, template in (
        ("positive", "ttl-{}.wild.secure.test."),
        ("nxdomain", "ttl-nx-{}.secure.test."),
    )
    for combo in ("do0", "do1")
}


@pytest.fixture(scope="module")
def first_answers(meshdns: Server) -> dict[str, dns.message.Message]:
    """
    Each countdown case asked once, then a wait (once for all cases) until the
    case asked last, the youngest in the cache, has aged by L{AGE} seconds:
    asked again, its TTLs have dropped by C{int(AGE)}. The wait is bounded
    by L{AGE}, so the cases asked earlier have aged at least as long.
    """
    answers = {
        case: meshdns.ask(make_query(name, "A", COMBOS[combo]))
        for case, (name, combo) in COUNTDOWN_CASES.items()
    }
    last = list(COUNTDOWN_CASES)[-1]
    name, combo = COUNTDOWN_CASES[last]
    before = [r.ttl for s in answers[last].sections[1:] for r in s]

    def aged() -> bool:
        again = meshdns.ask(make_query(name, "A", COMBOS[combo]))
        after = [r.ttl for s in again.sections[1:] for r in s]
        return bool(after) and all(t <= b - int(AGE) for t, b in zip(after, before, strict=False))

    wait_until(aged, f"{name} to age by {AGE} s in meshdns's cache", timeout=AGE)
    return answers


@pytest.mark.parametrize("case", list(COUNTDOWN_CASES))
def test_cached_ttls_count_down(
    meshdns: Server, unbound: Server, first_answers: dict[str, dns.message.Message], case: str
) -> None:
    """A cached answer ages (RFC 1035 3.2.1, RFC 2308 5): its TTLs drop as time passes."""
    name, combo = COUNTDOWN_CASES[case]
    got = compare(meshdns, unbound, make_query(name, "A", COMBOS[combo]))
    before = {rrset_key(r): r.ttl for s in first_answers[case].sections[1:] for r in s}
    after = {rrset_key(r): r.ttl for s in got.sections[1:] for r in s}
    assert before.keys() == after.keys(), "the second answer has other records than the first"
    assert after, "no records to age"
    for key, ttl in after.items():
        assert ttl <= before[key] - int(AGE), f"{key[0]}: TTL {before[key]}, {AGE} s later {ttl}"
