"""
Tests for L{meshdns_plugin.mesh.view} and L{meshdns_plugin.mesh.scope}: the
answers of a real cluster, from documents of the shapes a cluster gives.

The expected answers come from the documented behaviour: the Kubernetes DNS
specification (Services, headless Services, per-pod hostnames), Istio's
ServiceEntry C{status.addresses} (its IP auto-allocation controller, 1.25+),
C{exportTo} and the Sidecar C{egress.hosts} forms.
"""

from __future__ import annotations

import ipaddress
import textwrap

from meshdns_plugin.mesh.allocator import allocate
from meshdns_plugin.mesh.model import Entries
from meshdns_plugin.mesh.scope import egress_allows, exported_to, scoped
from meshdns_plugin.mesh.table import NameTable, build_table
from meshdns_plugin.mesh.view import (
    EXPLICIT,
    STATUS,
    VIP,
    MeshView,
    claimed_addresses,
    mesh_view,
    vip_hosts,
)
from meshdns_plugin.sources.files import parse_entries

V4 = ipaddress.IPv4Network("240.240.0.0/16")
V6 = ipaddress.IPv6Network("2001:2::/48")

#: What `kubectl get serviceentries,services,endpointslices -A -o yaml` prints:
#: a List, with status, managedFields and the other fields the server adds.
KUBECTL_LIST = """\
apiVersion: v1
kind: List
metadata:
  resourceVersion: ""
items:
- apiVersion: networking.istio.io/v1
  kind: ServiceEntry
  metadata:
    annotations:
      kubectl.kubernetes.io/last-applied-configuration: |
        {"apiVersion":"networking.istio.io/v1","kind":"ServiceEntry"}
    creationTimestamp: "2025-03-04T10:00:00Z"
    generation: 1
    managedFields:
    - apiVersion: networking.istio.io/v1
      fieldsType: FieldsV1
      fieldsV1:
        f:spec:
          f:hosts: {}
      manager: kubectl-client-side-apply
      operation: Update
    name: payments
    namespace: shop
    resourceVersion: "4242"
    uid: 0f6b7f0e-0000-4000-8000-000000000001
  spec:
    hosts:
    - api.payments.example
    location: MESH_EXTERNAL
    ports:
    - name: https
      number: 443
      protocol: TLS
    resolution: DNS
  status:
    addresses:
    - host: api.payments.example
      value: 240.240.10.20
    - host: api.payments.example
      value: 2001:2::a:14
    conditions:
    - lastTransitionTime: "2025-03-04T10:00:01Z"
      status: "True"
      type: Reconciled
- apiVersion: v1
  kind: Service
  metadata:
    creationTimestamp: "2025-03-04T10:00:00Z"
    managedFields:
    - apiVersion: v1
      fieldsType: FieldsV1
      manager: kubectl
      operation: Update
    name: nginx
    namespace: shop
    resourceVersion: "17"
    uid: 0f6b7f0e-0000-4000-8000-000000000002
  spec:
    clusterIP: None
    clusterIPs:
    - None
    internalTrafficPolicy: Cluster
    ipFamilies:
    - IPv4
    ipFamilyPolicy: SingleStack
    ports:
    - name: web
      port: 80
      protocol: TCP
      targetPort: 80
    selector:
      app: nginx
    sessionAffinity: None
    type: ClusterIP
  status:
    loadBalancer: {}
- addressType: IPv4
  apiVersion: discovery.k8s.io/v1
  endpoints:
  - addresses:
    - 10.244.1.5
    conditions:
      ready: true
      serving: true
      terminating: false
    hostname: web-0
    nodeName: node-a
    targetRef:
      kind: Pod
      name: web-0
      namespace: shop
  - addresses:
    - 10.244.2.6
    conditions:
      ready: false
      serving: false
      terminating: true
    hostname: web-1
    nodeName: node-b
  - addresses:
    - 10.244.3.7
    conditions: {}
    hostname: web-2
  kind: EndpointSlice
  metadata:
    generateName: nginx-
    labels:
      endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
      kubernetes.io/service-name: nginx
    name: nginx-x7k2p
    namespace: shop
  ports:
  - name: web
    port: 80
    protocol: TCP
"""

#: Apply-style manifests: what a team applies, without cluster-assigned fields.
APPLIED = """\
apiVersion: v1
kind: Service
metadata:
  name: checkout
  namespace: shop
spec:
  selector: {app: checkout}
  ports:
  - port: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: cart
  namespace: shop
  annotations:
    networking.istio.io/exportTo: "."
spec:
  clusterIP: 10.96.0.30
  ports:
  - port: 80
"""


def entries_of(*texts: str) -> Entries:
    return parse_entries("---\n".join(textwrap.dedent(t) for t in texts), "cluster.yaml")


def view_of(entries: Entries, namespace: str = "shop", auto: bool = True) -> MeshView:
    allocation = allocate(
        vip_hosts(entries, namespace), V4, V6, reserved=claimed_addresses(entries)
    )
    return mesh_view(entries, allocation, namespace=namespace, auto_allocate=auto)


def table_of(view: MeshView) -> NameTable:
    return build_table(view, cluster_domain="cluster.local", search=(), ttl=30)


def answer(table: NameTable, name: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    found = table.resolve(name.encode())
    return None if found is None else (found.records.ipv4, found.records.ipv6)


def service_entry(name: str, namespace: str, body: str) -> str:
    spec = textwrap.indent(textwrap.dedent(body).strip(), "  ")
    return (
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}\n"
    )


def service(name: str, namespace: str, cluster_ip: str, annotations: str = "") -> str:
    meta = f", annotations: {{{annotations}}}" if annotations else ""
    return (
        "apiVersion: v1\nkind: Service\n"
        f"metadata: {{name: {name}, namespace: {namespace}{meta}}}\n"
        f"spec: {{clusterIP: {cluster_ip}, ports: [{{port: 80}}]}}\n"
    )


def sidecar(namespace: str, *hosts: str, selector: bool = False) -> str:
    listed = ", ".join(f'"{h}"' for h in hosts)
    select = "\n  workloadSelector: {labels: {app: one}}" if selector else ""
    return (
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\n"
        f"metadata: {{name: default, namespace: {namespace}}}\n"
        f"spec:{select}\n  egress:\n  - hosts: [{listed}]\n"
    )


# --- status.addresses -------------------------------------------------------------


def test_status_addresses_are_the_vips_of_both_families() -> None:
    view = view_of(entries_of(KUBECTL_LIST))
    found = view.hosts["api.payments.example"]
    assert (found.kind, found.addresses) == (STATUS, ("240.240.10.20", "2001:2::a:14"))
    assert answer(table_of(view), "api.payments.example") == (("240.240.10.20",), ("2001:2::a:14",))
    # Istio already assigned it: meshdns's allocator does not place it.
    assert "api.payments.example" not in view.allocation.vips


def test_the_allocator_never_hands_out_a_claimed_address() -> None:
    """Whatever the hash says, an address another entry holds is never a VIP."""
    host = "fresh.example"
    first = allocate({host}, V4, V6).vips[host]
    held = service_entry("claimer", "shop", "hosts: [held.example]\nresolution: DNS")
    held += f"status:\n  addresses:\n  - {{host: held.example, value: {first.ipv4}}}\n"
    explicit = service_entry(
        "pinned", "shop", f"hosts: [pinned.example]\naddresses: ['{first.ipv6}']\nresolution: DNS"
    )
    wanted = service_entry("fresh", "shop", "hosts: [fresh.example]\nresolution: DNS")
    view = view_of(entries_of(held, explicit, wanted))
    vips = view.allocation.vips[host]
    assert vips.ipv4 != first.ipv4 and vips.ipv6 != first.ipv6
    assert view.hosts["held.example"].addresses == (first.ipv4,)
    assert view.hosts["pinned.example"].kind == EXPLICIT
    assert view.hosts[host].kind == VIP


def test_explicit_addresses_win_over_status() -> None:
    text = service_entry("e", "shop", "hosts: [a.example]\naddresses: [192.0.2.8]\nresolution: DNS")
    text += "status:\n  addresses:\n  - {host: a.example, value: 240.240.1.1}\n"
    assert view_of(entries_of(text)).hosts["a.example"].addresses == ("192.0.2.8",)


# --- Services as a cluster has them ----------------------------------------------


def test_service_applied_without_cluster_ip_is_left_to_the_upstream_with_one_note() -> None:
    view = view_of(entries_of(APPLIED))
    table = table_of(view)
    # kube-dns knows the address the API server assigned; meshdns does not.
    assert answer(table, "checkout.shop.svc.cluster.local") is None
    assert answer(table, "checkout") is None
    (note,) = view.notes
    assert "Service shop/checkout" in note and "clusterIP" in note
    assert answer(table, "cart.shop.svc.cluster.local") == (("10.96.0.30",), ())


def test_headless_service_answers_ready_endpoints_and_per_pod_names() -> None:
    """
    Kubernetes DNS: a headless Service answers its ready endpoints; each
    endpoint with a hostname answers as <hostname>.<service>.<ns>.svc.<zone>.
    An endpoint without conditions counts as ready.
    """
    table = table_of(view_of(entries_of(KUBECTL_LIST)))
    assert answer(table, "nginx.shop.svc.cluster.local") == (("10.244.1.5", "10.244.3.7"), ())
    assert answer(table, "web-0.nginx.shop.svc.cluster.local") == (("10.244.1.5",), ())
    assert answer(table, "web-2.nginx.shop.svc.cluster.local") == (("10.244.3.7",), ())
    # web-1 is terminating, not ready: not answered.
    assert answer(table, "web-1.nginx.shop.svc.cluster.local") is None


def test_per_pod_names_only_for_headless_services() -> None:
    slice_ = KUBECTL_LIST[KUBECTL_LIST.index("- addressType") :]
    slice_ = textwrap.dedent("\n".join(line[2:] for line in slice_.splitlines()))
    text = service("nginx", "shop", "10.96.0.9") + "---\n" + slice_
    table = table_of(view_of(entries_of(text)))
    assert answer(table, "nginx.shop.svc.cluster.local") == (("10.96.0.9",), ())
    assert answer(table, "web-0.nginx.shop.svc.cluster.local") is None


# --- visibility -------------------------------------------------------------------


def test_service_export_to_annotation() -> None:
    entries = entries_of(APPLIED)
    assert answer(table_of(view_of(entries, "shop")), "cart.shop.svc.cluster.local")
    assert answer(table_of(view_of(entries, "web")), "cart.shop.svc.cluster.local") is None


def test_export_to_forms() -> None:
    assert exported_to((), "a", "b") and exported_to(("*",), "a", "b")
    assert exported_to((".",), "a", "a") and not exported_to((".",), "a", "b")
    assert exported_to(("b",), "a", "b") and not exported_to(("~",), "a", "a")


def test_egress_host_forms() -> None:
    assert egress_allows(["./*"], "shop", "shop", "x.example")
    assert not egress_allows(["./*"], "shop", "web", "x.example")
    assert egress_allows(["web/*"], "shop", "web", "x.example")
    assert egress_allows(["*/x.example"], "shop", "web", "x.example")
    assert not egress_allows(["*/x.example"], "shop", "web", "y.example")
    assert egress_allows(["*/*.example"], "shop", "web", "y.example")
    assert not egress_allows(["~/*"], "shop", "shop", "x.example")


SCOPED = [
    service_entry("own", "shop", "hosts: [own.example]\naddresses: [192.0.2.1]"),
    service_entry("theirs", "web", "hosts: [theirs.example]\naddresses: [192.0.2.2]"),
    service_entry("infra", "istio-system", "hosts: [infra.example]\naddresses: [192.0.2.3]"),
    service("db", "data", "10.96.0.40"),
]


def test_sidecar_egress_hosts_limit_what_the_proxy_answers() -> None:
    entries = entries_of(*SCOPED, sidecar("shop", "./*", "istio-system/*"))
    table = table_of(view_of(entries, "shop"))
    assert answer(table, "own.example") and answer(table, "infra.example")
    assert answer(table, "theirs.example") is None
    assert answer(table, "db.data.svc.cluster.local") is None
    # Another namespace has no Sidecar of its own, and none in the root: all seen.
    assert answer(table_of(view_of(entries, "web")), "own.example")


def test_the_root_namespace_sidecar_is_every_namespaces_default() -> None:
    entries = entries_of(*SCOPED, sidecar("istio-system", "./*", "*/db.data.svc.cluster.local"))
    table = table_of(view_of(entries, "web"))
    assert answer(table, "theirs.example")  # "." is the proxy's namespace
    assert answer(table, "db.data.svc.cluster.local") == (("10.96.0.40",), ())
    assert answer(table, "own.example") is None


def test_a_sidecar_with_a_workload_selector_is_not_the_namespace_default() -> None:
    entries = entries_of(*SCOPED, sidecar("shop", "./*", selector=True))
    assert answer(table_of(view_of(entries, "shop")), "theirs.example")


def test_one_namespace_per_host_the_proxys_own_first() -> None:
    texts = [
        service_entry("a", "alpha", "hosts: [shared.example]\naddresses: [192.0.2.10]"),
        service_entry("b", "shop", "hosts: [shared.example]\naddresses: [192.0.2.20]"),
        service_entry("c", "zulu", "hosts: [shared.example]\naddresses: [192.0.2.30]"),
    ]
    entries = entries_of(*texts)
    assert view_of(entries, "shop").addresses("shared.example") == ("192.0.2.20",)
    # Not the union of all namespaces: one namespace, here the first by name.
    assert view_of(entries, "web").addresses("shared.example") == ("192.0.2.10",)
    assert len(scoped(entries, "web").service_entries) == 1


# --- collisions -------------------------------------------------------------------


def test_an_explicit_address_equal_to_another_hosts_is_a_collision_naming_both() -> None:
    entries = entries_of(
        service_entry("one", "shop", "hosts: [one.example]\naddresses: [192.0.2.50]"),
        service_entry("two", "shop", "hosts: [two.example]\naddresses: [192.0.2.50]"),
    )
    (collision,) = view_of(entries).collisions
    text = str(collision)
    assert "192.0.2.50" in text
    assert "one.example (ServiceEntry shop/one)" in text
    assert "two.example (ServiceEntry shop/two)" in text


def test_dynamic_dns_wildcards_get_vips_as_istios_allocator_gives_them() -> None:
    dynamic = service_entry(
        "dyn",
        "shop",
        "hosts: ['*.dyn.example']\nresolution: DYNAMIC_DNS\n"
        "ports: [{number: 443, name: tls, protocol: TLS}]",
    )
    dns = service_entry("wild", "shop", "hosts: ['*.wild.example']\nresolution: NONE")
    view = view_of(entries_of(dynamic, dns))
    assert view.hosts["*.dyn.example"].kind == VIP
    assert len(view.addresses("*.dyn.example")) == 2
    assert "*.wild.example" not in view.hosts
