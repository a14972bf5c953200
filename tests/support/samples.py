"""
Shared test data: the entries of issue 2's examples, and a helper that turns
YAML text into a L{NameTable} the way a load does.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from meshdns_plugin.mesh.allocator import allocate
from meshdns_plugin.mesh.entries import parse_entries
from meshdns_plugin.mesh.table import NameTable, build_table
from meshdns_plugin.mesh.view import mesh_view, vip_hosts
from tests.support.paths import SHIPPED_ENTRIES

#: The Istio guide's ServiceEntries shipped in conf/.
CONF_ENTRIES = str(SHIPPED_ENTRIES)

#: A proxy in namespace ns1 with the Kubernetes search list.
NAMESPACE = "ns1"
SEARCH = ("ns1.svc.cluster.local", "svc.cluster.local", "cluster.local")

BIG_ADDRESSES = ", ".join(str(ipaddress.ip_address("198.18.0.1") + i) for i in range(60))

ENTRIES = """
apiVersion: v1
kind: Service
metadata: {name: productpage, namespace: ns1}
spec: {clusterIP: 10.96.0.10}
---
apiVersion: v1
kind: Service
metadata: {name: example, namespace: ns2}
spec: {clusterIPs: [10.96.0.20, "fd00::20"]}
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: ns1}
spec: {clusterIP: None}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: headless-abc
  namespace: ns1
  labels: {kubernetes.io/service-name: headless}
endpoints:
- addresses: [10.1.0.1]
  conditions: {ready: true}
- addresses: [10.1.0.2]
- addresses: [10.1.0.3]
  conditions: {ready: false}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: google}
spec:
  hosts: [www.google.com]
  addresses: [192.0.2.7]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wildcard}
spec:
  hosts: ["*.wildcard"]
  addresses: [192.0.2.8]
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: ipv4only}
spec:
  hosts: [ipv4only.example]
  addresses: [192.0.2.9]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: many}
spec:
  hosts: [many.example]
  addresses: [192.0.2.21, 192.0.2.22, 192.0.2.23, 192.0.2.24, "2001:db8::21", "2001:db8::22"]
---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: auto}
spec:
  hosts: [auto.internal, tcp-echo.external-1.svc.cluster.local]
  ports: [{number: 9000, name: tcp, protocol: TCP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: big}
spec:
  hosts: [big.example]
  addresses: [@BIG@]
""".replace("@BIG@", BIG_ADDRESSES)


def external_name(name: str, namespace: str, target: str) -> str:
    """A Service of type ExternalName, as one YAML document starting with C{---}."""
    return (
        f"---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {namespace}}}\n"
        f"spec: {{type: ExternalName, externalName: {target}}}\n"
    )


def make_table(text: str = ENTRIES, ttl: int = 30) -> NameTable:
    """Build the table a proxy in L{NAMESPACE} with L{SEARCH} would serve."""
    entries = parse_entries(text, "samples.yaml")
    allocation = allocate(
        vip_hosts(entries, NAMESPACE),
        ipaddress.IPv4Network("240.240.0.0/16"),
        ipaddress.IPv6Network("2001:2::/48"),
    )
    view = mesh_view(entries, allocation, namespace=NAMESPACE, auto_allocate=True)
    return build_table(view, cluster_domain="cluster.local", search=SEARCH, ttl=ttl)


#: One ServiceEntry: C{entry(host, address=None, name="se")} fills it in.
ENTRY = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}}}
spec:
  hosts: [{host}]
  {addresses}
  resolution: DNS
"""


def entry(host: str, address: str | None = None, name: str = "se") -> str:
    addresses = f"addresses: [{address}]" if address else ""
    return ENTRY.format(name=name, host=host, addresses=addresses)


BROKEN = entry("broken.example", "not-an-ip")


#: ExternalName Services in ns1: aliases into and out of the mesh, chains and loops.
EXTERNAL = "".join(
    external_name(name, namespace, target)
    for name, namespace, target in [
        ("mydb", "ns1", "db.upstream.test"),
        ("remote", "ns2", "remote.upstream.test"),
        ("inmesh", "ns1", "productpage.ns1.svc.cluster.local"),
        ("ipv4", "ns1", "ipv4only.example"),
        ("wild", "ns1", "foo.wildcard"),
        ("twostep", "ns1", "inmesh.ns1"),
        ("outward", "ns1", "mydb.ns1.svc.cluster.local"),
        ("self", "ns1", "self.ns1"),
        ("ping", "ns1", "pong.ns1"),
        ("pong", "ns1", "ping.ns1"),
    ]
)

def guide_config(tmp_path: Path) -> str:
    """The shipped entries (the guide's) with the VIP listeners on, no admin endpoint."""
    path = tmp_path / "meshdns.yaml"
    path.write_text(
        f"entries: [{SHIPPED_ENTRIES}/]\nvip_listeners: {{enabled: true}}\nadmin: {{port: 0}}\n"
    )
    return str(path)
