# -*- test-case-name: tests.unit.mesh.test_entries -*-
"""
The mesh model: what the entry files said, as frozen objects. Istio
C{ServiceEntry} and C{Sidecar}, Kubernetes C{Service} and C{EndpointSlice},
where each came from, and the problems of those that were left out.
L{meshdns_plugin.mesh.kinds} makes them from YAML; nothing else here knows
that YAML exists.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import Any, TypeVar

_Record = TypeVar("_Record")

#: The label that opts a ServiceEntry out of Istio's VIP auto-allocation.
AUTOALLOCATE_LABEL = "networking.istio.io/enable-autoallocate-ip"

#: What identifies a document across loads: kind, namespace and name.
DocumentKey = tuple[str, str, str]


def _pickled_by_fields(cls: type[_Record]) -> type[_Record]:
    """
    Pickle a record as its class and its fields, in order: a large file's
    records come back from the process that parsed it
    (L{meshdns_plugin.sources.entryfile}), and the state a slotted dataclass
    pickles by default is read back field by field in Python, three times
    slower than calling the class.
    """
    values = attrgetter(*(f.name for f in fields(cls)))  # type: ignore[arg-type]

    def __reduce__(self: Any) -> tuple[type[_Record], tuple[Any, ...]]:
        return (cls, values(self))

    cls.__reduce__ = __reduce__  # type: ignore[method-assign, assignment]
    return cls

@_pickled_by_fields
@dataclass(frozen=True, slots=True)
class Origin:
    """
    Where a model object came from, for messages and C{/debug/table}.

    @ivar document: index of the YAML document in its file (0-based).
    """

    file: str
    document: int
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"

    @property
    def key(self) -> DocumentKey:
        """The document's identity, which a fixed or broken version keeps."""
        return (self.kind, self.namespace, self.name)


@_pickled_by_fields
@dataclass(frozen=True, slots=True)
class Port:
    """
    One service port.

    @ivar protocol: upper-cased Istio protocol name (TCP, HTTP, TLS, ...).
    @ivar target_port: the endpoints' port when it differs from C{number}.
    """

    number: int
    name: str = ""
    protocol: str = "TCP"
    target_port: int | None = None


@_pickled_by_fields
@dataclass(frozen=True, slots=True)
class Endpoint:
    """
    A ServiceEntry endpoint (a C{WorkloadEntry} spec inline).

    @ivar address: an IP address; for C{resolution: DNS} or C{DNS_ROUND_ROBIN}
        it may also be a host name (lowercase, no trailing dot).
    @ivar ports: port name -> port number overrides.
    """

    address: str
    ports: Mapping[str, int] = field(default_factory=dict)


@_pickled_by_fields
@dataclass(frozen=True, slots=True)
class ServiceEntry:
    """
    An Istio ServiceEntry, as far as DNS and VIP listeners need it.

    @ivar addresses: IP addresses of C{spec.addresses}, normalised; CIDRs
        are validated but left out, since they cannot be a DNS answer.
    @ivar networks: the CIDRs of C{spec.addresses}, normalised: they are not
        answered, but they still make the entry ineligible for a VIP.
    """

    origin: Origin
    hosts: tuple[str, ...]
    addresses: tuple[str, ...] = ()
    ports: tuple[Port, ...] = ()
    resolution: str = "NONE"
    endpoints: tuple[Endpoint, ...] = ()
    export_to: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    networks: tuple[str, ...] = ()
    status_addresses: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return self.origin.namespace

    def assigned(self, host: str) -> tuple[str, ...]:
        """
        The VIPs Istio's IP auto-allocation controller recorded for C{host}
        in C{status.addresses} (since Istio 1.25): what the sidecars of the
        same cluster route, so what DNS must answer.
        """
        return self.status_addresses.get(host, ())

    @property
    def auto_allocatable(self) -> bool:
        """Whether this entry's non-wildcard hosts get VIPs (DESIGN.md)."""
        return (
            not self.addresses
            and not self.networks
            and self.resolution != "NONE"
            and self.labels.get(AUTOALLOCATE_LABEL, "true").lower() != "false"
        )


@_pickled_by_fields
@dataclass(frozen=True, slots=True)
class Service:
    """
    A Kubernetes Service.

    @ivar cluster_ips: empty for a headless Service (C{clusterIP: None}) and
        for one of type C{ExternalName}.
    @ivar type: C{spec.type}, one of L{SERVICE_TYPES}.
    @ivar external_name: for C{type: ExternalName}, the name its DNS names
        are a CNAME to (lowercase, no trailing dot); else L{None}.
    @ivar unassigned: the document says nothing of a cluster IP (a manifest
        as applied, before the API server assigns one): its address is not
        known here, so it is neither answered nor taken for headless.
    @ivar export_to: the C{networking.istio.io/exportTo} annotation's
        namespaces (empty: everywhere).
    """

    origin: Origin
    cluster_ips: tuple[str, ...] = ()
    ports: tuple[Port, ...] = ()
    type: str = "ClusterIP"
    external_name: str | None = None
    unassigned: bool = False
    export_to: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.origin.name

    @property
    def namespace(self) -> str:
        return self.origin.namespace

    @property
    def headless(self) -> bool:
        return not self.cluster_ips and self.external_name is None and not self.unassigned


@_pickled_by_fields
@dataclass(frozen=True, slots=True)
class EndpointSlice:
    """
    A C{discovery.k8s.io/v1} EndpointSlice, reduced to its ready addresses.

    @ivar hostnames: each ready endpoint's C{hostname} (a StatefulSet pod's
        name, say) -> its addresses: the per-pod names of a headless Service.
    @ivar pod_addresses: the addresses of every endpoint whose C{targetRef}
        is a Pod, ready or not: clients of the slice's namespace, for
        per-client views (a pod that is not ready still asks DNS).
    """

    origin: Origin
    service_name: str
    addresses: tuple[str, ...] = ()
    hostnames: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    pod_addresses: tuple[str, ...] = ()


@_pickled_by_fields
@dataclass(frozen=True, slots=True)
class Pod:
    """
    A Kubernetes Pod, as far as per-client views need it: which namespace
    its addresses' queries belong to, and whether its search list is the
    one kubelet writes for a C{ClusterFirst} pod. Read leniently (a Pod's
    other fields are none of meshdns's business), so a Pod document is
    never a problem.

    @ivar addresses: C{status.podIPs[].ip} and C{status.podIP}.
    @ivar own_dns: its resolv.conf is not a C{ClusterFirst} pod's (another
        C{dnsPolicy}, or C{dnsConfig} search domains or C{ndots}), so
        autopath, which walks the C{ClusterFirst} list, must leave it alone.
    """

    origin: Origin
    addresses: tuple[str, ...] = ()
    own_dns: bool = False

    @property
    def namespace(self) -> str:
        return self.origin.namespace


@_pickled_by_fields
@dataclass(frozen=True, slots=True)
class Sidecar:
    """
    An Istio C{Sidecar}, as far as DNS needs it: which hosts a proxy knows.

    @ivar egress_hosts: every C{egress[].hosts} item, C{namespace/dnsName}.
    @ivar selects_workloads: it has a C{workloadSelector}, so it applies to
        some pods only, never to a namespace's default view.
    """

    origin: Origin
    egress_hosts: tuple[str, ...] = ()
    selects_workloads: bool = False

    @property
    def namespace(self) -> str:
        return self.origin.namespace


@_pickled_by_fields
@dataclass(frozen=True, slots=True)
class Entries:
    """
    Everything read from the entry files.

    @ivar notes: things worth a log line that are not errors (skipped kinds,
        missing paths).
    @ivar problems: the invalid documents (and unreadable files), each left
        out: one team's broken file never takes the others' entries down.
    @ivar missing: configured paths that do not exist; the server serves an
        empty mesh from them, C{meshdns check} calls them a mistake.
    @ivar pods: the Pod documents that have addresses (per-client views).
    """

    service_entries: tuple[ServiceEntry, ...] = ()
    services: tuple[Service, ...] = ()
    endpoint_slices: tuple[EndpointSlice, ...] = ()
    notes: tuple[str, ...] = ()
    sidecars: tuple[Sidecar, ...] = ()
    problems: tuple[Problem, ...] = ()
    missing: tuple[str, ...] = ()
    pods: tuple[Pod, ...] = ()


@_pickled_by_fields
@dataclass(frozen=True, slots=True)
class Problem:
    """
    One reason a document (or a whole file) was left out.

    @ivar document: the YAML document index, or L{None} for the whole file.
    @ivar field: a dotted path inside the document, or L{None}.
    @ivar key: the document's kind, namespace and name when they could be
        read, so that its last valid version can keep serving.
    """

    file: str
    document: int | None
    field: str | None
    message: str
    key: DocumentKey | None = None

    def __str__(self) -> str:
        where = self.file
        if self.document is not None:
            where += f": document {self.document}"
        if self.field:
            where += f": {self.field}"
        return f"{where}: {self.message}"


class EntriesError(Exception):
    """
    The entries cannot be used; C{problems} lists every reason, one per line.
    """

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))
