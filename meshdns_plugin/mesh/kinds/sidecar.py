# -*- test-case-name: tests.unit.mesh.test_entries,tests.unit.mesh.test_entries_validation -*-
"""
Istio's C{Sidecar}, as far as DNS needs it: the hosts a proxy knows.
"""

from __future__ import annotations

from meshdns_plugin.mesh.documents import Document, Invalid, quote
from meshdns_plugin.mesh.model import Origin, Sidecar

APIS = frozenset(
    f"networking.istio.io/{version}" for version in ("v1", "v1beta1", "v1alpha3")
)


def read(doc: Document, origin: Origin) -> Sidecar:
    """The Sidecar's egress hosts, each C{namespace/dnsName}."""
    spec = doc.mapping("spec")
    hosts = []
    for path, raw in spec.items("egress"):
        if not isinstance(raw, dict):
            raise Invalid(path, f"expected a mapping, got {quote(raw)}")
        egress = Document(raw, path + ".")
        for host_path, host in egress.items("hosts"):
            if not isinstance(host, str) or host.count("/") != 1 or host.endswith("/"):
                raise Invalid(host_path, f"{quote(host)} is not namespace/dnsName")
            hosts.append(host.lower())
        if not raw.get("hosts"):
            raise Invalid(path + ".hosts", "an egress listener needs at least one host")
    return Sidecar(
        origin=origin,
        egress_hosts=tuple(hosts),
        selects_workloads=spec.raw.get("workloadSelector") is not None,
    )
