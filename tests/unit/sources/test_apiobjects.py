"""
Tests for L{meshdns_plugin.sources.apiobjects}: an object from the API is
read by the same readers as a file's document, and an invalid one is one
line naming kind, namespace, name and field (issue 18, item 3).
"""

from __future__ import annotations

from meshdns_plugin.mesh.model import Service, ServiceEntry
from meshdns_plugin.sources.apiobjects import API_SOURCE, read_api_object


def service_entry(hosts: list[str]) -> dict:
    return {
        "kind": "ServiceEntry",
        "apiVersion": "networking.istio.io/v1",
        "metadata": {"name": "ext", "namespace": "shop", "resourceVersion": "7"},
        "spec": {
            "hosts": hosts,
            "resolution": "DNS",
            "ports": [{"number": 443, "name": "https", "protocol": "TLS"}],
        },
    }


def test_valid_object_becomes_its_model_object() -> None:
    read = read_api_object(service_entry(["api.example.com"]))
    assert read.key == ("ServiceEntry", "shop", "ext")
    assert isinstance(read.model, ServiceEntry)
    assert read.model.hosts == ("api.example.com",)
    assert read.model.origin.file == API_SOURCE
    assert read.problem is None


def test_invalid_object_names_kind_namespace_name_and_field() -> None:
    read = read_api_object(service_entry(["api.example.com", "API.example.com."]))
    assert read.model is None
    assert read.problem is not None
    assert read.problem.startswith("ServiceEntry shop/ext: spec.hosts[1]: ")
    assert "\n" not in read.problem


def test_service_of_the_core_group() -> None:
    read = read_api_object(
        {
            "kind": "Service",
            "apiVersion": "v1",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {
                "clusterIP": "10.96.0.10",
                "clusterIPs": ["10.96.0.10"],
                "ports": [{"port": 80}],
            },
        }
    )
    assert isinstance(read.model, Service)
    assert read.model.cluster_ips == ("10.96.0.10",)


def test_pod_that_is_no_client_reads_as_nothing() -> None:
    """A host-network Pod's address is its node's: not a client (mesh/kinds/pod.py)."""
    read = read_api_object(
        {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {"name": "p", "namespace": "shop"},
            "spec": {"hostNetwork": True},
            "status": {"podIP": "10.0.0.5"},
        }
    )
    assert read.key == ("Pod", "shop", "p")
    assert read.model is None and read.problem is None
