"""
L{meshdns_plugin.mesh.clusternames}: the names Kubernetes DNS does not have.

The names that must exist are those of Kubernetes' DNS specification
(kubernetes/dns, docs/specification.md, schema 1.1.0) for the Services
given; the absent ones are those CoreDNS's kubernetes plugin parses as
invalid (a first label other than C{svc} or C{pod}) or finds no Service for.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from meshdns_plugin.mesh.clusternames import absent

ZONE = b"cluster.local"
SERVICES = {("shop", "web"), ("shop", "db")}


def exists(namespace: str, name: str) -> bool:
    return (namespace, name) in SERVICES


def test_absent_names() -> None:
    for name in (
        b"www.example.test.cluster.local",  # neither svc. nor pod.
        b"www.example.test.svc.cluster.local",  # Service "example" in "test": none
        b"www.example.test.shop.svc.cluster.local",  # Service "test" in "shop": none
        b"cart.shop.svc.cluster.local",
        b"_http._tcp.cart.shop.svc.cluster.local",
        b"nothing.dns.cluster.local",
    ):
        assert absent(name, ZONE, exists), name


def test_names_kube_dns_may_answer_are_never_absent() -> None:
    for name in (
        b"cluster.local",
        b"svc.cluster.local",
        b"pod.cluster.local",
        b"shop.svc.cluster.local",  # a namespace: NODATA, not NXDOMAIN
        b"elsewhere.svc.cluster.local",  # a namespace meshdns may not know
        b"dns-version.cluster.local",  # the schema's TXT record
        b"ns.dns.cluster.local",
        b"10-0-0-1.shop.pod.cluster.local",
        b"*.shop.svc.cluster.local",
        b"web.any.svc.cluster.local",
        # Outside the zone: not its business.
        b"www.example.test",
        b"xcluster.local",
    ):
        assert not absent(name, ZONE, exists), name


_label = st.from_regex(r"[a-z]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
_address = st.ip_addresses()


@given(
    namespace=_label,
    service=_label,
    port=_label,
    protocol=st.sampled_from(["tcp", "udp", "sctp"]),
    hostname=_label,
    address=_address,
)
def test_every_name_of_the_specification_exists(
    namespace, service, port, protocol, hostname, address
) -> None:
    """Section 2.3 and 2.4: a Service's A/AAAA, SRV and endpoint names; 2.2's dns-version."""
    services = {(namespace, service)}
    dashed = str(address).replace(".", "-").replace(":", "-").encode()
    base = f"{service}.{namespace}.svc.cluster.local".encode()
    for name in (
        base,
        f"_{port}._{protocol}.".encode() + base,
        hostname.encode() + b"." + base,
        dashed + b"." + base,
        namespace.encode() + b".svc.cluster.local",
        b"dns-version.cluster.local",
    ):
        assert not absent(name, ZONE, lambda n, s: (n, s) in services), name
