"""
Per-client views (node-local mode): the client map and the views of one
load (L{meshdns_plugin.mesh.clients}, L{meshdns_plugin.mesh.views}).

Expected answers are Kubernetes DNS's and Istio's documented behaviour for a
pod of the client's namespace: a bare or partly qualified Service name
resolves in the pod's own namespace, C{<ns>.svc.cluster.local} is the first
search domain of a pod in C{<ns>}, C{exportTo} and Sidecar scope are the
namespace's, and a host defined in several namespaces is the pod's own
namespace's.
"""

from __future__ import annotations

import ipaddress

import pytest

from meshdns_plugin.mesh.allocator import Allocation
from meshdns_plugin.mesh.clients import ClientMap, ClientNetwork, client_map
from meshdns_plugin.mesh.table import NameTable, build_table
from meshdns_plugin.mesh.view import mesh_view
from meshdns_plugin.mesh.views import MeshViews, build_views, search_suffix, views_built_whole
from meshdns_plugin.sources.files import parse_entries
from tests.support.cluster import DOMAIN, pods_slice, service, service_entry

ENTRIES = "".join(
    [
        service("team-a", "web", "10.96.1.1"),
        service("team-b", "web", "10.96.2.1"),
        service("team-c", "web", "10.96.3.1"),
        service("team-a", "only-a", "10.96.1.2"),
        service(
            "team-b", "private", "10.96.2.2", "  annotations: {networking.istio.io/exportTo: '.'}"
        ),
        pods_slice("team-a", "web", "10.0.1.10"),
        pods_slice("team-b", "web", "10.0.2.10", ready=False),
        service_entry("team-a", "db-a", "db.example.com", "192.0.2.1"),
        service_entry("team-b", "db-b", "db.example.com", "192.0.2.2"),
        service_entry("team-c", "api", "api.example.com", "192.0.2.3", "  exportTo: [team-a]"),
        """
apiVersion: v1
kind: Pod
metadata: {name: c-0, namespace: team-c, ownerReferences: [{kind: ReplicaSet}]}
spec: {containers: [{name: x, image: y}], nodeName: n1}
status: {phase: Running, podIP: 10.0.3.10, podIPs: [{ip: 10.0.3.10}, {ip: "2001:db8::3:10"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: host-net, namespace: kube-system}
spec: {hostNetwork: true}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: done, namespace: team-c}
status: {phase: Succeeded, podIP: 10.0.3.11}
---
apiVersion: v1
kind: Pod
metadata: {name: odd, namespace: team-c}
status: {podIP: not-an-ip, podIPs: nonsense}
""",
    ]
)

NETWORKS = (
    ClientNetwork(ipaddress.ip_network("10.8.0.0/16"), "vms"),
    ClientNetwork(ipaddress.ip_network("10.8.1.0/24"), "team-c"),
)


def load(text: str = ENTRIES, networks=NETWORKS, default: str = "default") -> MeshViews:
    entries = parse_entries(text)
    clients = client_map(entries, networks, default)
    whole = views_built_whole(entries, clients.namespaces())
    return build_views(
        entries,
        Allocation({}),
        clients,
        auto_allocate=False,
        cluster_domain=DOMAIN,
        ttl=30,
        whole=whole,
    )


def addresses(table: NameTable, name: str) -> tuple[str, ...] | None:
    found = table.resolve(name.encode())
    return None if found is None else found.records.ipv4


# --- the client map --------------------------------------------------------


def test_clients_from_slices_pods_and_networks() -> None:
    """Pod endpoints (ready or not), Pod documents, then the longest matching network."""
    clients = load().clients
    assert clients.namespace_of("10.0.1.10") == "team-a"
    assert clients.namespace_of("10.0.2.10") == "team-b"  # not ready: still a client
    assert clients.namespace_of("10.0.3.10") == "team-c"
    assert clients.namespace_of("2001:db8::3:10") == "team-c"
    assert clients.namespace_of("::ffff:10.0.3.10") == "team-c"
    assert clients.namespace_of("10.8.1.7") == "team-c"
    assert clients.namespace_of("10.8.2.7") == "vms"
    assert clients.namespace_of("198.51.100.9") == "default"
    assert clients.namespace_of("not an address") == "default"


def test_pods_read_leniently() -> None:
    """Host-network and finished pods are no clients; odd fields are no problem."""
    entries = parse_entries(ENTRIES)
    assert [p.origin.name for p in entries.pods] == ["c-0"]
    assert entries.problems == ()
    clients = client_map(entries, (), "default")
    assert clients.namespace_of("10.0.0.1") == "default"
    assert clients.namespace_of("10.0.3.11") == "default"


def test_slices_come_before_pods() -> None:
    """An address that an EndpointSlice and a Pod both name keeps the slice's namespace."""
    text = pods_slice("team-a", "web", "10.0.9.9") + (
        "\napiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: team-b}\n"
        "status: {podIP: 10.0.9.9}\n"
    )
    assert client_map(parse_entries(text), (), "default").namespace_of("10.0.9.9") == "team-a"


def own_dns_pods(policy: str, addresses: str, *, searches: str = "") -> str:
    config = f", dnsConfig: {{searches: [{searches}]}}" if searches else ""
    return (
        f"\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p-{policy.lower()}, "
        f"namespace: team-b}}\nspec: {{dnsPolicy: {policy}{config}}}\n"
        f"status: {{podIPs: [{addresses}]}}\n"
    )


def test_clients_with_their_own_dns_settings() -> None:
    """
    A Pod with another dnsPolicy than ClusterFirst, or dnsConfig search
    domains, has its own search list, whichever namespace its address is
    of; an IPv4 address is its own also as an IPv4-mapped IPv6 peer.
    """
    text = (
        pods_slice("team-a", "web", "10.0.9.9")
        + own_dns_pods("None", "{ip: 10.0.9.9}")
        + own_dns_pods("Default", "{ip: 10.0.9.10}, {ip: 'fd00::10'}")
        + own_dns_pods("ClusterFirst", "{ip: 10.0.9.11}", searches="example.test")
        + own_dns_pods("ClusterFirstWithHostNet", "{ip: 10.0.9.12}")
    )
    clients = client_map(parse_entries(text), (), "default")
    assert clients.namespace_of("10.0.9.9") == "team-a"
    assert clients.has_own_dns("10.0.9.9")
    assert clients.has_own_dns("10.0.9.10")
    assert clients.has_own_dns("::ffff:10.0.9.10")
    assert clients.has_own_dns("fd00::10")
    assert clients.has_own_dns("10.0.9.11")
    assert not clients.has_own_dns("10.0.9.12")
    assert not clients.has_own_dns("10.0.3.10")
    assert not clients.has_own_dns("not an address")


def test_client_map_namespaces() -> None:
    clients = ClientMap(
        {"10.0.0.1": "a"}, (ClientNetwork(ipaddress.ip_network("10.1.0.0/16"), "b"),), "c"
    )
    assert clients.namespaces() == {"a", "b", "c"}


# --- the views ---------------------------------------------------------------


@pytest.fixture(scope="module")
def views() -> MeshViews:
    return load()


def test_one_view_per_namespace_with_clients(views: MeshViews) -> None:
    assert set(views.tables) == {"team-a", "team-b", "team-c", "vms", "default"}
    assert views.default is views.tables["default"]


@pytest.mark.parametrize(
    "namespace, ip", [("team-a", "10.96.1.1"), ("team-b", "10.96.2.1"), ("team-c", "10.96.3.1")]
)
def test_short_names_are_the_clients_namespace(views: MeshViews, namespace: str, ip: str) -> None:
    """`web` is the pod's own namespace's Service; qualified names are the same everywhere."""
    table = views.tables[namespace]
    assert addresses(table, "web") == (ip,)
    assert addresses(table, "web.team-b") == ("10.96.2.1",)
    assert addresses(table, "web.team-a.svc.cluster.local") == ("10.96.1.1",)
    assert addresses(views.default, "web") is None


@pytest.mark.parametrize("namespace", ["team-a", "team-b", "vms"])
def test_search_suffix_is_the_clients_namespace(views: MeshViews, namespace: str) -> None:
    """`<name>.<ns>.svc.cluster.local` is the first search domain of a pod in <ns>."""
    table = views.tables[namespace]
    suffix = search_suffix(namespace, DOMAIN)
    found = table.resolve(f"db.example.com.{suffix}".encode())
    assert found is not None and found.alias == f"db.example.com.{suffix}".encode()
    assert found.owner == b"db.example.com"
    other = "team-c" if namespace != "team-c" else "team-a"
    assert table.resolve(f"db.example.com.{search_suffix(other, DOMAIN)}".encode()) is None


def test_same_host_in_several_namespaces(views: MeshViews) -> None:
    """A proxy's own namespace wins a host; others get the first namespace in name order."""
    assert addresses(views.tables["team-a"], "db.example.com") == ("192.0.2.1",)
    assert addresses(views.tables["team-b"], "db.example.com") == ("192.0.2.2",)
    assert addresses(views.tables["team-c"], "db.example.com") == ("192.0.2.1",)


def test_export_to_per_view(views: MeshViews) -> None:
    """exportTo [team-a] is seen from team-a only; exportTo '.' from its own namespace only."""
    assert addresses(views.tables["team-a"], "api.example.com") == ("192.0.2.3",)
    assert addresses(views.tables["team-b"], "api.example.com") is None
    assert addresses(views.tables["team-c"], "api.example.com") is None
    assert addresses(views.tables["team-b"], "private") == ("10.96.2.2",)
    assert addresses(views.tables["team-a"], "private.team-b") is None


def test_sidecar_scope_per_view() -> None:
    """A namespace's own Sidecar scopes its view only."""
    sidecar = """
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: team-a}
spec:
  egress:
  - hosts: ["./*"]
---"""
    views = load(sidecar + ENTRIES)
    assert addresses(views.tables["team-a"], "web.team-b") is None
    assert addresses(views.tables["team-a"], "web") == ("10.96.1.1",)
    assert addresses(views.tables["team-b"], "web.team-a") == ("10.96.1.1",)
    assert "team-a" in views.whole
    overlay_equals_whole(sidecar + ENTRIES)


def test_views_share_the_base_records(views: MeshViews) -> None:
    """Views over the base hold the same record objects, not copies."""
    a, c = views.tables["team-c"], views.tables["vms"]
    name = b"web.team-a.svc.cluster.local"
    assert a.resolve(name).records is c.resolve(name).records


def overlay_equals_whole(text: str, networks=NETWORKS) -> None:
    """Every view answers exactly as a table built whole for its namespace."""
    entries = parse_entries(text)
    views = load(text, networks)
    for namespace, table in views.tables.items():
        whole = build_table(
            mesh_view(entries, Allocation({}), namespace=namespace, auto_allocate=False),
            cluster_domain=DOMAIN,
            search=(search_suffix(namespace, DOMAIN),),
            ttl=30,
        )
        assert dict(table.names) == dict(whole.names), namespace
        assert dict(table.aliases) == dict(whole.aliases), namespace
        assert table.wildcards == whole.wildcards, namespace
        assert table.pointers == whole.pointers, namespace
        assert table.search_suffix == whole.search_suffix
        assert len(table) == len(whole)


def test_every_view_as_if_built_whole() -> None:
    overlay_equals_whole(ENTRIES)


def test_short_name_clash_is_built_whole() -> None:
    """A pod short name that is also another Service's name.namespace: merged, as built whole."""
    text = (
        service("db", "web-0", "10.96.5.1")
        + """
apiVersion: v1
kind: Service
metadata: {name: db, namespace: team-a}
spec: {clusterIP: None}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-1
  namespace: team-a
  labels: {kubernetes.io/service-name: db}
addressType: IPv4
endpoints:
- addresses: [10.0.1.20]
  hostname: web-0
  targetRef: {kind: Pod, name: web-0, namespace: team-a}
"""
    )
    views = load(text, ())
    assert "team-a" in views.whole
    assert set(addresses(views.tables["team-a"], "web-0.db")) == {"10.0.1.20", "10.96.5.1"}
    overlay_equals_whole(text, ())


#: Clients of team-a and of team-b, by network, for fixtures without pods.
TEAM_NETWORKS = (
    ClientNetwork(ipaddress.ip_network("10.8.1.0/24"), "team-a"),
    ClientNetwork(ipaddress.ip_network("10.8.2.0/24"), "team-b"),
)
A_CLIENT, B_CLIENT = "10.8.1.7", "10.8.2.7"


def answer_for(views: MeshViews, client: str, name: str) -> tuple[str, ...] | None:
    """The addresses the client at C{client} gets for C{name}: its namespace's view's."""
    return addresses(views.tables[views.clients.namespace_of(client)], name)


def test_a_namespace_with_its_own_sidecar_is_scoped_by_it() -> None:
    """
    Istio's Sidecar: egress hosts C{./*} show a namespace's workloads only
    the services of their own namespace. Nothing else sets team-a apart
    here (no exportTo, no host defined twice), so only its Sidecar can.
    """
    text = "".join(
        [
            service("team-a", "web", "10.96.1.1"),
            service("team-b", "web", "10.96.2.1"),
            service_entry("team-b", "api", "api.example.com", "192.0.2.3"),
            """
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: team-a}
spec:
  egress:
  - hosts: ["./*"]
---""",
        ]
    )
    views = load(text, TEAM_NETWORKS)
    assert answer_for(views, A_CLIENT, "web") == ("10.96.1.1",)
    assert answer_for(views, A_CLIENT, "web.team-b") is None
    assert answer_for(views, A_CLIENT, "api.example.com") is None
    assert answer_for(views, B_CLIENT, "web.team-a") == ("10.96.1.1",)
    assert answer_for(views, B_CLIENT, "api.example.com") == ("192.0.2.3",)
    assert views.whole == {"team-a"}
    overlay_equals_whole(text, TEAM_NETWORKS)


def test_a_namespace_named_in_an_export_to_sees_what_is_exported_to_it() -> None:
    """
    Istio's exportTo: a ServiceEntry exported to C{[team-a]} is seen from
    team-a only, and a Service exported to C{.} from its own namespace only
    (the C{networking.istio.io/exportTo} annotation). No Sidecar and no
    host defined twice: only the exportTo lists set team-a and team-b apart.
    """
    text = "".join(
        [
            service_entry("team-c", "api", "api.example.com", "192.0.2.3", "  exportTo: [team-a]"),
            service(
                "team-b", "private", "10.96.2.2",
                "  annotations: {networking.istio.io/exportTo: '.'}",
            ),
            service("team-b", "web", "10.96.2.1"),
        ]
    )
    views = load(text, TEAM_NETWORKS)
    assert answer_for(views, A_CLIENT, "api.example.com") == ("192.0.2.3",)
    assert answer_for(views, B_CLIENT, "api.example.com") is None
    assert answer_for(views, B_CLIENT, "private") == ("10.96.2.2",)
    assert answer_for(views, A_CLIENT, "private.team-b") is None
    assert answer_for(views, A_CLIENT, "web.team-b") == ("10.96.2.1",)
    assert views.whole == {"team-a", "team-b"}
    overlay_equals_whole(text, TEAM_NETWORKS)
