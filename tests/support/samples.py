"""
Shared test data: the entries of issue 2's examples, and a helper that turns
YAML text into a L{NameTable} the way a load does; the documents, entries and
packets that several test modules use.
"""

from __future__ import annotations

import ipaddress
import struct
import textwrap
from pathlib import Path

from meshdns_plugin.mesh.allocator import allocate
from meshdns_plugin.mesh.table import NameTable, build_table
from meshdns_plugin.mesh.view import mesh_view, vip_hosts
from meshdns_plugin.sources.files import parse_entries
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


HEADER = struct.Struct("!HHHHHH")


def _header(qd=1, an=0, ns=0, ar=0, flags=0x0100, ident=0x4242) -> bytes:
    return HEADER.pack(ident, flags, qd, an, ns, ar)


HOSTILE = [
    b"",
    b"\x00",
    _header()[:7],
    _header(),  # says one question, has none
    _header(qd=65535) + b"\x01a\x00\x00\x01\x00\x01",
    _header() + b"\xc0\x0c\x00\x01\x00\x01",  # pointer to itself: a loop
    _header() + b"\x01a\xc0\x0e\x00\x01\x00\x01",  # pointer to its own label
    _header() + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01",  # label of 64
    _header() + (b"\x3f" + b"a" * 63) * 5 + b"\x00\x00\x01\x00\x01",  # name over 255
    _header(flags=0x8100) + b"\x01a\x00\x00\x01\x00\x01",  # QR=1
    _header(flags=0x7900) + b"\x01a\x00\x00\x01\x00\x01",  # opcode 15
    _header() + b"\x01a\x00\x00\x01\x00\x03",  # class CH
    _header(qd=3) + b"\x01a\x00\x00\x01\x00\x01" * 3,
    _header(ar=1) + b"\x01a\x00\x00\x01\x00\x01" + b"\x00\x00\x29\x10",  # cut OPT
    _header(an=5) + b"\x01a\x00\x00\x01\x00\x01",  # lying answer count
]


TEAM_A = """\
# team-a: two external APIs
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: maps, namespace: team-a}
spec:
  hosts: [maps.example.com]
  addresses: [192.0.2.10]
  ports: [{number: 443, name: https, protocol: TLS}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: geo, namespace: team-a}
spec:
  hosts: [geo.example.com]
  ports: [{number: 443, name: https, protocol: TLS}]
  resolution: DNS
"""


#: team-b: one good Service, one ServiceEntry with a typo in its address.
TEAM_B = """\
apiVersion: v1
kind: Service
metadata: {name: ledger, namespace: team-b}
spec: {clusterIP: 10.96.1.1, ports: [{port: 80}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: bank, namespace: team-b}
spec:
  hosts: [bank.example.net]
  addresses: [192.0.2.300]
  ports: [{number: 443, name: https, protocol: TLS}]
  resolution: DNS
"""


#: team-c: not YAML at all (a merge conflict committed by mistake).
TEAM_C = """\
<<<<<<< HEAD
apiVersion: v1
=======
kind: [Service
>>>>>>> theirs
"""


#: The tcp-echo stand-in (see its docstring).
def service_entry(name: str, body: str) -> str:
    """A ServiceEntry document named C{name} with C{body} (YAML lines) as its spec."""
    spec = textwrap.indent(textwrap.dedent(body).strip(), "  ")
    return (
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n"
        f"metadata: {{name: {name}}}\nspec:\n{spec}\n"
    )


#: Two ServiceEntries: one with its address, one whose VIP is allocated.
ADDRESS_AND_AUTO = (
    entry("address.internal", "198.51.100.1") + "---\n" + entry("auto.internal", name="auto")
)
