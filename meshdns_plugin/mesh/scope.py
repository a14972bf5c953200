# -*- test-case-name: tests.unit.mesh.test_entries,tests.unit.mesh.test_view -*-
"""
What one proxy sees of the mesh, as Istio's sidecar scope computes it.

Three rules, applied in this order:
  - C{exportTo}: a ServiceEntry's field, or a Kubernetes Service's
    C{networking.istio.io/exportTo} annotation, says which namespaces see it
    (C{*} every one, C{.} its own, C{~} none; absent: every one);
  - the C{Sidecar} of the proxy's namespace (one without a
    C{workloadSelector}), else the root namespace's, limits the hosts to its
    C{egress[].hosts} (C{namespace/dnsName}: C{./*}, C{ns/*}, C{*/host},
    C{~/*}, wildcards in the name); with neither, everything exported is seen;
  - a host that ServiceEntries in several namespaces define is taken from
    one namespace only: the proxy's own if it has one, else the first in
    name order (Istio picks one namespace too; its order is creation time,
    which files do not carry).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from meshdns_plugin.mesh.model import Entries, Service, ServiceEntry, Sidecar

#: Istio's default root namespace, whose Sidecar is every namespace's default.
ROOT_NAMESPACE = "istio-system"


def exported_to(export_to: Sequence[str], owner: str, namespace: str) -> bool:
    """Whether a resource of namespace C{owner} with C{export_to} is seen from C{namespace}."""
    if not export_to or "*" in export_to or namespace in export_to:
        return True
    return "." in export_to and owner == namespace


def _name_matches(pattern: str, host: str) -> bool:
    """A Sidecar host's dnsName part: C{*}, C{*.suffix}, or an exact name."""
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern.rstrip(".")


def egress_allows(hosts: Iterable[str], proxy: str, owner: str, host: str) -> bool:
    """
    Whether a Sidecar's egress C{hosts} let a proxy in namespace C{proxy}
    know C{host}, defined in namespace C{owner}. C{.} is the proxy's own
    namespace (a root-namespace Sidecar applies as if it were in each one);
    C{~} matches nothing.
    """
    for item in hosts:
        namespace, _, pattern = item.partition("/")
        if namespace == "~":
            continue
        if namespace == "*" or namespace == owner or (namespace == "." and owner == proxy):
            if _name_matches(pattern, host):
                return True
    return False


def applicable_sidecar(
    sidecars: Iterable[Sidecar], namespace: str, root_namespace: str = ROOT_NAMESPACE
) -> Sidecar | None:
    """
    The Sidecar that scopes a namespace-wide proxy: its own namespace's
    without a C{workloadSelector}, else the root namespace's, else none.
    """
    candidates = [s for s in sidecars if not s.selects_workloads]
    for wanted in (namespace, root_namespace):
        for sidecar in candidates:
            if sidecar.namespace == wanted:
                return sidecar
    return None


def service_host(service: Service, cluster_domain: str) -> str:
    """A Service's fully qualified host name, the one Sidecar egress hosts name."""
    return f"{service.name}.{service.namespace}.svc.{cluster_domain}"


def _one_namespace_per_host(
    entries: Sequence[ServiceEntry], namespace: str
) -> tuple[ServiceEntry, ...]:
    """
    The entries with each host kept only from the namespace that serves it:
    the proxy's own, else the first in name order. An entry that keeps no
    host is dropped.
    """
    namespaces: dict[str, set[str]] = {}
    for entry in entries:
        for host in entry.hosts:
            namespaces.setdefault(host, set()).add(entry.namespace)
    chosen = {
        host: namespace if namespace in found else min(found) for host, found in namespaces.items()
    }
    result = []
    for entry in entries:
        hosts = tuple(h for h in entry.hosts if chosen[h] == entry.namespace)
        if hosts == entry.hosts:
            result.append(entry)
        elif hosts:
            result.append(dataclasses.replace(entry, hosts=hosts))
    return tuple(result)


def scoped(
    entries: Entries,
    namespace: str,
    cluster_domain: str = "cluster.local",
    root_namespace: str = ROOT_NAMESPACE,
) -> Entries:
    """
    C{entries} as a proxy in C{namespace} sees them: only the ServiceEntry
    hosts and Services it knows, each ServiceEntry host from one namespace.
    EndpointSlices are kept whole (they only matter through their Service).
    """
    sidecar = applicable_sidecar(entries.sidecars, namespace, root_namespace)

    def allowed(owner: str, host: str) -> bool:
        return sidecar is None or egress_allows(sidecar.egress_hosts, namespace, owner, host)

    service_entries = []
    for entry in entries.service_entries:
        if not exported_to(entry.export_to, entry.namespace, namespace):
            continue
        hosts = tuple(h for h in entry.hosts if allowed(entry.namespace, h))
        if hosts == entry.hosts:
            service_entries.append(entry)
        elif hosts:
            service_entries.append(dataclasses.replace(entry, hosts=hosts))
    services = tuple(
        s
        for s in entries.services
        if exported_to(s.export_to, s.namespace, namespace)
        and allowed(s.namespace, service_host(s, cluster_domain))
    )
    return dataclasses.replace(
        entries,
        service_entries=_one_namespace_per_host(service_entries, namespace),
        services=services,
    )
