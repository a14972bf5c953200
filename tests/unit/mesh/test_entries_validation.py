"""
Istio's and Kubernetes' validation rules, as L{meshdns_plugin.mesh.kinds}
follows them: every document below is one that C{kubectl apply} accepts (or
refuses) with Istio's validating webhook and the API server, written here in
the shapes of Istio's documentation, never taken from its test files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from meshdns_plugin.mesh.allocator import Allocation
from meshdns_plugin.mesh.table import build_table
from meshdns_plugin.mesh.view import mesh_view
from meshdns_plugin.sources.files import load_entries


def se(spec: dict[str, Any], **metadata: Any) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": "se", "namespace": "default", **metadata},
        "spec": spec,
    }


def svc(spec: dict[str, Any], **metadata: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "default", **metadata},
        "spec": spec,
    }


TLS = [{"number": 443, "name": "tls", "protocol": "TLS"}]
HTTP = [{"number": 80, "name": "http", "protocol": "HTTP"}]

VALID = {
    "dynamic-dns-wildcard": se({"hosts": ["*.wiki.example"], "ports": TLS,
                                "resolution": "DYNAMIC_DNS"}),
    "unix-socket-endpoint": se({"hosts": ["sock.internal"], "ports": HTTP, "resolution": "STATIC",
                                "endpoints": [{"address": "unix:///var/run/example/socket"}]}),
    "wildcard-none": se({"hosts": ["*.example.org"], "ports": HTTP, "resolution": "NONE"}),
    "wildcard-dns-with-endpoints": se({"hosts": ["*.api.example"], "ports": TLS,
                                       "resolution": "DNS",
                                       "endpoints": [{"address": "lb.api.example"}]}),
    "round-robin-one-endpoint": se({"hosts": ["rr.example"], "ports": HTTP,
                                    "resolution": "DNS_ROUND_ROBIN",
                                    "endpoints": [{"address": "a.rr.example"}]}),
    "cidr-static": se({"hosts": ["db.internal"], "addresses": ["10.8.0.0/16"], "ports": TLS,
                       "resolution": "STATIC", "endpoints": [{"address": "10.8.0.4"}]}),
    "workload-selector": se({"hosts": ["vm.internal"], "ports": HTTP, "resolution": "STATIC",
                             "workloadSelector": {"labels": {"app": "vm"}}}),
    "export-to-dot-and-other-namespace": se({"hosts": ["x.example"], "ports": HTTP,
                                             "resolution": "DNS",
                                             "exportTo": [".", "team-b"]}, namespace="team-a"),
    "export-to-list": se({"hosts": ["x.example"], "ports": HTTP, "resolution": "DNS",
                          "exportTo": [".", "team-b"]}),
    "endpoint-port-override": se({"hosts": ["p.example"], "ports": TLS, "resolution": "STATIC",
                                  "endpoints": [{"address": "192.0.2.4", "ports": {"tls": 8443}}]}),
    "sniffed-protocol-and-ignored-fields": se({"hosts": ["s.example"], "location": "MESH_EXTERNAL",
                                               "ports": [{"number": 8080, "name": "p"}],
                                               "subjectAltNames": ["spiffe://x"],
                                               "resolution": "DNS"}),
    "dual-stack-service": svc({"clusterIP": "10.96.0.5", "clusterIPs": ["10.96.0.5", "fd00::5"],
                               "ipFamilies": ["IPv4", "IPv6"],
                               "ipFamilyPolicy": "PreferDualStack"}),
}

INVALID = {
    "duplicate-port-number": (
        se({"hosts": ["a.example"], "resolution": "DNS",
            "ports": [{"number": 80, "name": "a"}, {"number": 80, "name": "b"}]}),
        "spec.ports[1].number",
    ),
    "duplicate-port-name": (
        se({"hosts": ["a.example"], "resolution": "DNS",
            "ports": [{"number": 80, "name": "a"}, {"number": 81, "name": "a"}]}),
        "spec.ports[1].name",
    ),
    "unknown-protocol": (
        se({"hosts": ["a.example"], "ports": [{"number": 80, "name": "a", "protocol": "SMTP"}]}),
        "spec.ports[0].protocol",
    ),
    "cidr-with-dns": (
        se({"hosts": ["a.example"], "addresses": ["10.0.0.0/8"], "ports": TLS,
            "resolution": "DNS"}),
        "spec.addresses",
    ),
    "wildcard-dns-without-endpoints": (
        se({"hosts": ["*.a.example"], "ports": TLS, "resolution": "DNS"}),
        "spec.hosts[0]",
    ),
    # Istio's CRD (x-kubernetes-validations): "NONE mode cannot set endpoints";
    # its webhook: "no endpoints should be provided for resolution type none".
    "none-with-endpoints": (
        se({"hosts": ["a.example"], "ports": HTTP, "resolution": "NONE",
            "endpoints": [{"address": "192.0.2.1"}]}),
        "spec.endpoints",
    ),
    "none-by-default-with-endpoints": (
        se({"hosts": ["a.example"], "ports": HTTP, "endpoints": [{"address": "192.0.2.1"}]}),
        "spec.endpoints",
    ),
    "round-robin-two-endpoints": (
        se({"hosts": ["a.example"], "ports": HTTP, "resolution": "DNS_ROUND_ROBIN",
            "endpoints": [{"address": "x.example"}, {"address": "y.example"}]}),
        "spec.endpoints",
    ),
    "unix-endpoint-with-ports": (
        se({"hosts": ["a.example"], "ports": HTTP, "resolution": "STATIC",
            "endpoints": [{"address": "unix:///run/s", "ports": {"http": 80}}]}),
        "spec.endpoints[0].ports",
    ),
    "unix-endpoints-two-ports": (
        se({"hosts": ["a.example"], "ports": [*HTTP, *TLS], "resolution": "STATIC",
            "endpoints": [{"address": "unix:///run/s"}]}),
        "spec.ports",
    ),
    "selector-and-endpoints": (
        se({"hosts": ["a.example"], "ports": HTTP, "resolution": "STATIC",
            "workloadSelector": {"labels": {"app": "x"}},
            "endpoints": [{"address": "192.0.2.1"}]}),
        "spec.endpoints",
    ),
    "endpoint-port-not-defined": (
        se({"hosts": ["a.example"], "ports": HTTP, "resolution": "STATIC",
            "endpoints": [{"address": "192.0.2.1", "ports": {"grpc": 9090}}]}),
        "spec.endpoints[0].ports.grpc",
    ),
    "static-endpoint-host-name": (
        se({"hosts": ["a.example"], "ports": HTTP, "resolution": "STATIC",
            "endpoints": [{"address": "backend.example"}]}),
        "spec.endpoints[0].address",
    ),
    "export-to-repeated": (
        se({"hosts": ["a.example"], "ports": HTTP, "exportTo": ["a", "a"]}),
        "spec.exportTo[1]",
    ),
    # Istio's validateExportTo (pkg/config/validation/validation.go) reads "."
    # as the document's namespace when it looks for repeats: "duplicate
    # entries in exportTo: . and current namespace".
    "export-to-dot-and-own-namespace": (
        se({"hosts": ["a.example"], "ports": HTTP, "exportTo": [".", "default"]}),
        "spec.exportTo[1]",
    ),
    "export-to-own-namespace-and-dot": (
        se({"hosts": ["a.example"], "ports": HTTP, "exportTo": ["default", "."]}),
        "spec.exportTo[1]",
    ),
    "export-to-none-combined": (
        se({"hosts": ["a.example"], "ports": HTTP, "exportTo": ["~", "b"]}),
        "spec.exportTo",
    ),
    "export-to-bad-namespace": (
        se({"hosts": ["a.example"], "ports": HTTP, "exportTo": ["Team_B"]}),
        "spec.exportTo[0]",
    ),
    "full-wildcard-host": (se({"hosts": ["*"], "ports": HTTP}), "spec.hosts[0]"),
    "wildcard-in-a-later-label": (se({"hosts": ["foo.*.example"], "ports": HTTP}), "spec.hosts[0]"),
    "wildcard-after-a-label-start": (se({"hosts": ["x*.example"], "ports": HTTP}), "spec.hosts[0]"),
    "partial-wildcard-dns-without-endpoints": (
        se({"hosts": ["*x.a.example"], "ports": TLS, "resolution": "DNS"}),
        "spec.hosts[0]",
    ),
    "no-hosts": (se({"ports": HTTP}), "spec.hosts"),
    "cluster-ips-disagree": (
        svc({"clusterIP": "10.96.0.5", "clusterIPs": ["10.96.0.6"]}),
        "spec.clusterIPs[0]",
    ),
    "cluster-ips-same-family": (
        svc({"clusterIPs": ["10.96.0.5", "10.96.0.6"]}),
        "spec.clusterIPs",
    ),
    "ip-families-disagree": (
        svc({"clusterIPs": ["10.96.0.5", "fd00::5"], "ipFamilies": ["IPv6", "IPv4"]}),
        "spec.ipFamilies",
    ),
    "service-export-to-annotation": (
        svc({"clusterIP": "10.96.0.5"}, annotations={"networking.istio.io/exportTo": "~,b"}),
        "metadata.annotations.networking.istio.io/exportTo",
    ),
}


def one_file(tmp_path: Path, documents: list[dict[str, Any]]) -> Path:
    path = tmp_path / "team.yaml"
    path.write_text(yaml.safe_dump_all(documents))
    return path


@pytest.mark.parametrize("name", sorted(VALID))
def test_istio_accepts_so_meshdns_accepts(name: str, tmp_path: Path) -> None:
    entries = load_entries([str(one_file(tmp_path, [VALID[name]]))])
    assert entries.problems == ()
    assert len(entries.service_entries) + len(entries.services) == 1


@pytest.mark.parametrize("name", sorted(INVALID))
def test_istio_rejects_so_meshdns_rejects_naming_the_field(name: str, tmp_path: Path) -> None:
    document, field = INVALID[name]
    path = one_file(tmp_path, [VALID["wildcard-none"], document])
    entries = load_entries([str(path)])
    (problem,) = entries.problems
    assert (problem.file, problem.document, problem.field) == (str(path), 1, field)
    assert "\n" not in str(problem)
    # The valid document beside it is served.
    assert [e.hosts for e in entries.service_entries] == [("*.example.org",)]


@pytest.mark.parametrize("host", ["*x.example.com", "*-x.example.com"])
def test_partial_wildcard_host_is_a_warning_naming_the_document(host: str, tmp_path: Path) -> None:
    """
    Istio's C{ValidateServiceEntry} (pkg/config/validation/validation.go)
    checks each host with C{agent.ValidateWildcardDomain}, whose first label
    may be C{*} or C{*-} before a DNS-1123 label (pkg/config/labels:
    C{wildcardPrefix}), and reports C{ValidatePartialWildCard} only through
    C{WrapWarning}: accepted, with a warning. Its DNS proxy
    (pkg/dns/client/dns.go, C{lookupHost}) looks a name up as itself and
    as C{*.} before each suffix, so no name reaches such a host.
    """
    document = se({"hosts": [host, "plain.example.com"], "ports": HTTP, "resolution": "STATIC",
                   "addresses": ["192.0.2.7"]})
    path = one_file(tmp_path, [document])
    entries = load_entries([str(path)])
    assert entries.problems == ()
    assert [e.hosts for e in entries.service_entries] == [(host, "plain.example.com")]
    (warning,) = [n for n in entries.notes if "partial wildcard" in n]
    assert warning.startswith(f"{path}: document 0: ServiceEntry default/se: spec.hosts[0]")
    view = mesh_view(entries, Allocation({}), namespace="default", auto_allocate=True)
    table = build_table(view, cluster_domain="cluster.local", search=(), ttl=30)
    assert table.resolve(b"plain.example.com") is not None
    for name in (host, host[1:], "foox.example.com", "x.example.com", "a.x.example.com"):
        assert table.resolve(name.encode()) is None, name
    assert table.pointers[b"7.2.0.192.in-addr.arpa"] == (b"plain.example.com",)


def test_status_addresses_of_a_none_entry_are_ignored_with_a_warning(tmp_path: Path) -> None:
    """
    Istio's C{shouldV2AutoAllocateIPFromPieces}
    (pilot/pkg/networking/serviceentry/ip_autoallocation.go) answers false
    for C{resolution: NONE} ("we cannot honor the assigned IP in the
    dataplane and should not assign"), and C{convertServices}
    (pilot/pkg/serviceregistry/serviceentry/conversion.go) reads
    C{status.addresses} only when it answers true: the host has no address
    in the proxy's name table.
    """
    document = se({"hosts": ["passthrough.example"], "ports": TLS, "resolution": "NONE"})
    document["status"] = {"addresses": [{"host": "passthrough.example", "value": "240.240.0.9"}]}
    path = one_file(tmp_path, [document])
    entries = load_entries([str(path)])
    assert entries.problems == ()
    (warning,) = [n for n in entries.notes if "status.addresses" in n]
    assert warning.startswith(f"{path}: document 0: ServiceEntry default/se: ")
    view = mesh_view(entries, Allocation({}), namespace="default", auto_allocate=True)
    assert view.addresses("passthrough.example") == ()
    table = build_table(view, cluster_domain="cluster.local", search=(), ttl=30)
    assert table.resolve(b"passthrough.example") is None
    assert b"9.0.240.240.in-addr.arpa" not in table.pointers


def test_partial_wildcard_with_dynamic_dns_is_not_warned_about(tmp_path: Path) -> None:
    """C{ValidateServiceEntry} skips the partial wildcard warning for C{DYNAMIC_DNS}."""
    document = se({"hosts": ["*x.example.com"], "ports": TLS, "resolution": "DYNAMIC_DNS"})
    entries = load_entries([str(one_file(tmp_path, [document]))])
    assert entries.problems == ()
    assert not [n for n in entries.notes if "partial wildcard" in n]


def test_several_hosts_on_a_plain_tcp_port_is_a_warning_not_an_error(tmp_path: Path) -> None:
    """Istio serves it, but one backend gets every host's connections."""
    document = se({"hosts": ["a.example", "b.example"], "resolution": "DNS",
                   "ports": [{"number": 9000, "name": "tcp", "protocol": "TCP"}]})
    entries = load_entries([str(one_file(tmp_path, [document]))])
    assert entries.problems == ()
    assert any("several hosts share port 9000" in note for note in entries.notes)


@pytest.mark.parametrize(
    ("document", "field"),
    [
        (se({"hosts": ["a.example"]}, namespace="Team_A"), "metadata.namespace"),
        (se({"hosts": ["a.example"]}, name="Payments API"), "metadata.name"),
        (svc({"clusterIP": "10.96.0.1"}, name="1st"), "metadata.name"),
        (svc({"clusterIP": "10.96.0.1"}, name="web.v2"), "metadata.name"),
    ],
)
def test_kubernetes_name_rules(document: dict[str, Any], field: str, tmp_path: Path) -> None:
    """Namespaces are DNS labels, names DNS subdomains, Service names DNS-1035 labels."""
    (problem,) = load_entries([str(one_file(tmp_path, [document]))]).problems
    assert problem.field == field
