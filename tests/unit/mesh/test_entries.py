"""
Tests for L{meshdns_plugin.mesh.kinds} and L{meshdns_plugin.sources.files}:
ServiceEntry, Service and EndpointSlice documents as C{kubectl get -o yaml}
prints them, every problem reported with its file, document and field, and
entry folders (including a ConfigMap mount).
"""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from meshdns_plugin.mesh import documents
from meshdns_plugin.mesh.model import Entries, EntriesError, Problem
from meshdns_plugin.mesh.scope import exported_to
from meshdns_plugin.sources.files import load_entries, parse_entries
from tests.support.paths import SHIPPED_ENTRIES


def service_entry(
    hosts: list[Any] | None = None,
    name: str = "se",
    namespace: str | None = None,
    api: str = "networking.istio.io/v1",
    labels: dict[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    if labels is not None:
        metadata["labels"] = labels
    return {
        "apiVersion": api,
        "kind": "ServiceEntry",
        "metadata": metadata,
        "spec": {"hosts": hosts if hosts is not None else ["example.com"], **spec},
    }


def service(name: str = "svc", namespace: str | None = "default", **spec: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    return {"apiVersion": "v1", "kind": "Service", "metadata": metadata, "spec": spec}


def endpoint_slice(
    service_name: str | None, endpoints: list[dict[str, Any]], namespace: str = "default"
) -> dict[str, Any]:
    labels = {} if service_name is None else {"kubernetes.io/service-name": service_name}
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service_name or 'orphan'}-abcde",
            "namespace": namespace,
            "labels": labels,
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
    }


def dump(*documents: Any) -> str:
    return yaml.safe_dump_all(documents, sort_keys=False)


def parse(*documents: Any) -> Entries:
    return parse_entries(dump(*documents), "test.yaml")


def problems_of(text: str, file: str = "test.yaml") -> tuple[Problem, ...]:
    with pytest.raises(EntriesError) as caught:
        parse_entries(text, file)
    return caught.value.problems


def only_problem(*documents: Any) -> Problem:
    (problem,) = problems_of(dump(*documents))
    return problem


def assert_names(problem: Problem, document: int | None, field: str | None) -> None:
    """The problem and its text name the file, the document index and the field path."""
    assert (problem.file, problem.document, problem.field) == ("test.yaml", document, field)
    text = str(problem)
    assert "\n" not in text
    assert text.startswith("test.yaml")
    if document is not None:
        assert f"document {document}" in text
    if field is not None:
        assert field in text


# --- documents, lists, versions ------------------------------------------------


def test_several_documents_keep_their_index() -> None:
    text = (
        dump(service_entry(["a.example"], name="a"))
        + "---\n# an empty document still counts\n---\n"
        + dump(service(name="b"), service_entry(["c.example"], name="c"))
    )
    entries = parse_entries(text, "multi.yaml")
    assert [(e.origin.name, e.origin.document) for e in entries.service_entries] == [
        ("a", 0),
        ("c", 3),
    ]
    assert [(s.name, s.origin.document) for s in entries.services] == [("b", 2)]
    assert {e.origin.file for e in entries.service_entries} == {"multi.yaml"}


def test_kubectl_list_wrapper() -> None:
    """The shape of C{kubectl get serviceentries,services -A -o yaml}."""
    listing = {
        "apiVersion": "v1",
        "kind": "List",
        "metadata": {"resourceVersion": ""},
        "items": [
            service_entry(["a.example"], name="a", namespace="ns1", addresses=["192.0.2.1"]),
            service(name="web", namespace="ns2", clusterIP="10.96.0.10"),
            endpoint_slice("web", [{"addresses": ["10.1.0.1"]}], namespace="ns2"),
        ],
    }
    entries = parse(listing)
    assert [e.hosts for e in entries.service_entries] == [("a.example",)]
    assert [(s.namespace, s.name, s.cluster_ips) for s in entries.services] == [
        ("ns2", "web", ("10.96.0.10",))
    ]
    assert [s.addresses for s in entries.endpoint_slices] == [("10.1.0.1",)]


def test_typed_list_wrapper() -> None:
    """What the API server itself returns: C{kind: ServiceEntryList}."""
    listing = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntryList",
        "items": [service_entry(["a.example"], name="a"), service_entry(["b.example"], name="b")],
    }
    assert [e.hosts for e in parse(listing).service_entries] == [("a.example",), ("b.example",)]


def test_nested_list_and_empty_items() -> None:
    inner = {"apiVersion": "v1", "kind": "List", "items": [service(name="deep")]}
    entries = parse(
        {"apiVersion": "v1", "kind": "List", "items": [inner]},
        {"apiVersion": "v1", "kind": "List", "items": []},
        {"apiVersion": "v1", "kind": "List", "items": None},
    )
    assert [s.name for s in entries.services] == ["deep"]


def test_problem_inside_a_list_names_the_item() -> None:
    listing = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [service_entry(["ok.example"]), service_entry(["foo.*.com"])],
    }
    problem = only_problem(service(name="first"), listing)
    assert_names(problem, 1, "items[1].spec.hosts[0]")


@pytest.mark.parametrize("version", ["v1", "v1beta1", "v1alpha3"])
def test_service_entry_api_versions(version: str) -> None:
    entries = parse(service_entry(["a.example"], api=f"networking.istio.io/{version}"))
    assert [e.hosts for e in entries.service_entries] == [("a.example",)]
    assert entries.notes == ()


@pytest.mark.parametrize(
    "document",
    [
        service_entry(api="networking.istio.io/v2"),
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "b"}},
        {"apiVersion": "v2", "kind": "Service", "metadata": {"name": "s"}},
        {"apiVersion": "discovery.k8s.io/v1beta1", "kind": "EndpointSlice", "metadata": {}},
        {"metadata": {"name": "no-kind"}},
    ],
)
def test_other_kinds_are_skipped_with_a_note(document: dict[str, Any]) -> None:
    entries = parse(service(name="keep"), document)
    assert [s.name for s in entries.services] == ["keep"]
    assert entries.service_entries == () and entries.endpoint_slices == ()
    (note,) = entries.notes
    assert "test.yaml" in note and "document 1" in note
    if "kind" in document:
        assert document["kind"] in note


def test_namespace_defaults_to_default() -> None:
    entries = parse(service_entry(["a.example"]), service(name="s", namespace=None))
    assert entries.service_entries[0].namespace == "default"
    assert entries.services[0].namespace == "default"
    assert str(entries.services[0].origin) == "Service default/s"


# --- ServiceEntry fields -------------------------------------------------------


def test_service_entry_fields() -> None:
    document = service_entry(
        ["API.Example.COM.", "*.wild.example", " spaced.example "],
        name="ext",
        namespace="ns1",
        labels={"app": "x", "enabled": True, "n": 3},
        addresses=["192.0.2.1", "2001:DB8:0::1", "192.0.2.1", "198.51.100.7/32", "10.0.0.0/24"],
        ports=[
            {"number": 443, "name": "https", "protocol": "tls", "targetPort": 8443},
            {"number": 80, "name": "http"},
        ],
        resolution="static",
        endpoints=[
            {"address": "10.1.0.1", "ports": {"https": 9443}},
            {"address": "2001:db8::2"},
        ],
        exportTo=[".", "ns2"],
    )
    (entry,) = parse(document).service_entries
    assert entry.hosts == ("api.example.com", "*.wild.example", "spaced.example")
    # IPs normalised and de-duplicated; a /32 is an address; a CIDR is not.
    expected = ("192.0.2.1", str(ipaddress.ip_address("2001:db8::1")), "198.51.100.7")
    assert entry.addresses == expected
    assert entry.resolution == "STATIC"
    assert [(p.number, p.name, p.protocol, p.target_port) for p in entry.ports] == [
        (443, "https", "TLS", 8443),
        (80, "http", "TCP", None),
    ]
    assert [(e.address, dict(e.ports)) for e in entry.endpoints] == [
        ("10.1.0.1", {"https": 9443}),
        ("2001:db8::2", {}),
    ]
    assert entry.export_to == (".", "ns2")
    assert dict(entry.labels) == {"app": "x", "enabled": "true", "n": "3"}
    assert (entry.origin.kind, entry.origin.namespace, entry.origin.name) == (
        "ServiceEntry",
        "ns1",
        "ext",
    )


def test_resolution_defaults_to_none() -> None:
    (entry,) = parse(service_entry(["a.example"])).service_entries
    assert entry.resolution == "NONE"


def test_dns_endpoints_may_be_host_names() -> None:
    """Istio's own example: C{resolution: DNS} with C{endpoints: [{address: us.foo.bar.com}]}."""
    document = service_entry(
        ["foo.bar.com"],
        resolution="DNS",
        ports=[{"number": 443, "name": "https", "protocol": "TLS"}],
        endpoints=[
            {"address": "US.foo.bar.com", "ports": {"https": 8080}},
            {"address": "192.0.2.9"},
        ],
    )
    (entry,) = parse(document).service_entries
    assert [e.address for e in entry.endpoints] == ["us.foo.bar.com", "192.0.2.9"]


@pytest.mark.parametrize("resolution", ["STATIC", "NONE"])
def test_static_endpoints_must_be_ips(resolution: str) -> None:
    document = service_entry(resolution=resolution, endpoints=[{"address": "us.foo.bar.com"}])
    assert_names(only_problem(document), 0, "spec.endpoints[0].address")


@pytest.mark.parametrize(
    ("export_to", "own", "other"),
    [
        (None, True, True),
        (["*"], True, True),
        (["."], True, False),
        (["ns2"], False, True),
        ([".", "ns2"], True, True),
        (["ns3"], False, False),
    ],
)
def test_export_to(export_to: list[str] | None, own: bool, other: bool) -> None:
    """An entry of namespace ns1 seen from a proxy in ns1 (own) and in ns2 (other)."""
    spec = {} if export_to is None else {"exportTo": export_to}
    (entry,) = parse(service_entry(["a.example"], namespace="ns1", **spec)).service_entries
    assert exported_to(entry.export_to, entry.namespace, "ns1") is own
    assert exported_to(entry.export_to, entry.namespace, "ns2") is other


@pytest.mark.parametrize(
    ("spec", "labels", "expected"),
    [
        ({"resolution": "DNS"}, None, True),
        ({"resolution": "STATIC"}, None, True),
        ({"resolution": "DNS_ROUND_ROBIN"}, None, True),
        ({"resolution": "NONE"}, None, False),
        ({}, None, False),
        ({"resolution": "DNS", "addresses": ["192.0.2.1"]}, None, False),
        ({"resolution": "STATIC", "addresses": ["10.0.0.0/24"]}, None, False),
        ({"resolution": "DNS"}, {"networking.istio.io/enable-autoallocate-ip": "false"}, False),
        ({"resolution": "DNS"}, {"networking.istio.io/enable-autoallocate-ip": "False"}, False),
        ({"resolution": "DNS"}, {"networking.istio.io/enable-autoallocate-ip": False}, False),
        ({"resolution": "DNS"}, {"networking.istio.io/enable-autoallocate-ip": "true"}, True),
        ({"resolution": "DNS"}, {"other": "false"}, True),
    ],
)
def test_auto_allocatable(
    spec: dict[str, Any], labels: dict[str, Any] | None, expected: bool
) -> None:
    (entry,) = parse(service_entry(["a.example"], labels=labels, **spec)).service_entries
    assert entry.auto_allocatable is expected


# --- Service and EndpointSlice -------------------------------------------------


def test_service_cluster_ip() -> None:
    (svc,) = parse(
        service(
            name="web",
            namespace="ns1",
            clusterIP="10.96.0.10",
            ports=[{"port": 80, "targetPort": "http"}],
        )
    ).services
    assert (svc.name, svc.namespace, svc.cluster_ips, svc.headless) == (
        "web",
        "ns1",
        ("10.96.0.10",),
        False,
    )
    assert [(p.number, p.target_port) for p in svc.ports] == [(80, None)]


def test_service_dual_stack_cluster_ips() -> None:
    document = service(clusterIP="10.96.0.10", clusterIPs=["10.96.0.10", "FD00:10:96::A"])
    (svc,) = parse(document).services
    assert svc.cluster_ips == ("10.96.0.10", str(ipaddress.ip_address("fd00:10:96::a")))


@pytest.mark.parametrize(
    "spec", [{"clusterIP": "None"}, {"clusterIP": "None", "clusterIPs": ["None"]}]
)
def test_headless_service(spec: dict[str, Any]) -> None:
    (svc,) = parse(service(**spec)).services
    assert svc.headless and svc.cluster_ips == () and not svc.unassigned


def test_service_applied_without_cluster_ip_is_unassigned_not_headless() -> None:
    """The API server assigns the address of such a manifest; nothing here knows it."""
    (svc,) = parse(service()).services
    assert svc.unassigned and not svc.headless and svc.cluster_ips == ()


@pytest.mark.parametrize("service_type", [None, "ClusterIP", "NodePort", "LoadBalancer"])
def test_service_types_with_a_cluster_ip(service_type: str | None) -> None:
    spec = {"clusterIP": "10.96.0.10"} | ({} if service_type is None else {"type": service_type})
    (svc,) = parse(service(**spec)).services
    assert (svc.type, svc.cluster_ips, svc.external_name) == (
        service_type or "ClusterIP",
        ("10.96.0.10",),
        None,
    )


@pytest.mark.parametrize(
    ("external_name", "expected"),
    [
        ("db.example.com", "db.example.com"),
        ("DB.Example.COM.", "db.example.com"),
        (" db.example.com ", "db.example.com"),
        ("db.upstream.test.", "db.upstream.test"),
        ("localhost", "localhost"),
    ],
)
def test_external_name_service(external_name: str, expected: str) -> None:
    (svc,) = parse(service(type="ExternalName", externalName=external_name)).services
    assert (svc.type, svc.external_name, svc.cluster_ips, svc.headless) == (
        "ExternalName",
        expected,
        (),
        False,
    )


def test_external_name_service_ignores_its_cluster_ips() -> None:
    document = service(
        type="ExternalName",
        externalName="db.example.com",
        clusterIP="not-an-ip",
        clusterIPs=["10.96.0.10"],
        ports=[{"port": 5432}],
    )
    (svc,) = parse(document).services
    assert (svc.cluster_ips, svc.external_name) == ((), "db.example.com")
    assert [p.number for p in svc.ports] == [5432]


@pytest.mark.parametrize(
    ("spec", "line"),
    [
        (
            {"type": "Headless"},
            "test.yaml: document 1: spec.type: 'Headless' is not one of "
            "['ClusterIP', 'ExternalName', 'LoadBalancer', 'NodePort']",
        ),
        (
            {"type": "externalname", "externalName": "db.example.com"},
            "test.yaml: document 1: spec.type: 'externalname' is not one of "
            "['ClusterIP', 'ExternalName', 'LoadBalancer', 'NodePort']",
        ),
        ({"type": 5}, "test.yaml: document 1: spec.type: expected a string, got 5"),
        (
            {"type": "ExternalName"},
            "test.yaml: document 1: spec.externalName: a Service of type ExternalName needs one",
        ),
        (
            {"type": "ExternalName", "externalName": "  "},
            "test.yaml: document 1: spec.externalName: a Service of type ExternalName needs one",
        ),
        (
            {"type": "ExternalName", "externalName": 5},
            "test.yaml: document 1: spec.externalName: expected a string, got 5",
        ),
        (
            {"type": "ExternalName", "externalName": "two words.example"},
            "test.yaml: document 1: spec.externalName: 'two words.example' "
            "is not a valid host name",
        ),
        (
            {"type": "ExternalName", "externalName": "db..example"},
            "test.yaml: document 1: spec.externalName: 'db..example' is not a valid host name",
        ),
        (
            {"type": "ExternalName", "externalName": "*.example.com"},
            "test.yaml: document 1: spec.externalName: '*.example.com': "
            "an externalName cannot be a wildcard",
        ),
    ],
)
def test_service_type_problems_are_one_line(spec: dict[str, Any], line: str) -> None:
    problem = only_problem(service(name="fine", clusterIP="10.96.0.1"), service(**spec))
    assert str(problem) == line


def test_endpoint_slice_ready_addresses() -> None:
    document = endpoint_slice(
        "db",
        [
            {"addresses": ["10.1.0.1"], "conditions": {"ready": True}},
            {"addresses": ["10.1.0.2"], "conditions": {"ready": False}},
            {"addresses": ["10.1.0.3"]},
            {"addresses": ["10.1.0.4"], "conditions": {}},
            {"addresses": ["10.1.0.1"], "conditions": {"ready": True}},
        ],
        namespace="ns1",
    )
    (es,) = parse(document).endpoint_slices
    # Ready, or readiness unknown (Kubernetes says: treat as ready); no duplicates.
    assert es.addresses == ("10.1.0.1", "10.1.0.3", "10.1.0.4")
    assert (es.service_name, es.origin.namespace) == ("db", "ns1")


def test_fqdn_endpoint_slices_are_skipped_with_a_note() -> None:
    document = endpoint_slice("db", [{"addresses": ["db-0.example.com"]}])
    document["addressType"] = "FQDN"
    entries = parse(document)
    assert entries.endpoint_slices == ()
    assert entries.notes == (
        "test.yaml: document 0: skipped EndpointSlice db-abcde "
        "(addressType FQDN: host names, not addresses)",
    )


def test_ipv6_endpoint_slices_are_read() -> None:
    document = endpoint_slice("db", [{"addresses": ["fd00::1"]}])
    document["addressType"] = "IPv6"
    (es,) = parse(document).endpoint_slices
    assert es.addresses == ("fd00::1",)


def test_unknown_address_type() -> None:
    document = endpoint_slice("db", [{"addresses": ["10.1.0.1"]}])
    document["addressType"] = "ipv4"
    with pytest.raises(EntriesError) as caught:
        parse(document)
    assert str(caught.value.problems[0]) == (
        "test.yaml: document 0: addressType: 'ipv4' is not one of ['FQDN', 'IPv4', 'IPv6']"
    )


def test_endpoint_slice_without_service_label() -> None:
    (es,) = parse(endpoint_slice(None, [{"addresses": ["10.1.0.1"]}])).endpoint_slices
    assert es.service_name == ""


# --- problems --------------------------------------------------------------------


def test_file_that_does_not_parse_names_the_line() -> None:
    text = "apiVersion: v1\nkind: Service\nmetadata: {name: [unclosed\n"
    (problem,) = problems_of(text, "broken.yaml")
    assert problem.file == "broken.yaml"
    assert str(problem).startswith("broken.yaml")
    assert "line 3" in str(problem) or "line 4" in str(problem)


@pytest.mark.parametrize(
    ("document", "field"),
    [
        (service_entry(hosts="a.example"), "spec.hosts"),  # type: ignore[arg-type]
        (service_entry(hosts=[]), "spec.hosts"),
        (service_entry(hosts=[5]), "spec.hosts[0]"),
        ({**service_entry(), "metadata": ["x"]}, "metadata"),
        ({**service_entry(), "spec": "x"}, "spec"),
        ({**service_entry(), "kind": 5}, "kind"),
        (service_entry(labels={"a": {"b": "c"}}), "metadata.labels.a"),
        (service_entry(addresses="192.0.2.1"), "spec.addresses"),
        (service_entry(addresses=["192.0.2.1", "192.0.2.300"]), "spec.addresses[1]"),
        (service_entry(addresses=["10.0.0.0/33"]), "spec.addresses[0]"),
        (service_entry(addresses=["10.0.0.0/x"]), "spec.addresses[0]"),
        (service_entry(addresses=[17]), "spec.addresses[0]"),
        (service_entry(["a.example", "b.example", "A.example."]), "spec.hosts[2]"),
        (service_entry(["ok.example", ""]), "spec.hosts[1]"),
        (service_entry(["ok.example", "   "]), "spec.hosts[1]"),
        (service_entry([None]), "spec.hosts[0]"),
        (service_entry(["foo.*.com"]), "spec.hosts[0]"),
        (service_entry(["foo*.com"]), "spec.hosts[0]"),
        (service_entry(["*"]), "spec.hosts[0]"),
        (service_entry(["*.*.com"]), "spec.hosts[0]"),
        (service_entry(["foo..com"]), "spec.hosts[0]"),
        (service_entry(["x" * 64 + ".com"]), "spec.hosts[0]"),
        (service_entry([".".join(["abcdefghi"] * 26)]), "spec.hosts[0]"),
        (service_entry(["b\u00fccher.example"]), "spec.hosts[0]"),
        (service_entry(["two words.example"]), "spec.hosts[0]"),
        (service_entry(ports=[{"number": 0}]), "spec.ports[0].number"),
        (service_entry(ports=[{"number": 80}, {"number": 65536}]), "spec.ports[1].number"),
        (service_entry(ports=[{"number": "80"}]), "spec.ports[0].number"),
        (service_entry(ports=[{"number": True}]), "spec.ports[0].number"),
        (service_entry(ports=[{"name": "no-number"}]), "spec.ports[0].number"),
        (service_entry(ports=[{"number": 80, "targetPort": 70000}]), "spec.ports[0].targetPort"),
        (service_entry(ports=[80]), "spec.ports[0]"),
        (service_entry(ports={"number": 80}), "spec.ports"),
        (service_entry(resolution="MAGIC"), "spec.resolution"),
        (service_entry(resolution=5), "spec.resolution"),
        (service_entry(endpoints=["10.0.0.1"]), "spec.endpoints[0]"),
        (service_entry(endpoints=[{"address": "10.0.0.300"}]), "spec.endpoints[0].address"),
        (
            service_entry(endpoints=[{"address": "10.0.0.1", "ports": {"http": 0}}]),
            "spec.endpoints[0].ports.http",
        ),
        (service_entry(exportTo="."), "spec.exportTo"),
        (service_entry(exportTo=[1]), "spec.exportTo[0]"),
        (service(clusterIP="10.96.0.300"), "spec.clusterIP"),
        (service(clusterIPs=["10.96.0.1", "nope"]), "spec.clusterIPs[1]"),
        (service(clusterIPs="10.96.0.1"), "spec.clusterIPs"),
        (service(ports=[{"port": 99999}]), "spec.ports[0].number"),
        (service(name=""), "metadata.name"),
        (service(name="Upper"), "metadata.name"),
        (service(name="a.b"), "metadata.name"),
        (service(namespace="NS1"), "metadata.namespace"),
        (endpoint_slice("db", [{"addresses": ["not-an-ip"]}]), "endpoints[0].addresses[0]"),
        (endpoint_slice("db", ["10.0.0.1"]), "endpoints[0]"),
        (endpoint_slice("db", [{"addresses": "10.0.0.1"}]), "endpoints[0].addresses"),
    ],
)
def test_problem_names_file_document_and_field(document: dict[str, Any], field: str) -> None:
    good = service(name="fine", clusterIP="10.96.0.1")
    problem = only_problem(good, good, document)
    assert_names(problem, 2, field)


@pytest.mark.parametrize("document", [["a", "list"], "text", 5])
def test_document_that_is_not_a_mapping(document: Any) -> None:
    assert_names(only_problem(service(), document), 1, None)


def test_every_problem_of_every_file_is_reported_and_the_rest_is_read(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        dump(service_entry(["*"]), service(name="ok"), service_entry(addresses=["nope"]))
    )
    (tmp_path / "b.yaml").write_text("kind: [\n")
    (tmp_path / "c.yaml").write_text(dump(service_entry(["fine.example"])))
    (tmp_path / "d.yml").write_text(dump(service(clusterIP="1.2.3"), endpoint_slice("x", [7])))
    entries = load_entries([str(tmp_path)])
    assert [s.name for s in entries.services] == ["ok"]
    assert [e.hosts for e in entries.service_entries] == [("fine.example",)]
    found = [(Path(p.file).name, p.document, p.field) for p in entries.problems]
    assert found == [
        ("a.yaml", 0, "spec.hosts[0]"),
        ("a.yaml", 2, "spec.addresses[0]"),
        ("b.yaml", None, None),
        ("d.yml", 0, "spec.clusterIP"),
        ("d.yml", 1, "endpoints[0]"),
    ]
    assert all(str(tmp_path) in str(p) and "\n" not in str(p) for p in entries.problems)
    # The document's identity is kept, so its last valid version can serve.
    assert entries.problems[1].key == ("ServiceEntry", "default", "se")


def test_problems_across_several_paths(tmp_path: Path) -> None:
    one, two = tmp_path / "one.yaml", tmp_path / "two.yaml"
    one.write_text(dump(service_entry(["foo.*.com"])))
    two.write_text(dump(service(name="")))
    problems = load_entries([str(one), str(two)]).problems
    assert [p.file for p in problems] == [str(one), str(two)]


def test_strict_parse_raises_with_every_problem() -> None:
    with pytest.raises(EntriesError) as caught:
        parse_entries(dump(service_entry(["*"]), service_entry(addresses=["nope"])), "x.yaml")
    lines = str(caught.value).splitlines()
    assert lines == [str(p) for p in caught.value.problems] and len(lines) == 2


def test_long_bad_values_are_quoted_short() -> None:
    with pytest.raises(EntriesError) as caught:
        parse_entries(dump(service_entry(addresses=["x" * 5000])))
    assert len(str(caught.value)) < 200


def test_file_not_in_utf8_is_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"kind: Service\nmetadata: {name: caf\xe9}\n")
    (problem,) = load_entries([str(path)]).problems
    assert problem.file == str(path)
    assert "\n" not in str(problem) and "UTF-8" in str(problem)


def test_control_character_names_the_line() -> None:
    """A YAML reader error has no mark: its line is still named."""
    (problem,) = problems_of("kind: Service\nmetadata:\n  name: a\x07b\n")
    assert "line 3" in str(problem) and "\n" not in str(problem)


# --- folders -------------------------------------------------------------------


def test_folder_reads_entry_files_directly_inside_in_sorted_order(tmp_path: Path) -> None:
    for name, host in [
        ("b.yaml", "b.example"),
        ("a.yml", "a.example"),
        ("c.json", "c.example"),
        ("notes.txt", "txt.example"),
        ("README.md", "md.example"),
        (".hidden.yaml", "hidden.example"),
        ("yaml", "noext.example"),
    ]:
        (tmp_path / name).write_text(dump(service_entry([host], name=host.split(".")[0])))
    (tmp_path / "c.json").write_text(json.dumps(service_entry(["c.example"])))
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "deep.yaml").write_text(dump(service_entry(["deep.example"])))
    (tmp_path / "dir.yaml").mkdir()

    entries = load_entries([str(tmp_path)])
    assert [e.hosts[0] for e in entries.service_entries] == ["a.example", "b.example", "c.example"]
    assert [Path(e.origin.file).name for e in entries.service_entries] == [
        "a.yml",
        "b.yaml",
        "c.json",
    ]


def test_configmap_mount_is_read_through_its_symlinks(tmp_path: Path) -> None:
    """
    The layout the kubelet makes for a ConfigMap volume: the real files in a
    timestamped hidden folder, C{..data} a symlink to it, and each key a
    top-level symlink to C{..data/KEY}.
    """
    mount = tmp_path / "mount"
    real = mount / "..2024_05_01_12_00_00.123456789"
    real.mkdir(parents=True)
    (real / "one.yaml").write_text(dump(service_entry(["one.example"])))
    (real / "two.yaml").write_text(dump(service(name="two", clusterIP="10.96.0.2")))
    os.symlink(real.name, mount / "..data")
    for key in ("one.yaml", "two.yaml"):
        os.symlink(f"..data/{key}", mount / key)

    entries = load_entries([str(mount)])
    assert [e.hosts for e in entries.service_entries] == [("one.example",)]
    assert [s.name for s in entries.services] == ["two"]
    # Each file is read once, through its top-level name, not again from the hidden folders.
    assert [e.origin.file for e in entries.service_entries] == [str(mount / "one.yaml")]


def test_missing_path_is_an_empty_result_and_listed(tmp_path: Path) -> None:
    """Listed in C{missing} (the loader warns of it at every load), not a note."""
    missing = str(tmp_path / "nowhere")
    assert load_entries([missing]) == Entries(missing=(missing,))


def test_explicit_file_is_read_whatever_its_name(tmp_path: Path) -> None:
    path = tmp_path / "entries.conf"
    path.write_text(dump(service_entry(["x.example"])))
    assert [e.hosts for e in load_entries([str(path)]).service_entries] == [("x.example",)]


def test_empty_folder_and_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.yaml").write_text("")
    assert load_entries([str(tmp_path)]) == Entries()


def test_shipped_entries_are_valid() -> None:
    """conf/entries holds the Istio guide's ServiceEntries."""
    folder = SHIPPED_ENTRIES
    entries = load_entries([str(folder)])
    hosts = {h: e for e in entries.service_entries for h in e.hosts}
    assert hosts["address.internal"].addresses == ("198.51.100.1",)
    for host in (
        "auto.internal",
        "tcp-echo.external-1.svc.cluster.local",
        "tcp-echo.external-2.svc.cluster.local",
    ):
        assert hosts[host].auto_allocatable, host


@given(address=st.ip_addresses(), form=st.sampled_from(["compressed", "exploded", "upper"]))
def test_addresses_are_written_as_ipaddress_writes_them(address, form: str) -> None:
    """The inet_pton shortcut of C{_ip} gives what C{ipaddress} gives, whatever the form."""
    text = address.exploded if form == "exploded" else str(address)
    text = text.upper() if form == "upper" else text
    assert documents.read_ip("spec.addresses[0]", text) == str(ipaddress.ip_address(text))


@pytest.mark.parametrize(
    "text", ["010.0.0.1", "1.2.3", "256.1.1.1", "1.2.3.4 ", "::1::", "fd00::1\x00", "", "::g"]
)
def test_not_addresses(text: str) -> None:
    with pytest.raises(documents.Invalid, match="is not an IP address"):
        documents.read_ip("spec.addresses[0]", text)
