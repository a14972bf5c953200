"""
Tests for L{meshdns_plugin.resolvconf}: nameserver, search and domain lines as
glibc reads them.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from meshdns_plugin.resolvconf import ResolvConf, parse_resolv_conf, read_resolv_conf

KUBERNETES = """\
# a pod's resolv.conf
search ns1.svc.cluster.local svc.cluster.local cluster.local
nameserver 10.96.0.10
options ndots:5
"""


def test_kubernetes_pod() -> None:
    parsed = parse_resolv_conf(KUBERNETES)
    assert parsed.nameservers == (("10.96.0.10", 53),)
    assert parsed.search == ("ns1.svc.cluster.local", "svc.cluster.local", "cluster.local")


def test_nameservers_in_file_order() -> None:
    text = "nameserver 192.0.2.2\nnameserver 2001:db8::53\nnameserver 192.0.2.1\n"
    assert parse_resolv_conf(text).nameservers == (
        ("192.0.2.2", 53),
        ("2001:db8::53", 53),
        ("192.0.2.1", 53),
    )


def test_ipv6_nameserver_is_normalised() -> None:
    parsed = parse_resolv_conf("nameserver 2001:DB8:0:0::53\n")
    assert parsed.nameservers == ((str(ipaddress.ip_address("2001:db8::53")), 53),)


def test_ipv6_zone_id_is_kept() -> None:
    """A link-local server is unreachable without its interface: the zone stays."""
    parsed = parse_resolv_conf("nameserver fe80::1%eth0\n")
    ((address, port),) = parsed.nameservers
    assert port == 53
    ip = ipaddress.ip_address(address)
    assert ip.version == 6 and ip.scope_id == "eth0"
    assert str(ip).startswith("fe80::1")


def test_comments_and_blank_lines() -> None:
    text = (
        "# nameserver 192.0.2.99\n"
        "; nameserver 192.0.2.98\n"
        "\n"
        "   \n"
        "nameserver 192.0.2.1 # the router\n"
        "nameserver 192.0.2.2 ; backup\n"
        "search a.example # b.example\n"
    )
    parsed = parse_resolv_conf(text)
    assert parsed.nameservers == (("192.0.2.1", 53), ("192.0.2.2", 53))
    assert parsed.search == ("a.example",)


def test_tabs_and_spaces() -> None:
    parsed = parse_resolv_conf("nameserver\t192.0.2.1\nsearch \t a.example\t\tb.example \n")
    assert parsed.nameservers == (("192.0.2.1", 53),)
    assert parsed.search == ("a.example", "b.example")


def test_search_is_lowercased_without_trailing_dots() -> None:
    parsed = parse_resolv_conf("search NS1.svc.Cluster.Local. . example.com.\n")
    assert parsed.search == ("ns1.svc.cluster.local", "example.com")


def test_domain_line() -> None:
    assert parse_resolv_conf("domain corp.example\n").search == ("corp.example",)


def test_last_search_or_domain_wins() -> None:
    assert parse_resolv_conf("search a.example b.example\ndomain c.example\n").search == (
        "c.example",
    )
    assert parse_resolv_conf("domain c.example\nsearch a.example b.example\n").search == (
        "a.example",
        "b.example",
    )


def test_invalid_lines_are_skipped() -> None:
    text = (
        "nameserver\n"
        "nameserver not-an-address\n"
        "nameserver 192.0.2.300\n"
        "nameserver 192.0.2.1%eth0\n"
        "nameserver dns.example.com\n"
        "nameserver 192.0.2.7\n"
        "search\n"
        "garbage line here\n"
        "NAMESERVER 192.0.2.8\n"
        "options rotate timeout:1\n"
        "sortlist 130.155.160.0/255.255.240.0\n"
    )
    parsed = parse_resolv_conf(text)
    assert parsed.nameservers == (("192.0.2.7", 53),)
    assert parsed.search == ()


def test_empty() -> None:
    assert parse_resolv_conf("") == ResolvConf()


@given(st.lists(st.ip_addresses(), max_size=6))
def test_any_address_is_read_back(
    addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
) -> None:
    text = "".join(f"nameserver {a.exploded}\n" for a in addresses)
    assert parse_resolv_conf(text).nameservers == tuple((str(a), 53) for a in addresses)


def test_read_file(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    path.write_text(KUBERNETES)
    assert read_resolv_conf(str(path)) == parse_resolv_conf(KUBERNETES)


def test_read_missing_file_is_empty(tmp_path: Path) -> None:
    assert read_resolv_conf(str(tmp_path / "missing.conf")) == ResolvConf()


def test_read_file_with_bad_bytes(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    path.write_bytes(b"# caf\xe9\nnameserver 192.0.2.1\n")
    assert read_resolv_conf(str(path)).nameservers == (("192.0.2.1", 53),)
