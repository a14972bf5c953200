# -*- test-case-name: tests.unit.mesh.test_clusternames -*-
"""
Which names under the cluster domain do not exist, as Kubernetes DNS sees it.

Kubernetes' DNS specification (kubernetes/dns, C{docs/specification.md})
names everything kube-dns serves under C{<zone>}: a Service's
C{<service>.<ns>.svc.<zone>}, the names below it (endpoint hostnames, the
dashed addresses of a headless Service's endpoints, C{_port._proto} SRV
names), C{dns-version.<zone>}, and the pod names under C{pod.<zone>}.
CoreDNS's C{kubernetes} plugin (C{parse.go}) answers NXDOMAIN for the rest:
a first label under the zone other than C{svc} and C{pod}, a Service that
does not exist, or a name too long to parse.

meshdns claims less than that, so that it can never call a name absent that
kube-dns answers: every name at or below an existing Service's name counts
as existing (whatever its endpoints and ports are), and so do the zone's
apex, C{svc.<zone>}, every C{<ns>.svc.<zone>} (a namespace without Services
still answers NODATA there, and meshdns does not watch Namespaces),
everything under C{pod.<zone>}, the names CoreDNS serves for itself
(C{dns-version}, C{ns.dns}) and any name with a wildcard label (C{*} or
C{any}, which older kube-dns versions expanded).
"""

from __future__ import annotations

from collections.abc import Callable

#: Names under the zone (the zone left out) that kube-dns answers itself:
#: the schema version TXT record, and its own name server's name.
SERVED_BY_KUBE_DNS = frozenset((b"dns-version", b"ns.dns", b"dns"))

_WILDCARDS = (b"*", b"any")


def absent(name: bytes, zone: bytes, service_exists: Callable[[str, str], bool]) -> bool:
    """
    Whether C{name} is under C{zone} and does not exist for Kubernetes DNS
    (see the module docstring), so that every query type gets NXDOMAIN.

    @param name: lowercase, without the trailing dot.
    @param zone: the cluster domain, lowercase, without the trailing dot.
    @param service_exists: whether the cluster has the Service
        C{(namespace, name)}.
    """
    if not name.endswith(b"." + zone):
        return False
    relative = name[: -len(zone) - 1]
    if relative in SERVED_BY_KUBE_DNS:
        return False
    labels = relative.split(b".")
    if any(label in _WILDCARDS for label in labels):
        return False
    kind = labels[-1]
    if kind == b"pod":
        return False
    if kind != b"svc":
        return True
    if len(labels) < 3:
        return False
    namespace, service = labels[-2], labels[-3]
    return not service_exists(
        namespace.decode("ascii", "replace"), service.decode("ascii", "replace")
    )
