# -*- test-case-name: tests.unit.mesh.test_entries,tests.unit.mesh.test_entries_validation -*-
"""
The Kubernetes C{Service}: read and validated as the API server does, for
the fields meshdns reads.
"""

from __future__ import annotations

from meshdns_plugin.mesh.documents import (
    Document,
    Invalid,
    check_export_to,
    exact_host,
    quote,
    read_ip,
    read_ports,
)
from meshdns_plugin.mesh.model import Origin, Service

APIS = frozenset({"v1"})
SERVICE_TYPES = frozenset({"ClusterIP", "NodePort", "LoadBalancer", "ExternalName"})
#: The annotation that limits which namespaces see a Kubernetes Service in
#: Istio, as C{exportTo} does for a ServiceEntry (comma-separated).
EXPORT_TO_ANNOTATION = "networking.istio.io/exportTo"


def _check_cluster_ips(spec: Document, given: list[str], addresses: list[str]) -> None:
    """
    The API server's rules for a Service's addresses: C{clusterIP} is
    C{clusterIPs[0]} when both are given; at most two, of different
    families (dual stack), or a lone C{None}; C{ipFamilies} name those
    families in the same order.
    """
    single = spec.text("clusterIP")
    if single and spec.raw.get("clusterIPs") and given[0] != single:
        raise Invalid("spec.clusterIPs[0]", f"must equal clusterIP {quote(single)}")
    if len(given) > 2 or ("None" in given and len(given) > 1):
        raise Invalid("spec.clusterIPs", "at most two addresses (dual stack), or one None")
    families = ["IPv6" if ":" in a else "IPv4" for a in addresses]
    if len(families) == 2 and families[0] == families[1]:
        raise Invalid("spec.clusterIPs", "two addresses must be of different families")
    declared = spec.texts("ipFamilies")
    for index, family in enumerate(declared):
        if family not in ("IPv4", "IPv6"):
            raise Invalid(f"spec.ipFamilies[{index}]", f"{quote(family)} is not IPv4 or IPv6")
    if declared and families and list(declared[: len(families)]) != families:
        raise Invalid("spec.ipFamilies", "must list the families of clusterIPs, in order")


def read(doc: Document, origin: Origin) -> Service:
    """The Service, with its cluster IPs (none for C{ExternalName}) checked."""
    spec = doc.mapping("spec")
    export_to = tuple(
        part.strip()
        for part in doc.mapping("metadata")
        .string_map("annotations")
        .get(EXPORT_TO_ANNOTATION, "")
        .split(",")
        if part.strip()
    )
    check_export_to(f"metadata.annotations.{EXPORT_TO_ANNOTATION}", export_to)
    service_type = spec.text("type", "ClusterIP") or "ClusterIP"
    if service_type not in SERVICE_TYPES:
        raise Invalid("spec.type", f"{quote(service_type)} is not one of {sorted(SERVICE_TYPES)}")
    if service_type == "ExternalName":
        # Kubernetes gives such a Service no cluster IP: whatever the
        # document says about one is not looked at.
        external_name = spec.text("externalName")
        if not external_name.strip():
            raise Invalid("spec.externalName", "a Service of type ExternalName needs one")
        return Service(
            origin=origin,
            ports=read_ports(spec),
            type=service_type,
            external_name=exact_host("spec.externalName", external_name, "an externalName"),
            export_to=export_to,
        )
    cluster_ips = list(spec.texts("clusterIPs")) or [spec.text("clusterIP")]
    addresses = []
    for index, raw in enumerate(cluster_ips):
        if raw in ("", "None"):
            continue
        path = f"spec.clusterIPs[{index}]" if spec.raw.get("clusterIPs") else "spec.clusterIP"
        addresses.append(read_ip(path, raw))
    _check_cluster_ips(spec, cluster_ips, addresses)
    return Service(
        origin=origin,
        cluster_ips=tuple(dict.fromkeys(addresses)),
        ports=read_ports(spec),
        type=service_type,
        unassigned=cluster_ips == [""],
        export_to=export_to,
    )
