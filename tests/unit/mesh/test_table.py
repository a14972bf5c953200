"""
Tests for L{meshdns_plugin.mesh.table}: every rule of DESIGN.md "Names the mesh
answers" and the examples of issue 2 item 5, checked through
L{NameTable.resolve} and the PTR index.

The proxy is in namespace C{ns1} with search list C{ns1.svc.cluster.local
svc.cluster.local cluster.local}, as in the issue.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from meshdns_plugin.mesh.allocator import allocate
from meshdns_plugin.mesh.model import Entries
from meshdns_plugin.mesh.table import NameTable, Resolution, build_table
from meshdns_plugin.mesh.view import mesh_view, vip_hosts
from meshdns_plugin.sources.files import parse_entries
from tests.support.paths import SHIPPED_ENTRIES

V4 = ipaddress.IPv4Network("240.240.0.0/16")
V6 = ipaddress.IPv6Network("2001:2::/48")
SEARCH = ("ns1.svc.cluster.local", "svc.cluster.local", "cluster.local")


def se(hosts: list[str], name: str = "se", namespace: str = "ns1", **spec: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    labels = spec.pop("labels", None)
    if labels:
        metadata["labels"] = labels
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": metadata,
        "spec": {"hosts": hosts, **spec},
    }


def svc(name: str, namespace: str, cluster_ip: str | None = None, **spec: Any) -> dict[str, Any]:
    if cluster_ip is not None:
        spec["clusterIP"] = cluster_ip
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def eps(service: str, namespace: str, *endpoints: tuple[str, bool | None]) -> dict[str, Any]:
    items = []
    for address, ready in endpoints:
        item: dict[str, Any] = {"addresses": [address]}
        if ready is not None:
            item["conditions"] = {"ready": ready}
        items.append(item)
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service}-x",
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "endpoints": items,
    }


MESH = [
    svc("productpage", "ns1", "10.96.0.10"),
    svc("example", "ns2", "10.96.0.20"),
    se(["www.google.com"], addresses=["192.0.2.1"]),
    se(["*.wildcard"], name="wild", addresses=["192.0.2.50"]),
    se(["*.deep.wildcard"], name="deep", addresses=["192.0.2.51"]),
    se(["ipv4only.example"], addresses=["192.0.2.60"]),
    se(["address.internal"], name="external-address", addresses=["198.51.100.1"]),
    se(["auto.internal"], name="external-auto", resolution="DNS"),
    se(["tcp-echo.external-1.svc.cluster.local"], name="e1", resolution="DNS"),
    se(["tcp-echo.external-2.svc.cluster.local"], name="e2", resolution="DNS"),
    se(["union.example"], name="u1", addresses=["192.0.2.70"]),
    se(["union.example", "other.example"], name="u2", addresses=["192.0.2.71", "2001:db8::71"]),
    svc("shared", "ns1", "10.96.0.30"),
    se(["shared.ns1.svc.cluster.local"], name="loses", addresses=["192.0.2.80"]),
    svc("db", "ns1", "None"),
    eps("db", "ns1", ("10.1.0.1", True), ("10.1.0.2", False)),
    eps("db", "ns1", ("10.1.0.3", None)),
    eps("db", "ns3", ("10.9.9.9", True)),
    svc("empty-headless", "ns1", "None"),
    se(["nothing.example"], name="nothing", resolution="NONE"),
    se(
        ["noalloc.example"],
        name="noalloc",
        resolution="DNS",
        labels={"networking.istio.io/enable-autoallocate-ip": "false"},
    ),
    se(["cidr.example"], name="cidr", resolution="STATIC", addresses=["10.50.0.0/16"]),
    se(["*.dnswild.example"], name="dnswild", resolution="STATIC"),
    se(
        ["hidden.example"], name="hidden", namespace="ns2", exportTo=["."], addresses=["192.0.2.90"]
    ),
    se(
        ["exported.example"],
        name="exported",
        namespace="ns2",
        exportTo=["ns1"],
        addresses=["192.0.2.91"],
    ),
    se(["private-auto.example"], name="private", namespace="ns2", exportTo=["."], resolution="DNS"),
]

ELIGIBLE = {
    "auto.internal",
    "tcp-echo.external-1.svc.cluster.local",
    "tcp-echo.external-2.svc.cluster.local",
}


def load(*documents: Any) -> Entries:
    return parse_entries(yaml.safe_dump_all(documents), "mesh.yaml")


def table_for(
    entries: Entries,
    namespace: str = "ns1",
    search: tuple[str, ...] = SEARCH,
    auto_allocate: bool = True,
    cluster_domain: str = "cluster.local",
    ttl: int = 30,
) -> NameTable:
    allocation = allocate(vip_hosts(entries, namespace, cluster_domain), V4, V6)
    view = mesh_view(
        entries,
        allocation,
        namespace=namespace,
        auto_allocate=auto_allocate,
        cluster_domain=cluster_domain,
    )
    return build_table(view, cluster_domain=cluster_domain, search=search, ttl=ttl)


@pytest.fixture(scope="module")
def entries() -> Entries:
    return load(*MESH)


@pytest.fixture(scope="module")
def table(entries: Entries) -> NameTable:
    return table_for(entries)


def found(table: NameTable, name: str) -> Resolution:
    resolution = table.resolve(name.encode())
    assert resolution is not None, f"{name} should be a mesh name"
    return resolution


def ipv4_of(table: NameTable, name: str) -> set[str]:
    return set(found(table, name).records.ipv4)


def reverse_name(address: str) -> bytes:
    """The PTR owner of an address, written out by hand."""
    ip = ipaddress.ip_address(address)
    if ip.version == 4:
        return (".".join(reversed(address.split("."))) + ".in-addr.arpa").encode()
    nibbles = ip.exploded.replace(":", "")
    return (".".join(reversed(nibbles)) + ".ip6.arpa").encode()


# --- Kubernetes Services ------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "productpage.ns1.svc.cluster.local",
        "productpage.ns1",
        "productpage.ns1.svc",
        "productpage",
    ],
)
def test_service_in_the_proxy_namespace(table: NameTable, name: str) -> None:
    resolution = found(table, name)
    assert resolution.owner == name.encode()
    assert resolution.alias is None
    assert resolution.records.ipv4 == ("10.96.0.10",)
    assert resolution.records.ipv6 == ()


@pytest.mark.parametrize(
    "name", ["example.ns2.svc.cluster.local", "example.ns2", "example.ns2.svc"]
)
def test_service_in_another_namespace(table: NameTable, name: str) -> None:
    assert ipv4_of(table, name) == {"10.96.0.20"}


@pytest.mark.parametrize("name", ["example", "example.ns1", "example.ns1.svc.cluster.local"])
def test_service_of_another_namespace_has_no_bare_name(table: NameTable, name: str) -> None:
    assert table.resolve(name.encode()) is None


def test_other_cluster_domain(entries: Entries) -> None:
    table = table_for(entries, cluster_domain="corp.internal", search=("ns1.svc.corp.internal",))
    assert ipv4_of(table, "productpage.ns1.svc.corp.internal") == {"10.96.0.10"}
    assert table.resolve(b"productpage.ns1.svc.cluster.local") is None


def test_headless_service_answers_ready_endpoints_of_its_namespace(table: NameTable) -> None:
    for name in ("db.ns1.svc.cluster.local", "db.ns1", "db"):
        assert ipv4_of(table, name) == {"10.1.0.1", "10.1.0.3"}


def test_headless_service_without_endpoints_is_not_a_mesh_name(table: NameTable) -> None:
    assert table.resolve(b"empty-headless.ns1.svc.cluster.local") is None
    assert table.resolve(b"empty-headless") is None


def test_dual_stack_service() -> None:
    table = table_for(load(svc("dual", "ns1", "10.96.0.40", clusterIPs=["10.96.0.40", "fd00::40"])))
    records = found(table, "dual").records
    assert (records.ipv4, records.ipv6) == (("10.96.0.40",), ("fd00::40",))


def test_service_wins_over_a_service_entry(table: NameTable) -> None:
    assert ipv4_of(table, "shared.ns1.svc.cluster.local") == {"10.96.0.30"}


def test_service_wins_whatever_the_document_order() -> None:
    documents = [
        se(["shared.ns1.svc.cluster.local"], addresses=["192.0.2.80"]),
        svc("shared", "ns1", "10.96.0.30"),
    ]
    for order in (documents, documents[::-1]):
        assert ipv4_of(table_for(load(*order)), "shared.ns1.svc.cluster.local") == {"10.96.0.30"}


# --- ServiceEntry hosts ------------------------------------------------------------


def test_exact_host_with_addresses(table: NameTable) -> None:
    resolution = found(table, "address.internal")
    assert (resolution.owner, resolution.alias) == (b"address.internal", None)
    assert resolution.records.ipv4 == ("198.51.100.1",)
    assert resolution.records.vip is False


def test_ipv4_only_host_is_known_with_no_ipv6(table: NameTable) -> None:
    records = found(table, "ipv4only.example").records
    assert records.ipv4 == ("192.0.2.60",) and records.ipv6 == ()
    assert records.addresses(6) == () and records.addresses(4) == ("192.0.2.60",)


def test_same_host_in_several_entries_is_the_union(table: NameTable) -> None:
    records = found(table, "union.example").records
    assert set(records.ipv4) == {"192.0.2.70", "192.0.2.71"}
    assert records.ipv6 == ("2001:db8::71",)
    assert len(records.sources) == 2
    assert ipv4_of(table, "other.example") == {"192.0.2.71"}


@pytest.mark.parametrize(
    "name",
    [
        "nothing.example",  # resolution NONE, no addresses, no endpoints
        "noalloc.example",  # auto-allocation switched off by label
        "cidr.example",  # only a CIDR: not an answer, and not eligible for a VIP
        "x.dnswild.example",  # wildcards get no VIP (unless DYNAMIC_DNS)
        "hidden.example",  # exportTo ["."] from ns2
        "private-auto.example",
        "unknown.example",
        "",
    ],
)
def test_not_in_the_table(table: NameTable, name: str) -> None:
    assert table.resolve(name.encode()) is None


def test_export_to_a_namespace_list(table: NameTable) -> None:
    assert ipv4_of(table, "exported.example") == {"192.0.2.91"}


def test_hidden_entry_is_seen_from_its_own_namespace(entries: Entries) -> None:
    table = table_for(entries, namespace="ns2", search=("ns2.svc.cluster.local",))
    assert ipv4_of(table, "hidden.example") == {"192.0.2.90"}
    assert table.resolve(b"exported.example") is None
    # ... and from there, example (in ns2) has its bare name but productpage does not.
    assert ipv4_of(table, "example") == {"10.96.0.20"}
    assert table.resolve(b"productpage") is None


# --- VIPs ----------------------------------------------------------------------------


def test_vip_hosts_are_exactly_the_eligible_ones(entries: Entries) -> None:
    assert vip_hosts(entries, "ns1") == ELIGIBLE
    assert vip_hosts(entries, "ns2") == ELIGIBLE | {"private-auto.example"}


def test_eligible_hosts_answer_their_vips(table: NameTable) -> None:
    seen_v4, seen_v6 = set(), set()
    for host in sorted(ELIGIBLE):
        records = found(table, host).records
        assert records.vip is True
        (v4,) = records.ipv4
        (v6,) = records.ipv6
        assert ipaddress.ip_address(v4) in V4 and ipaddress.ip_address(v6) in V6
        assert table.vips[host] == (v4, v6)
        seen_v4.add(v4)
        seen_v6.add(v6)
    # The guide's two tcp-echo services on the same port get different VIPs.
    assert len(seen_v4) == len(ELIGIBLE) and len(seen_v6) == len(ELIGIBLE)


def test_vips_only_for_eligible_hosts(table: NameTable) -> None:
    assert set(table.vips) == ELIGIBLE
    vip_names = {r.name.decode() for r in table if r.vip}
    assert vip_names == ELIGIBLE
    for records in table:
        for address in records.ipv4:
            if ipaddress.ip_address(address) in V4:
                assert records.name.decode() in ELIGIBLE


def test_auto_allocate_off_answers_no_vips(entries: Entries) -> None:
    table = table_for(entries, auto_allocate=False)
    for host in ELIGIBLE:
        assert table.resolve(host.encode()) is None
    assert ipv4_of(table, "address.internal") == {"198.51.100.1"}


def test_vips_do_not_depend_on_document_order() -> None:
    forward = table_for(load(*MESH))
    backward = table_for(load(*MESH[::-1]))
    for host in ELIGIBLE:
        assert found(forward, host).records.ipv4 == found(backward, host).records.ipv4
        assert found(forward, host).records.ipv6 == found(backward, host).records.ipv6


def test_one_vip_per_host_whichever_entries_name_it() -> None:
    table = table_for(
        load(
            se(["a.example", "b.example"], name="one", resolution="DNS"),
            se(["a.example"], name="two", resolution="DNS"),
        )
    )
    a, b = found(table, "a.example").records, found(table, "b.example").records
    assert len(a.ipv4) == 1 and len(a.ipv6) == 1
    assert a.ipv4 != b.ipv4


# --- wildcards ------------------------------------------------------------------------


def test_wildcard_answers_names_below_it(table: NameTable) -> None:
    for name in ("foo.wildcard", "a.b.c.wildcard"):
        resolution = found(table, name)
        assert resolution.owner == name.encode() and resolution.alias is None
        assert resolution.records.ipv4 == ("192.0.2.50",)


def test_most_specific_wildcard_wins(table: NameTable) -> None:
    assert ipv4_of(table, "x.deep.wildcard") == {"192.0.2.51"}
    assert ipv4_of(table, "y.x.deep.wildcard") == {"192.0.2.51"}
    # deep.wildcard itself is only below *.wildcard.
    assert ipv4_of(table, "deep.wildcard") == {"192.0.2.50"}


def test_bare_wildcard_domain_is_not_matched(table: NameTable) -> None:
    assert table.resolve(b"wildcard") is None
    assert table.resolve(b"notwildcard") is None
    assert table.resolve(b"foowildcard") is None


def test_exact_host_beats_a_wildcard() -> None:
    table = table_for(
        load(
            se(["*.example.org"], name="w", addresses=["192.0.2.1"]),
            se(["api.example.org"], name="e", addresses=["192.0.2.2"]),
        )
    )
    assert ipv4_of(table, "api.example.org") == {"192.0.2.2"}
    assert ipv4_of(table, "web.example.org") == {"192.0.2.1"}


# --- search-suffix shortcut ---------------------------------------------------------


def test_search_suffix_alias_of_a_service_entry_host(table: NameTable) -> None:
    resolution = found(table, "www.google.com.ns1.svc.cluster.local")
    assert resolution.alias == b"www.google.com.ns1.svc.cluster.local"
    assert resolution.owner == b"www.google.com"
    assert resolution.records.ipv4 == ("192.0.2.1",)


def test_search_suffix_alias_of_a_wildcard_name(table: NameTable) -> None:
    resolution = found(table, "foo.wildcard.ns1.svc.cluster.local")
    assert resolution.alias == b"foo.wildcard.ns1.svc.cluster.local"
    assert resolution.owner == b"foo.wildcard"
    assert b"*" not in resolution.owner
    assert resolution.records.ipv4 == ("192.0.2.50",)


def test_search_suffix_alias_of_a_vip_host(table: NameTable) -> None:
    resolution = found(table, "auto.internal.ns1.svc.cluster.local")
    assert resolution.owner == b"auto.internal"
    assert resolution.records == found(table, "auto.internal").records


def test_only_the_first_search_domain_makes_aliases(table: NameTable) -> None:
    assert table.resolve(b"www.google.com.svc.cluster.local") is None
    assert table.resolve(b"www.google.com.cluster.local") is None


def test_no_alias_of_an_alias(table: NameTable) -> None:
    assert table.resolve(b"www.google.com.ns1.svc.cluster.local.ns1.svc.cluster.local") is None


def test_no_search_list_no_alias(entries: Entries) -> None:
    table = table_for(entries, search=())
    assert table.resolve(b"www.google.com.ns1.svc.cluster.local") is None
    assert ipv4_of(table, "www.google.com") == {"192.0.2.1"}


def test_no_owner_ever_contains_a_star(table: NameTable) -> None:
    names = [
        "foo.wildcard",
        "foo.wildcard.ns1.svc.cluster.local",
        "x.deep.wildcard.ns1.svc.cluster.local",
        "q.dnswild.example.ns1.svc.cluster.local",
    ]
    for name in names:
        resolution = table.resolve(name.encode())
        if resolution is not None:
            assert b"*" not in resolution.owner
            assert resolution.alias is None or b"*" not in resolution.alias


# --- PTR ------------------------------------------------------------------------------


def test_pointers_for_explicit_addresses_and_services(table: NameTable) -> None:
    assert table.pointers[reverse_name("198.51.100.1")] == (b"address.internal",)
    assert table.pointers[reverse_name("10.96.0.10")] == (b"productpage.ns1.svc.cluster.local",)
    # db is headless and its endpoints have no hostname: no pointer (below).
    assert reverse_name("10.1.0.1") not in table.pointers
    assert table.pointers[reverse_name("2001:db8::71")] == (b"other.example", b"union.example")


def test_pointers_of_endpoints_are_kube_dns_ones() -> None:
    """
    The Kubernetes DNS specification (kubernetes/dns, docs/specification.md)
    2.4.3: a ready endpoint with hostname C{my-pet} of the headless Service
    C{headless} in C{default} at 10.3.0.100 has
    C{100.0.3.10.in-addr.arpa. PTR my-pet.headless.default.svc.cluster.local.},
    and 2.3.3: a cluster IP has C{PTR <service>.<ns>.svc.<zone>}. CoreDNS
    (plugin/kubernetes/reverse.go, C{serviceRecordForIP}) answers one record
    per endpoint, C{endpointHostname(addr, ...)} under the Service: the
    hostname if there is one, never the Service's own name. For an endpoint
    without a hostname that is, by version and C{endpoint_pod_names}, the
    address with dashes or the pod's name (plugin/kubernetes/kubernetes.go,
    C{endpointHostname}), and NXDOMAIN for kube-dns before it: meshdns
    forwards that question, so it has no pointer of its own.
    """
    entries = load(
        svc("headless", "default", "None"),
        {**eps("headless", "default", ("10.3.0.100", True), ("10.3.0.101", True)),
         "endpoints": [{"addresses": ["10.3.0.100"], "hostname": "my-pet"},
                       {"addresses": ["10.3.0.101"]}]},
        svc("kubernetes", "default", "10.3.0.1"),
    )
    table = table_for(entries, namespace="default")
    assert table.pointers[b"100.0.3.10.in-addr.arpa"] == (
        b"my-pet.headless.default.svc.cluster.local",
    )
    assert b"101.0.3.10.in-addr.arpa" not in table.pointers
    assert table.pointers[b"1.0.3.10.in-addr.arpa"] == (b"kubernetes.default.svc.cluster.local",)
    # The endpoints still answer the Service's names (specification 2.4.1).
    assert ipv4_of(table, "headless.default.svc.cluster.local") == {"10.3.0.100", "10.3.0.101"}


def test_pointers_for_vips(table: NameTable) -> None:
    for host in ELIGIBLE:
        v4, v6 = table.vips[host]
        assert table.pointers[reverse_name(v4)] == (host.encode(),)
        assert table.pointers[reverse_name(v6)] == (host.encode(),)


def test_pointers_of_the_guide_example() -> None:
    """Issue 2: C{1.0.240.240.in-addr.arpa.} answers locally when that is a VIP or mesh address."""
    table = table_for(load(se(["vip.example"], addresses=["240.240.0.1"])))
    assert table.pointers[b"1.0.240.240.in-addr.arpa"] == (b"vip.example",)


def test_no_pointer_for_hidden_wildcard_or_overridden_addresses(table: NameTable) -> None:
    for address in ("192.0.2.90", "192.0.2.50", "192.0.2.80", "10.1.0.2", "10.9.9.9"):
        assert reverse_name(address) not in table.pointers, address
    for hosts in table.pointers.values():
        assert all(b"*" not in h for h in hosts)


# --- table as a whole -------------------------------------------------------------


def test_ttl_and_iteration(entries: Entries) -> None:
    table = table_for(entries, ttl=7)
    assert table.ttl == 7
    names = [r.name for r in table]
    assert len(names) == len(table) == len(set(names))
    assert b"*.wildcard" in names and b"productpage" in names


def test_empty_table() -> None:
    table = table_for(Entries())
    assert len(table) == 0
    assert table.resolve(b"anything.ns1.svc.cluster.local") is None
    assert table.pointers == {}


def test_shipped_guide_entries() -> None:
    """The Istio guide's examples as issue 2 item 6 says they must behave."""

    from meshdns_plugin.sources.files import load_entries

    folder = SHIPPED_ENTRIES
    table = table_for(
        load_entries([str(folder)]), namespace="default", search=("default.svc.cluster.local",)
    )
    assert ipv4_of(table, "address.internal") == {"198.51.100.1"}
    (auto,) = found(table, "auto.internal").records.ipv4
    assert ipaddress.ip_address(auto) in V4
    one = found(table, "tcp-echo.external-1.svc.cluster.local").records.ipv4
    two = found(table, "tcp-echo.external-2.svc.cluster.local").records.ipv4
    assert one != two


# --- case ----------------------------------------------------------------------------


mixed_label = st.text(alphabet="abcdefgHIJKLMxyz0123456789-", min_size=1, max_size=10).filter(
    lambda s: not s.startswith("-")
)


@settings(max_examples=40, deadline=None)
@given(labels=st.lists(mixed_label, min_size=2, max_size=4), wildcard=st.booleans())
def test_lookups_match_whatever_case_the_entry_used(labels: list[str], wildcard: bool) -> None:
    host = ".".join(labels)
    written = ("*." + host) if wildcard else host
    table = table_for(load(se([written], addresses=["192.0.2.5"])))
    query = ("www." + host if wildcard else host).lower()
    for name in (query, query + ".ns1.svc.cluster.local"):
        resolution = table.resolve(name.encode())
        assert resolution is not None, name
        assert resolution.owner == query.encode()
        assert resolution.records.ipv4 == ("192.0.2.5",)
    for records in table:
        assert records.name == records.name.lower()


def test_no_vip_for_a_host_with_explicit_addresses_elsewhere() -> None:
    """A VIP that could never be answered is not allocated (nor persisted)."""
    from meshdns_plugin.sources.files import parse_entries

    entries = parse_entries(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n"
        "metadata: {name: a}\nspec: {hosts: [db.internal, other.internal], resolution: DNS}\n"
        "---\n"
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n"
        "metadata: {name: b}\nspec: {hosts: [db.internal], addresses: [192.0.2.1]}\n"
    )
    assert vip_hosts(entries, "default") == {"other.internal"}


# --- ExternalName Services ----------------------------------------------------------

EXTERNAL = [
    svc("mydb", "ns1", type="ExternalName", externalName="DB.Example.com."),
    svc("remote", "ns2", type="ExternalName", externalName="remote.example.org"),
    svc("inmesh", "ns1", type="ExternalName", externalName="productpage.ns1.svc.cluster.local"),
    svc("productpage", "ns1", "10.96.0.10"),
    # A ServiceEntry for one of mydb's names, and a wildcard over all of them: the
    # Service wins over both.
    se(["mydb.ns1.svc.cluster.local"], name="loses", addresses=["192.0.2.80"]),
    se(["*.ns1.svc.cluster.local"], name="wild", addresses=["192.0.2.81"]),
]


@pytest.fixture(scope="module")
def aliased() -> NameTable:
    return table_for(load(*EXTERNAL))


@pytest.mark.parametrize(
    "name",
    ["mydb.ns1.svc.cluster.local", "mydb.ns1", "mydb.ns1.svc", "mydb"],
)
def test_external_name_service_names_are_aliases(aliased: NameTable, name: str) -> None:
    key = name.encode()
    assert aliased.cname(key) == b"db.example.com"
    assert aliased.aliases[key].sources == ("Service ns1/mydb",)
    assert key not in aliased.names
    assert aliased.resolve(key) is None


@pytest.mark.parametrize("name", ["remote.ns2.svc.cluster.local", "remote.ns2", "remote.ns2.svc"])
def test_external_name_service_of_another_namespace(aliased: NameTable, name: str) -> None:
    assert aliased.cname(name.encode()) == b"remote.example.org"


def test_external_name_service_of_another_namespace_has_no_bare_name(aliased: NameTable) -> None:
    assert aliased.cname(b"remote") is None
    assert aliased.resolve(b"remote") is None


def test_external_name_wins_over_a_service_entry_and_its_address_has_no_pointer(
    aliased: NameTable,
) -> None:
    assert b"mydb.ns1.svc.cluster.local" not in aliased.names
    assert reverse_name("192.0.2.80") not in aliased.pointers
    # Names the wildcard matches and no Service claims still answer from it.
    assert ipv4_of(aliased, "other.ns1.svc.cluster.local") == {"192.0.2.81"}


def test_alias_through_the_search_suffix_shortcut(aliased: NameTable) -> None:
    assert aliased.cname(b"remote.ns2.ns1.svc.cluster.local") == b"remote.ns2"
    assert aliased.resolve(b"remote.ns2.ns1.svc.cluster.local") is None
    # Only the first search domain, and no shortcut of a shortcut.
    assert aliased.cname(b"remote.ns2.cluster.local") is None
    assert aliased.cname(b"mydb.ns1.svc.cluster.local.ns1.svc.cluster.local") is None


def test_alias_target_is_not_looked_up_at_build_time(aliased: NameTable) -> None:
    """An alias keeps its target as written, mesh name or not: the authority follows it."""
    assert aliased.cname(b"inmesh") == b"productpage.ns1.svc.cluster.local"
    assert ipv4_of(aliased, "productpage.ns1.svc.cluster.local") == {"10.96.0.10"}


def test_aliases_count_and_iterate_in_name_order(aliased: NameTable) -> None:
    assert len(aliased) == len(aliased.names) + len(aliased.wildcards) + 11
    listed = [alias.name for alias in aliased.iter_aliases()]
    assert listed == sorted(aliased.aliases)
    assert b"mydb" in listed and b"remote" not in listed
    assert [r.name for r in aliased if r.name in aliased.aliases] == []


def test_alias_in_another_cluster_domain() -> None:
    table = table_for(load(*EXTERNAL), cluster_domain="corp.local", search=())
    assert table.cname(b"mydb.ns1.svc.corp.local") == b"db.example.com"
    assert table.cname(b"mydb.ns1.svc.cluster.local") is None


def test_a_service_with_addresses_wins_over_the_same_service_as_external_name() -> None:
    table = table_for(
        load(
            svc("twice", "ns1", type="ExternalName", externalName="db.example.com"),
            svc("twice", "ns1", "10.96.0.40"),
        )
    )
    assert table.aliases == {}
    assert ipv4_of(table, "twice") == {"10.96.0.40"}


def test_the_first_target_wins_between_two_external_name_definitions() -> None:
    table = table_for(
        load(
            svc("twice", "ns1", type="ExternalName", externalName="one.example"),
            svc("twice", "ns1", type="ExternalName", externalName="two.example"),
        )
    )
    assert table.cname(b"twice") == b"one.example"


@pytest.mark.parametrize("search", [SEARCH, ()])
@pytest.mark.parametrize("qtype", [1, 28])
def test_the_wire_fast_path_never_answers_an_alias(search: tuple[str, ...], qtype: int) -> None:
    """
    The fast path never answers an alias, with or without the search
    shortcut and wildcards that make it derive answers from the table.
    """
    import dns.message

    from meshdns_plugin.dns.authority import MeshAuthority
    from meshdns_plugin.dns.fastpath import FastPath
    from meshdns_plugin.dns.message import read_query
    from meshdns_plugin.dns.stats import ServerStats

    def fast(name: bytes) -> bytes | None:
        packet = dns.message.make_query(name.decode(), qtype).to_wire()
        query = read_query(packet)
        assert query is not None
        answer = fastpath.answer(query, None, None)
        return answer if isinstance(answer, bytes) else None

    documents = EXTERNAL if search else EXTERNAL[:4]
    table = table_for(load(*documents), search=search)
    # Every alias, and its search-suffix form where the shortcut makes one.
    suffix = b"." + table.search_suffix if table.search_suffix else b""
    candidates = [*table.aliases, *(n + suffix for n in table.aliases if suffix)]
    names = [n for n in candidates if table.cname(n) is not None]
    assert len(names) > (len(table.aliases) if suffix else 0)
    fastpath = FastPath(MeshAuthority(table), None, ServerStats(), None, 0)
    for name in names:
        assert fast(name) is None, name
    assert fast(b"productpage.ns1.svc.cluster.local")
