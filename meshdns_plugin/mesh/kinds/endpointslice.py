# -*- test-case-name: tests.unit.mesh.test_entries,tests.unit.mesh.test_entries_validation -*-
"""
The Kubernetes C{discovery.k8s.io/v1} C{EndpointSlice}, reduced to what DNS
answers with: its ready addresses and hostnames, and the Pods it names.
"""

from __future__ import annotations

from meshdns_plugin.mesh.documents import Document, Invalid, is_k8s_label, quote, read_ip
from meshdns_plugin.mesh.model import EndpointSlice, Origin

APIS = frozenset({"discovery.k8s.io/v1"})
#: EndpointSlice address types; FQDN slices carry host names, which
#: Kubernetes DNS does not answer with, so they are skipped.
ADDRESS_TYPES = frozenset({"IPv4", "IPv6", "FQDN"})
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def read(doc: Document, origin: Origin) -> EndpointSlice | None:
    """The slice, or L{None} for one of C{addressType: FQDN} (skipped)."""
    address_type = doc.text("addressType", "IPv4") or "IPv4"
    if address_type not in ADDRESS_TYPES:
        raise Invalid(
            "addressType", f"{quote(address_type)} is not one of {sorted(ADDRESS_TYPES)}"
        )
    if address_type == "FQDN":
        return None
    labels = doc.mapping("metadata").string_map("labels")
    addresses = []
    pods = []
    hostnames: dict[str, list[str]] = {}
    for path, raw in doc.items("endpoints"):
        if not isinstance(raw, dict):
            raise Invalid(path, f"expected a mapping, got {quote(raw)}")
        endpoint = Document(raw, path + ".")
        own = [read_ip(where, address) for where, address in endpoint.items("addresses")]
        target = raw.get("targetRef")
        if isinstance(target, dict) and target.get("kind") == "Pod":
            pods.extend(own)
        # Kubernetes DNS answers ready endpoints only; no condition is ready.
        ready = endpoint.mapping("conditions").raw.get("ready")
        if ready is False:
            continue
        addresses.extend(own)
        hostname = endpoint.text("hostname")
        if hostname:
            if not is_k8s_label(hostname):
                raise Invalid(path + ".hostname", f"{quote(hostname)} is not a DNS label")
            hostnames.setdefault(hostname, []).extend(own)
    return EndpointSlice(
        origin=origin,
        service_name=labels.get(SERVICE_NAME_LABEL, ""),
        addresses=tuple(dict.fromkeys(addresses)),
        hostnames={h: tuple(dict.fromkeys(a)) for h, a in hostnames.items()},
        pod_addresses=tuple(dict.fromkeys(pods)),
    )
