"""
The real C{twistd -n meshdns} process, queried over real UDP and TCP sockets,
forwarding to a real (fake) upstream DNS server on loopback.
"""

from __future__ import annotations

import ipaddress
import socket
import time

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.reversename
import pytest

from tests.support.processes import free_port, ipv6_loopback_missing, launch_meshdns, run_twistd
from tests.support.samples import CONF_ENTRIES, ENTRIES, SEARCH, external_name
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def meshdns(module_upstream, tmp_path_factory):
    """One meshdns for the read-only tests: issue 2's examples plus the guide's entries."""
    process = launch_meshdns(
        tmp_path_factory.mktemp("meshdns"),
        {
            "upstream": {"servers": [module_upstream.server], "timeout": 2},
            "mesh": {"namespace": "ns1", "search": list(SEARCH)},
            "entries": ["samples.yaml", CONF_ENTRIES],
        },
        {"samples.yaml": ENTRIES},
    )
    yield process
    process.stop()


def _addresses(reply: dns.message.Message, rdtype: str = "A") -> list[str]:
    wanted = dns.rdatatype.from_text(rdtype)
    return sorted(r.address for rrset in reply.answer if rrset.rdtype == wanted for r in rrset)


@pytest.mark.parametrize("tcp", [False, True])
def test_istio_guide_examples(meshdns, tcp) -> None:
    """address.internal has its address; auto.internal and the tcp-echo hosts get VIPs."""
    assert _addresses(meshdns.query("address.internal", tcp=tcp)) == ["198.51.100.1"]
    vips = {}
    for host in (
        "auto.internal",
        "tcp-echo.external-1.svc.cluster.local",
        "tcp-echo.external-2.svc.cluster.local",
    ):
        (vip,) = _addresses(meshdns.query(host, tcp=tcp))
        assert ipaddress.ip_address(vip) in ipaddress.ip_network("240.240.0.0/16")
        assert not vip.endswith((".0", ".255"))
        (vip6,) = _addresses(meshdns.query(host, "AAAA", tcp=tcp), "AAAA")
        assert ipaddress.ip_address(vip6) in ipaddress.ip_network("2001:2::/48")
        vips[host] = vip
    assert len(set(vips.values())) == 3


@pytest.mark.parametrize("tcp", [False, True])
def test_issue_examples(meshdns, tcp) -> None:
    """The answers of issue 2 item 5, for a proxy in ns1."""
    for name in ("productpage.ns1.svc.cluster.local", "productpage.ns1", "productpage"):
        reply = meshdns.query(name, tcp=tcp)
        assert reply.rcode() == dns.rcode.NOERROR
        assert reply.flags & dns.flags.AA
        assert _addresses(reply) == ["10.96.0.10"]
        assert {r.ttl for r in reply.answer} == {30}
    assert _addresses(meshdns.query("example.ns2", tcp=tcp)) == ["10.96.0.20"]
    # example. (a Service in another namespace) is not a mesh name: forwarded,
    # and the fake upstream does not know it.
    assert meshdns.query("example", tcp=tcp).rcode() == dns.rcode.NXDOMAIN

    reply = meshdns.query("www.google.com.ns1.svc.cluster.local", tcp=tcp)
    assert [r.to_text() for r in reply.answer] == [
        "www.google.com.ns1.svc.cluster.local. 30 IN CNAME www.google.com.",
        "www.google.com. 30 IN A 192.0.2.7",
    ]
    reply = meshdns.query("FOO.wildcard", tcp=tcp)
    assert [r.to_text() for r in reply.answer] == ["foo.wildcard. 30 IN A 192.0.2.8"]
    assert reply.question[0].name.to_text() == "FOO.wildcard."
    reply = meshdns.query("foo.wildcard.ns1.svc.cluster.local", tcp=tcp)
    assert [r.to_text() for r in reply.answer] == [
        "foo.wildcard.ns1.svc.cluster.local. 30 IN CNAME foo.wildcard.",
        "foo.wildcard. 30 IN A 192.0.2.8",
    ]
    reply = meshdns.query("ipv4only.example", "AAAA", tcp=tcp)
    assert reply.rcode() == dns.rcode.NOERROR and reply.answer == []
    assert reply.flags & dns.flags.AA
    assert _addresses(meshdns.query("headless.ns1.svc.cluster.local", tcp=tcp)) == [
        "10.1.0.1",
        "10.1.0.2",
    ]


def test_ptr_of_vip_answered_locally(meshdns, module_upstream) -> None:
    (vip,) = _addresses(meshdns.query("auto.internal"))
    reverse = dns.reversename.from_address(vip).to_text()
    reply = meshdns.query(reverse, "PTR")
    assert [r.target.to_text() for rrset in reply.answer for r in rrset] == ["auto.internal."]
    assert module_upstream.count(reverse.lower(), "PTR") == 0


def test_other_types_of_mesh_names_are_forwarded(meshdns, module_upstream) -> None:
    before = module_upstream.count("address.internal.", "MX")
    meshdns.query("address.internal", "MX")
    assert module_upstream.count("address.internal.", "MX") == before + 1


def test_rotation(meshdns) -> None:
    firsts = {meshdns.query("many.example").answer[0][0].address for _ in range(24)}
    assert len(firsts) > 1


def test_forwarded_and_cached(meshdns, module_upstream) -> None:
    """A name outside the mesh goes upstream once, then comes from the cache."""
    name = "cache-me.upstream.test"
    first = meshdns.query(name)
    second = meshdns.query(name)
    assert _addresses(first) == _addresses(second) == ["127.0.0.10"]
    assert not first.flags & dns.flags.AA
    assert first.flags & dns.flags.RA
    assert module_upstream.count(name + ".") == 1


def test_ttl_counts_down_with_time_not_hits(meshdns) -> None:
    name = "ttl5.upstream.test"
    ttls = [meshdns.query(name).answer[0].ttl for _ in range(5)]
    assert ttls == [5] * 5 or (min(ttls) >= 4 and ttls == sorted(ttls, reverse=True))
    # Hits do not age it (above); time does: 2.1 s later it has dropped by 2.
    later = wait_until(
        lambda: (ttl := meshdns.query(name).answer[0].ttl) <= ttls[0] - 2 and ttl,
        f"the TTL of {name} to drop from {ttls[0]} to {ttls[0] - 2}",
        timeout=2.1,
    )
    assert 0 < later <= ttls[0] - 2


def test_nxdomain_with_soa_is_cached(meshdns, module_upstream) -> None:
    name = "nx-cached.upstream.test"
    for _ in range(3):
        reply = meshdns.query(name)
        assert reply.rcode() == dns.rcode.NXDOMAIN
        assert reply.authority and reply.authority[0].rdtype == dns.rdatatype.SOA
    assert module_upstream.count(name + ".") == 1


def test_nodata_is_cached(meshdns, module_upstream) -> None:
    for _ in range(2):
        reply = meshdns.query("nodata.upstream.test", "A")
        assert reply.rcode() == dns.rcode.NOERROR and not reply.answer
    assert module_upstream.count("nodata.upstream.test.", "A") == 1


@pytest.mark.parametrize(
    ("name", "rcode"),
    [("servfail.upstream.test", dns.rcode.SERVFAIL), ("refused.upstream.test", dns.rcode.REFUSED)],
)
def test_upstream_errors_pass_through(meshdns, name, rcode) -> None:
    """Stock Twisted turns these into NXDOMAIN; meshdns does not."""
    assert meshdns.query(name).rcode() == rcode


def test_big_answer_truncated_over_udp_whole_over_tcp(meshdns) -> None:
    udp = meshdns.query("big.upstream.test", use_edns=False)
    assert udp.flags & dns.flags.TC and not udp.answer
    tcp = meshdns.query("big.upstream.test", tcp=True)
    assert len(tcp.answer[0]) == 60
    edns = meshdns.query("big.upstream.test", use_edns=0, payload=1232)
    assert not edns.flags & dns.flags.TC and len(edns.answer[0]) == 60
    assert edns.edns == 0


def test_local_big_answer_truncated(meshdns) -> None:
    udp = meshdns.query("big.example", use_edns=False)
    assert udp.flags & dns.flags.TC
    assert len(meshdns.query("big.example", tcp=True).answer[0]) == 60


def test_truncated_upstream_answer_retried_over_tcp(meshdns, module_upstream) -> None:
    reply = meshdns.query("tc.upstream.test")
    assert _addresses(reply) == ["127.0.0.11"]
    assert module_upstream.count("tc.upstream.test.", "A", "tcp") == 1


def test_rd_echoed(meshdns) -> None:
    query = dns.message.make_query("productpage", "A")
    query.flags &= ~dns.flags.RD
    reply = dns.query.udp(query, "127.0.0.1", port=meshdns.port, timeout=5)
    assert not reply.flags & dns.flags.RD
    assert meshdns.query("productpage").flags & dns.flags.RD


def _raw_udp(port: int, data: bytes, timeout: float = 1.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(data, ("127.0.0.1", port))
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


def test_bad_packets(meshdns) -> None:
    """
    Junk with a header gets FORMERR, other opcodes NOTIMP. (That responses and
    short junk are dropped is shown by the dropped counter, in
    test_forwarding_faults: no reply within a timeout proves nothing.)
    """
    reply = _raw_udp(meshdns.port, b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff\xff")
    assert reply is not None
    assert reply[:2] == b"\x12\x34" and reply[2] & 0x80 and reply[3] & 0x0F == dns.rcode.FORMERR
    # NOTIMP is a real response.
    query = dns.message.make_query("productpage", "A")
    query.set_opcode(dns.opcode.NOTIFY)
    reply = dns.message.from_wire(_raw_udp(meshdns.port, query.to_wire()))
    assert reply.rcode() == dns.rcode.NOTIMP and reply.flags & dns.flags.QR
    # Still serving.
    assert _addresses(meshdns.query("productpage")) == ["10.96.0.10"]


def test_timeout_gives_servfail_in_time(meshdns) -> None:
    started = time.monotonic()
    reply = meshdns.query("blackhole.upstream.test", timeout=10)
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert time.monotonic() - started < 2 + 1


def test_failover_to_second_server(start_meshdns, upstream) -> None:
    dead = free_port()
    process = start_meshdns(
        {"upstream": {"servers": [f"127.0.0.1:{dead}", upstream.server], "timeout": 2}}
    )
    reply = process.query("failover.upstream.test")
    assert _addresses(reply) == ["127.0.0.10"]


EXTERNAL_NAMES = (
    external_name("mydb", "ns1", "db.upstream.test")
    + external_name("gone", "ns1", "nx-db.upstream.test")
    + external_name("inmesh", "ns1", "productpage.ns1.svc.cluster.local")
)


def test_external_name_service(start_meshdns, upstream) -> None:
    """
    A Service of type ExternalName answers with a CNAME to its externalName
    and, for a target outside the mesh, the upstream's addresses for it,
    asked once and then cached; the alias itself never goes upstream.
    """
    process = start_meshdns(
        {
            "upstream": {"servers": [upstream.server], "timeout": 2},
            "mesh": {"namespace": "ns1", "search": list(SEARCH)},
            "entries": ["samples.yaml", "external.yaml"],
        },
        {"samples.yaml": ENTRIES, "external.yaml": EXTERNAL_NAMES},
    )
    name = "mydb.ns1.svc.cluster.local"
    for tcp in (False, True, False, True):
        reply = process.query(name, tcp=tcp)
        assert reply.rcode() == dns.rcode.NOERROR
        assert reply.flags & dns.flags.AA
        cname, address = reply.answer
        assert cname.to_text() == f"{name}. 30 IN CNAME db.upstream.test."
        assert (address.name.to_text(), address.rdtype) == ("db.upstream.test.", dns.rdatatype.A)
        assert [r.address for r in address] == ["127.0.0.10"]
        assert 0 < address.ttl <= 300
    reply = process.query("mydb", "AAAA", tcp=True)
    assert [r.to_text() for r in reply.answer] == [
        "mydb. 30 IN CNAME db.upstream.test.",
        "db.upstream.test. 300 IN AAAA ::10",
    ]
    assert upstream.count("db.upstream.test", "A") == 1
    assert upstream.count("db.upstream.test", "AAAA") == 1
    counts = upstream.counts()
    assert not [key for key in counts if key[0].startswith("mydb.")]

    # A target the upstream does not know: the CNAME alone, NOERROR.
    reply = process.query("gone.ns1", tcp=True)
    assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AA
    assert [r.to_text() for r in reply.answer] == ["gone.ns1. 30 IN CNAME nx-db.upstream.test."]
    # A target in the mesh: its addresses from the table, nothing upstream.
    upstream.reset()
    reply = process.query("inmesh")
    assert [r.to_text() for r in reply.answer] == [
        "inmesh. 30 IN CNAME productpage.ns1.svc.cluster.local.",
        "productpage.ns1.svc.cluster.local. 30 IN A 10.96.0.10",
    ]
    assert upstream.counts() == {}


def test_bad_config_one_line(tmp_path) -> None:
    config = tmp_path / "meshdns.yaml"
    config.write_text("listen: {port: 99999}\n")
    code, output = run_twistd(["--config", str(config)])
    assert code != 0
    assert "Traceback" not in output
    assert f"{config}: listen.port: 99999 is out of range" in output.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "listen: {address: [127.0.0.1, '::1'], port: 0}",
            "listen.port: 0 (any free port) needs a single listen address, not 2",
        ),
        ("listen: {address: [127.0.0.1, 127.0.0.1]}", "listen.address: 127.0.0.1 is listed twice"),
        ("mesh: {namespace: Prod}", "mesh.namespace: 'Prod' is not a Kubernetes namespace name"),
        (
            "upstream: {servers: ['[192.0.2.1]:53']}",
            "upstream.servers: '[192.0.2.1]:53': brackets are for IPv6 only; write 192.0.2.1:53",
        ),
    ],
)
def test_bad_listen_namespace_and_servers_one_line(tmp_path, text, problem) -> None:
    config = tmp_path / "meshdns.yaml"
    config.write_text(text + "\n")
    code, output = run_twistd(["--config", str(config)])
    assert code != 0
    assert "Traceback" not in output
    assert f"{config}: {problem}" in output.strip().splitlines()[-1]


@pytest.fixture
def ipv6_loopback() -> None:
    missing = ipv6_loopback_missing()
    if missing:
        pytest.skip(missing)


@pytest.mark.usefixtures("ipv6_loopback")
def test_listens_on_ipv4_and_ipv6_loopback(start_meshdns, upstream) -> None:
    """
    C{listen.address: [127.0.0.1, "::1"]}: one port, UDP and TCP on each
    address, mesh names and forwarded ones alike.
    """
    process = start_meshdns(
        {
            "listen": {"address": ["127.0.0.1", "::1"]},
            "upstream": {"servers": [upstream.server]},
            "entries": [CONF_ENTRIES],
        }
    )
    for address in ("127.0.0.1", "::1"):
        for send in (dns.query.udp, dns.query.tcp):
            ask = dns.message.make_query
            mesh = send(ask("address.internal", "A"), address, port=process.port, timeout=5)
            assert _addresses(mesh) == ["198.51.100.1"], (address, send)
            forwarded = send(ask("both.upstream.test", "A"), address, port=process.port, timeout=5)
            assert _addresses(forwarded) == ["127.0.0.10"], (address, send)
    assert f"serving on 127.0.0.1, ::1 port {process.port}" in process.log()


@pytest.mark.usefixtures("ipv6_loopback")
def test_interface_option_given_twice(start_meshdns) -> None:
    """C{twistd meshdns -i ::1 -i 127.0.0.1} replaces the config's one address with both."""
    port = free_port("127.0.0.1", "::1")
    process = start_meshdns(
        {"listen": {"port": port}, "entries": [CONF_ENTRIES]},
        extra_args=["--interface", "::1", "-i", "127.0.0.1"],
    )
    for address in ("::1", "127.0.0.1"):
        for send in (dns.query.udp, dns.query.tcp):
            query = dns.message.make_query("address.internal", "A")
            reply = send(query, address, port=port, timeout=5)
            assert _addresses(reply) == ["198.51.100.1"], (address, send)
    assert f"serving on ::1, 127.0.0.1 port {port}" in process.log()


def test_bad_entries_are_logged_and_do_not_stop_startup(start_meshdns, upstream) -> None:
    bad = (
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n"
        "metadata: {name: x}\nspec: {hosts: [a.b], addresses: [1.2.3]}\n"
    )
    meshdns = start_meshdns({"upstream": {"servers": [upstream.server]}}, {"bad.yaml": bad})
    assert meshdns.query("a.b").answer == []  # left out: asked upstream
    output = meshdns.log()
    assert "Traceback" not in output
    assert "bad.yaml: document 0: spec.addresses[0]: '1.2.3' is not an IP address" in output


def test_tcp_queries_are_forwarded_over_tcp(meshdns, module_upstream) -> None:
    """UDP over UDP, TCP over TCP."""
    assert _addresses(meshdns.query("over-tcp.upstream.test", tcp=True)) == ["127.0.0.10"]
    assert module_upstream.count("over-tcp.upstream.test.", "A", "tcp") == 1
    assert module_upstream.count("over-tcp.upstream.test.", "A", "udp") == 0
    meshdns.query("over-udp.upstream.test")
    assert module_upstream.count("over-udp.upstream.test.", "A", "udp") == 1
    assert module_upstream.count("over-udp.upstream.test.", "A", "tcp") == 0


@pytest.mark.parametrize("rdtype", ["HTTPS", "SVCB", "CAA", "TYPE65280"])
def test_forwarded_types_write_no_log_lines(meshdns, rdtype: str) -> None:
    """Query logging is off: a forwarded query of any type adds nothing to the log."""
    before = meshdns.log()
    for name in ("svc.upstream.test", "unknown.upstream.test", "address.internal"):
        reply = meshdns.query(name, rdtype)
        assert reply.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN)
    assert meshdns.log() == before
