# -*- test-case-name: tests.test_entries -*-
"""
YAML documents -> frozen model objects: Istio C{ServiceEntry} and
C{Sidecar}, Kubernetes C{Service} and C{EndpointSlice}.

This is the only module that knows the shape of those documents. It reads them
the way C{kubectl get -o yaml} prints them (several documents per file, C{kind:
List} wrappers, C{status} included) and validates them as Istio's webhook and
the API server do. Every problem is collected, each naming the file, the
document index and the field, and the invalid document is left out: the others
are still read, so one team's mistake never hides another team's services.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from meshdns_plugin.mesh import yamltext

SERVICE_ENTRY_APIS = frozenset(
    f"networking.istio.io/{version}" for version in ("v1", "v1beta1", "v1alpha3")
)
RESOLUTIONS = frozenset({"NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN", "DYNAMIC_DNS"})
#: An endpoint that is a Unix domain socket (C{unix:///var/run/socket}).
UNIX_PREFIX = "unix://"
SERVICE_TYPES = frozenset({"ClusterIP", "NodePort", "LoadBalancer", "ExternalName"})
#: EndpointSlice address types; FQDN slices carry host names, which
#: Kubernetes DNS does not answer with, so they are skipped.
ADDRESS_TYPES = frozenset({"IPv4", "IPv6", "FQDN"})
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
#: The annotation that limits which namespaces see a Kubernetes Service in
#: Istio, as C{exportTo} does for a ServiceEntry (comma-separated).
EXPORT_TO_ANNOTATION = "networking.istio.io/exportTo"
SIDECAR_APIS = frozenset(
    f"networking.istio.io/{version}" for version in ("v1", "v1beta1", "v1alpha3")
)
AUTOALLOCATE_LABEL = "networking.istio.io/enable-autoallocate-ip"
ENTRY_FILE_SUFFIXES = (".yaml", ".yml", ".json")
DNS_RESOLUTIONS = frozenset({"DNS", "DNS_ROUND_ROBIN"})
# A host label: ASCII only, so a name is the same bytes in the table and on the wire.
_HOST_LABEL = re.compile(r"[a-z0-9_-]+")
_K8S_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_K8S_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def is_k8s_label(text: str) -> bool:
    """
    Whether C{text} is a Kubernetes namespace or Service name, which become
    DNS labels: an RFC 1123 label (lowercase letters, digits and C{-},
    starting and ending with a letter or digit, at most 63 characters), as
    the API server enforces.
    """
    return len(text) <= 63 and _K8S_LABEL.fullmatch(text) is not None


#: How much of a bad value a message quotes: enough to recognise it, never a
#: whole pasted certificate or a megabyte of garbage in one log line.
QUOTE_LIMIT = 60


def _quote(value: Any) -> str:
    """C{value} as C{repr} writes it, cut to L{QUOTE_LIMIT} characters."""
    text = repr(value)
    return text if len(text) <= QUOTE_LIMIT else text[: QUOTE_LIMIT - 3] + "..."


#: What identifies a document across loads: kind, namespace and name.
DocumentKey = tuple[str, str, str]


def _check_metadata(origin: Origin) -> None:
    """
    The API server's rules for any object's name and namespace: a
    namespace is a DNS label, a name a DNS subdomain (at most 253
    characters), and a Service's name a DNS-1035 label (it starts with a
    letter), since it becomes a DNS name of its own.
    """
    if not is_k8s_label(origin.namespace):
        raise _Invalid("metadata.namespace", f"{_quote(origin.namespace)} is not a namespace name")
    name = origin.name
    if len(name) > 253 or not _K8S_SUBDOMAIN.fullmatch(name):
        raise _Invalid("metadata.name", f"{_quote(name)} is not a valid {origin.kind} name")
    if origin.kind == "Service" and not (is_k8s_label(name) and name[0].isalpha()):
        raise _Invalid("metadata.name", f"{_quote(name)} is not a valid Service name")


@dataclass(frozen=True)
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


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class Endpoint:
    """
    A ServiceEntry endpoint (a C{WorkloadEntry} spec inline).

    @ivar address: an IP address; for C{resolution: DNS} or C{DNS_ROUND_ROBIN}
        it may also be a host name (lowercase, no trailing dot).
    @ivar ports: port name -> port number overrides.
    """

    address: str
    ports: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
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


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class EndpointSlice:
    """
    A C{discovery.k8s.io/v1} EndpointSlice, reduced to its ready addresses.

    @ivar hostnames: each ready endpoint's C{hostname} (a StatefulSet pod's
        name, say) -> its addresses: the per-pod names of a headless Service.
    """

    origin: Origin
    service_name: str
    addresses: tuple[str, ...] = ()
    hostnames: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class Entries:
    """
    Everything read from the entry files.

    @ivar notes: things worth a log line that are not errors (skipped kinds,
        missing paths).
    @ivar problems: the invalid documents (and unreadable files), each left
        out: one team's broken file never takes the others' entries down.
    @ivar missing: configured paths that do not exist; the server serves an
        empty mesh from them, C{meshdns check} calls them a mistake.
    """

    service_entries: tuple[ServiceEntry, ...] = ()
    services: tuple[Service, ...] = ()
    endpoint_slices: tuple[EndpointSlice, ...] = ()
    notes: tuple[str, ...] = ()
    sidecars: tuple[Sidecar, ...] = ()
    problems: tuple[Problem, ...] = ()
    missing: tuple[str, ...] = ()


@dataclass(frozen=True)
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


class _Invalid(Exception):
    """A field is wrong: C{args} are (field path, message)."""


class _Document:
    """
    Typed access to one YAML document, raising L{_Invalid} with the field path.
    """

    def __init__(self, raw: Mapping[str, Any], prefix: str = "") -> None:
        self.raw = raw
        self.prefix = prefix

    def _path(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def mapping(self, key: str) -> _Document:
        value = self.raw.get(key)
        if value is None:
            return _Document({}, self._path(key) + ".")
        if not isinstance(value, dict):
            raise _Invalid(self._path(key), f"expected a mapping, got {_quote(value)}")
        return _Document(value, self._path(key) + ".")

    def text(self, key: str, default: str = "") -> str:
        value = self.raw.get(key, default)
        if value is None:
            return default
        if not isinstance(value, str):
            raise _Invalid(self._path(key), f"expected a string, got {_quote(value)}")
        return value

    def items(self, key: str) -> Iterator[tuple[str, Any]]:
        """(path, item) for each item of the list at C{key} (absent = empty)."""
        value = self.raw.get(key)
        if value is None:
            return
        if not isinstance(value, list):
            raise _Invalid(self._path(key), f"expected a list, got {_quote(value)}")
        for index, item in enumerate(value):
            yield f"{self._path(key)}[{index}]", item

    def texts(self, key: str) -> tuple[str, ...]:
        result = []
        for path, item in self.items(key):
            if not isinstance(item, str):
                raise _Invalid(path, f"expected a string, got {_quote(item)}")
            result.append(item)
        return tuple(result)

    def string_map(self, key: str) -> dict[str, str]:
        section = self.mapping(key)
        result = {}
        for name, value in section.raw.items():
            if not isinstance(value, str | int | float | bool):
                raise _Invalid(section._path(str(name)), f"expected a string, got {_quote(value)}")
            result[str(name)] = str(value).lower() if isinstance(value, bool) else str(value)
        return result


def _ip(path: str, value: Any) -> str:
    """
    C{value} as an IP address in canonical form (as C{ipaddress} writes it).

    Addresses already in that form, nearly all of them, are recognised by a
    round trip through C{inet_pton} and C{inet_ntop}, twenty times faster
    than C{ipaddress} for IPv6 (a tenth of the build time of 100k entries);
    IPv6 with an embedded IPv4 part is left to C{ipaddress}, which writes
    it differently.
    """
    if isinstance(value, str):
        family = socket.AF_INET6 if ":" in value else socket.AF_INET
        if family == socket.AF_INET or "." not in value:
            try:
                if socket.inet_ntop(family, socket.inet_pton(family, value)) == value:
                    return value
            except (OSError, ValueError):
                pass
    try:
        return str(ipaddress.ip_address(value if isinstance(value, str) else ""))
    except ValueError:
        raise _Invalid(path, f"{_quote(value)} is not an IP address") from None


def is_ip(value: str) -> bool:
    """Whether C{value} is an IP address (an endpoint may also be a host name)."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _port_number(path: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise _Invalid(path, f"{_quote(value)} is not a port number (1-65535)")
    return value


def _host(path: str, value: Any) -> str:
    """A ServiceEntry host: a DNS name, optionally with a leading C{*.} label."""
    if not isinstance(value, str) or not value.strip():
        raise _Invalid(path, "empty host")
    host = value.strip().rstrip(".").lower()
    labels = host.split(".")
    if "*" in host and (labels[0] != "*" or "*" in ".".join(labels[1:]) or len(labels) < 2):
        raise _Invalid(
            path, f"{_quote(value)}: a wildcard must be the whole first label, as in *.example.com"
        )
    if len(host) > 253 or any(
        len(label) > 63 or not (label == "*" or _HOST_LABEL.fullmatch(label)) for label in labels
    ):
        raise _Invalid(path, f"{_quote(value)} is not a valid host name")
    return host


def _exact_host(path: str, value: Any, what: str) -> str:
    """A host name that is not a wildcard (C{what} says what it is, for the message)."""
    host = _host(path, value)
    if host.startswith("*."):
        raise _Invalid(path, f"{_quote(host)}: {what} cannot be a wildcard")
    return host


def _ports(doc: _Document) -> tuple[Port, ...]:
    ports = []
    for path, raw in doc.items("ports"):
        if not isinstance(raw, dict):
            raise _Invalid(path, f"expected a mapping, got {_quote(raw)}")
        port = _Document(raw, path + ".")
        number = _port_number(path + ".number", raw.get("number", raw.get("port")))
        target = raw.get("targetPort")
        ports.append(
            Port(
                number=number,
                name=port.text("name"),
                protocol=port.text("protocol", "TCP").upper() or "TCP",
                target_port=(
                    _port_number(path + ".targetPort", target) if isinstance(target, int) else None
                ),
            )
        )
    return tuple(ports)


#: The port protocols Istio knows (case does not matter); an empty one means
#: "sniff it", which Istio accepts too.
ISTIO_PROTOCOLS = frozenset(
    {"TCP", "UDP", "HTTP", "HTTP2", "HTTPS", "HTTP_PROXY", "GRPC", "GRPC-WEB", "TLS"}
    | {"MONGO", "MYSQL", "REDIS", "THRIFT"}
)
#: Protocols whose connections carry the host they are for (Host header or
#: SNI), so that several hosts of one entry can share a port.
_HOST_AWARE_PROTOCOLS = frozenset(
    {"HTTP", "HTTP2", "HTTPS", "HTTP_PROXY", "GRPC", "GRPC-WEB", "TLS"}
)


def _check_export_to(path: str, values: tuple[str, ...]) -> None:
    """Istio's C{exportTo} rules: C{.}, C{*}, C{~} or namespace names, no repeats."""
    for index, value in enumerate(values):
        if value not in (".", "*", "~") and not is_k8s_label(value):
            raise _Invalid(f"{path}[{index}]", f"{_quote(value)} is not ., *, ~ or a namespace")
        if value in values[:index]:
            raise _Invalid(f"{path}[{index}]", f"{_quote(value)} is repeated")
    if len(values) > 1 and ("~" in values or "*" in values):
        raise _Invalid(path, "~ and * cannot be combined with other values")


def _check_service_entry(spec: _Document, entry: ServiceEntry) -> list[str]:
    """
    The rules of Istio's ServiceEntry validation for the fields meshdns
    reads, so that meshdns refuses what C{kubectl apply} would refuse and
    nothing else: port numbers and names are unique, protocols known; CIDR
    addresses only with C{NONE} or C{STATIC}; endpoints' port names are the
    entry's; a unix socket endpoint has no ports, and its entry one port;
    C{DNS}/C{DNS_ROUND_ROBIN} without endpoints need exact hosts, and
    C{DNS_ROUND_ROBIN} at most one endpoint; C{workloadSelector} and
    C{endpoints} exclude each other.

    @return: warnings: several hosts sharing a port that carries no host
        name (plain TCP) with a resolution other than C{NONE}, which Istio
        warns about (every connection goes to one backend), but serves.
    """
    names: dict[str, int] = {}
    numbers: dict[int, int] = {}
    for index, port in enumerate(entry.ports):
        path = f"spec.ports[{index}]"
        if port.number in numbers:
            raise _Invalid(f"{path}.number", f"port {port.number} is already defined")
        numbers[port.number] = index
        if port.name:
            if port.name in names:
                raise _Invalid(f"{path}.name", f"port name {_quote(port.name)} is already defined")
            names[port.name] = index
        if port.protocol not in ISTIO_PROTOCOLS:
            raise _Invalid(f"{path}.protocol", f"{_quote(port.protocol)} is not an Istio protocol")
    if entry.networks and entry.resolution not in ("NONE", "STATIC"):
        raise _Invalid("spec.addresses", "CIDR addresses need resolution NONE or STATIC")
    if spec.raw.get("workloadSelector") is not None and entry.endpoints:
        raise _Invalid("spec.endpoints", "endpoints and workloadSelector cannot both be set")
    unix = False
    for index, endpoint in enumerate(entry.endpoints):
        path = f"spec.endpoints[{index}]"
        if endpoint.address.startswith(UNIX_PREFIX):
            unix = True
            if endpoint.ports:
                raise _Invalid(f"{path}.ports", "a unix:// endpoint has no ports")
        for name in endpoint.ports:
            if name not in names:
                raise _Invalid(f"{path}.ports.{name}", "not a port name of the entry")
    if unix and len(entry.ports) != 1:
        raise _Invalid("spec.ports", "unix:// endpoints need exactly one port")
    if entry.resolution in DNS_RESOLUTIONS and not entry.endpoints:
        for index, host in enumerate(entry.hosts):
            if host.startswith("*."):
                raise _Invalid(
                    f"spec.hosts[{index}]",
                    f"resolution {entry.resolution} without endpoints needs exact hosts",
                )
    if entry.resolution == "DNS_ROUND_ROBIN" and len(entry.endpoints) > 1:
        raise _Invalid("spec.endpoints", "resolution DNS_ROUND_ROBIN takes at most one endpoint")
    if entry.resolution != "NONE" and len(entry.hosts) > 1:
        for port in entry.ports:
            if port.protocol not in _HOST_AWARE_PROTOCOLS:
                return [
                    f"{entry.origin}: several hosts share port {port.number} ({port.protocol}), "
                    "which does not say which host a connection is for: one backend gets them all"
                ]
    return []


def _service_entry(doc: _Document, origin: Origin) -> tuple[ServiceEntry, list[str]]:
    """The entry, and the warnings of L{_check_service_entry}."""
    spec = doc.mapping("spec")
    hosts = []
    for path, raw in spec.items("hosts"):
        host = _host(path, raw)
        if host in hosts:
            raise _Invalid(path, f"duplicate host {_quote(host)}")
        hosts.append(host)
    if not hosts:
        raise _Invalid("spec.hosts", "a ServiceEntry needs at least one host")
    addresses, networks = [], []
    for path, raw in spec.items("addresses"):
        if isinstance(raw, str) and "/" in raw:
            try:
                network = ipaddress.ip_network(raw, strict=False)
            except ValueError:
                raise _Invalid(path, f"{_quote(raw)} is not an IP address or CIDR") from None
            if network.num_addresses == 1:
                addresses.append(str(network.network_address))
            else:
                networks.append(str(network))
        else:
            addresses.append(_ip(path, raw))
    resolution = spec.text("resolution", "NONE").upper() or "NONE"
    if resolution not in RESOLUTIONS:
        raise _Invalid(
            "spec.resolution", f"{_quote(resolution)} is not one of {sorted(RESOLUTIONS)}"
        )
    endpoints = []
    for path, raw in spec.items("endpoints"):
        if not isinstance(raw, dict):
            raise _Invalid(path, f"expected a mapping, got {_quote(raw)}")
        endpoint = _Document(raw, path + ".")
        address = endpoint.text("address")
        if address.startswith(UNIX_PREFIX):
            if resolution not in ("STATIC", "NONE") or len(address) == len(UNIX_PREFIX):
                raise _Invalid(
                    path + ".address", "a unix:// endpoint needs a path and resolution STATIC"
                )
        elif address and resolution in DNS_RESOLUTIONS and not is_ip(address):
            address = _exact_host(path + ".address", address, "an endpoint")
        elif address:
            address = _ip(path + ".address", address)
        port_map = {}
        for name, number in endpoint.mapping("ports").raw.items():
            port_map[str(name)] = _port_number(f"{path}.ports.{name}", number)
        if address:
            endpoints.append(Endpoint(address, port_map))
    status: dict[str, list[str]] = {}
    for path, raw in doc.mapping("status").items("addresses"):
        if not isinstance(raw, dict):
            raise _Invalid(path, f"expected a mapping, got {_quote(raw)}")
        item = _Document(raw, path + ".")
        host = item.text("host").strip().rstrip(".").lower()
        for target in [host] if host else hosts:
            status.setdefault(target, []).append(_ip(path + ".value", raw.get("value")))
    export_to = spec.texts("exportTo")
    _check_export_to("spec.exportTo", export_to)
    entry = ServiceEntry(
        origin=origin,
        hosts=tuple(hosts),
        addresses=tuple(dict.fromkeys(addresses)),
        ports=_ports(spec),
        resolution=resolution,
        endpoints=tuple(endpoints),
        export_to=export_to,
        labels=doc.mapping("metadata").string_map("labels"),
        networks=tuple(dict.fromkeys(networks)),
        status_addresses={h: tuple(dict.fromkeys(a)) for h, a in status.items()},
    )
    return entry, _check_service_entry(spec, entry)


def _check_cluster_ips(spec: _Document, given: list[str], addresses: list[str]) -> None:
    """
    The API server's rules for a Service's addresses: C{clusterIP} is
    C{clusterIPs[0]} when both are given; at most two, of different
    families (dual stack), or a lone C{None}; C{ipFamilies} name those
    families in the same order.
    """
    single = spec.text("clusterIP")
    if single and spec.raw.get("clusterIPs") and given[0] != single:
        raise _Invalid("spec.clusterIPs[0]", f"must equal clusterIP {_quote(single)}")
    if len(given) > 2 or ("None" in given and len(given) > 1):
        raise _Invalid("spec.clusterIPs", "at most two addresses (dual stack), or one None")
    families = ["IPv6" if ":" in a else "IPv4" for a in addresses]
    if len(families) == 2 and families[0] == families[1]:
        raise _Invalid("spec.clusterIPs", "two addresses must be of different families")
    declared = spec.texts("ipFamilies")
    for index, family in enumerate(declared):
        if family not in ("IPv4", "IPv6"):
            raise _Invalid(f"spec.ipFamilies[{index}]", f"{_quote(family)} is not IPv4 or IPv6")
    if declared and families and list(declared[: len(families)]) != families:
        raise _Invalid("spec.ipFamilies", "must list the families of clusterIPs, in order")


def _service(doc: _Document, origin: Origin) -> Service:
    spec = doc.mapping("spec")
    export_to = tuple(
        part.strip()
        for part in doc.mapping("metadata")
        .string_map("annotations")
        .get(EXPORT_TO_ANNOTATION, "")
        .split(",")
        if part.strip()
    )
    _check_export_to(f"metadata.annotations.{EXPORT_TO_ANNOTATION}", export_to)
    service_type = spec.text("type", "ClusterIP") or "ClusterIP"
    if service_type not in SERVICE_TYPES:
        raise _Invalid("spec.type", f"{_quote(service_type)} is not one of {sorted(SERVICE_TYPES)}")
    if service_type == "ExternalName":
        # Kubernetes gives such a Service no cluster IP: whatever the
        # document says about one is not looked at.
        external_name = spec.text("externalName")
        if not external_name.strip():
            raise _Invalid("spec.externalName", "a Service of type ExternalName needs one")
        return Service(
            origin=origin,
            ports=_ports(spec),
            type=service_type,
            external_name=_exact_host("spec.externalName", external_name, "an externalName"),
            export_to=export_to,
        )
    cluster_ips = list(spec.texts("clusterIPs")) or [spec.text("clusterIP")]
    addresses = []
    for index, raw in enumerate(cluster_ips):
        if raw in ("", "None"):
            continue
        path = f"spec.clusterIPs[{index}]" if spec.raw.get("clusterIPs") else "spec.clusterIP"
        addresses.append(_ip(path, raw))
    _check_cluster_ips(spec, cluster_ips, addresses)
    return Service(
        origin=origin,
        cluster_ips=tuple(dict.fromkeys(addresses)),
        ports=_ports(spec),
        type=service_type,
        unassigned=cluster_ips == [""],
        export_to=export_to,
    )


def _endpoint_slice(doc: _Document, origin: Origin) -> EndpointSlice | None:
    """The slice, or L{None} for one of C{addressType: FQDN} (skipped)."""
    address_type = doc.text("addressType", "IPv4") or "IPv4"
    if address_type not in ADDRESS_TYPES:
        raise _Invalid(
            "addressType", f"{_quote(address_type)} is not one of {sorted(ADDRESS_TYPES)}"
        )
    if address_type == "FQDN":
        return None
    labels = doc.mapping("metadata").string_map("labels")
    addresses = []
    hostnames: dict[str, list[str]] = {}
    for path, raw in doc.items("endpoints"):
        if not isinstance(raw, dict):
            raise _Invalid(path, f"expected a mapping, got {_quote(raw)}")
        endpoint = _Document(raw, path + ".")
        # Kubernetes DNS answers ready endpoints only; no condition is ready.
        ready = endpoint.mapping("conditions").raw.get("ready")
        if ready is False:
            continue
        own = [_ip(address_path, address) for address_path, address in endpoint.items("addresses")]
        addresses.extend(own)
        hostname = endpoint.text("hostname")
        if hostname:
            if not is_k8s_label(hostname):
                raise _Invalid(path + ".hostname", f"{_quote(hostname)} is not a DNS label")
            hostnames.setdefault(hostname, []).extend(own)
    return EndpointSlice(
        origin=origin,
        service_name=labels.get(SERVICE_NAME_LABEL, ""),
        addresses=tuple(dict.fromkeys(addresses)),
        hostnames={h: tuple(dict.fromkeys(a)) for h, a in hostnames.items()},
    )


def _sidecar(doc: _Document, origin: Origin) -> Sidecar:
    spec = doc.mapping("spec")
    hosts = []
    for path, raw in spec.items("egress"):
        if not isinstance(raw, dict):
            raise _Invalid(path, f"expected a mapping, got {_quote(raw)}")
        egress = _Document(raw, path + ".")
        for host_path, host in egress.items("hosts"):
            if not isinstance(host, str) or host.count("/") != 1 or host.endswith("/"):
                raise _Invalid(host_path, f"{_quote(host)} is not namespace/dnsName")
            hosts.append(host.lower())
        if not raw.get("hosts"):
            raise _Invalid(path + ".hosts", "an egress listener needs at least one host")
    return Sidecar(
        origin=origin,
        egress_hosts=tuple(hosts),
        selects_workloads=spec.raw.get("workloadSelector") is not None,
    )


class _Collector:
    """Accumulates model objects, notes and problems over many files."""

    def __init__(self, max_file_size: int = yamltext.MAX_FILE_SIZE) -> None:
        self.max_file_size = max_file_size
        self.service_entries: list[ServiceEntry] = []
        self.services: list[Service] = []
        self.endpoint_slices: list[EndpointSlice] = []
        self.sidecars: list[Sidecar] = []
        self.notes: list[str] = []
        self.problems: list[Problem] = []
        self.missing: list[str] = []

    def document(self, raw: Any, file: str, index: int, prefix: str = "") -> None:
        """Read one document (or, recursively, the items of a C{kind: List})."""
        if raw is None:
            return
        if not isinstance(raw, dict):
            self.problems.append(Problem(file, index, prefix or None, "expected a mapping"))
            return
        doc = _Document(raw, prefix)
        key = _key(raw)
        try:
            kind = doc.text("kind")
            api = doc.text("apiVersion")
            if kind == "List" or kind.endswith("List") and isinstance(raw.get("items"), list):
                for path, item in doc.items("items"):
                    self.document(item, file, index, path + ".")
                return
            metadata = doc.mapping("metadata")
            origin = Origin(
                file, index, kind, metadata.text("namespace") or "default", metadata.text("name")
            )
            known = (
                (kind == "ServiceEntry" and api in SERVICE_ENTRY_APIS)
                or (kind == "Sidecar" and api in SIDECAR_APIS)
                or (kind == "Service" and api == "v1")
                or (kind == "EndpointSlice" and api == "discovery.k8s.io/v1")
            )
            if known:
                # Names become DNS names and keys: an empty or odd one would
                # put a bogus name (even the root) in the table.
                _check_metadata(origin)
            if kind == "ServiceEntry" and api in SERVICE_ENTRY_APIS:
                entry, warnings = _service_entry(doc, origin)
                self.service_entries.append(entry)
                self.notes.extend(f"{file}: document {index}: {w}" for w in warnings)
            elif kind == "Service" and api == "v1":
                self.services.append(_service(doc, origin))
            elif kind == "Sidecar" and api in SIDECAR_APIS:
                self.sidecars.append(_sidecar(doc, origin))
            elif kind == "EndpointSlice" and api == "discovery.k8s.io/v1":
                endpoint_slice = _endpoint_slice(doc, origin)
                if endpoint_slice is None:
                    self.notes.append(
                        f"{file}: document {index}: skipped EndpointSlice {origin.name} "
                        "(addressType FQDN: host names, not addresses)"
                    )
                else:
                    self.endpoint_slices.append(endpoint_slice)
            else:
                self.notes.append(f"{file}: document {index}: skipped {api or '?'} {kind or '?'}")
        except _Invalid as e:
            path, message = e.args
            if prefix and not path.startswith(prefix):
                path = prefix + path
            self.problems.append(Problem(file, index, path, message, key))

    def text(self, text: str, file: str) -> None:
        """Read every document of one file's text."""
        index = 0
        try:
            for index, raw in enumerate(yamltext.load_all(text)):  # noqa: B007
                self.document(raw, file, index)
        except yaml.YAMLError as e:
            self.problems.append(Problem(file, None, None, yamltext.describe(e, text)))

    def path(self, path: str) -> None:
        """Read a file, or every entry file directly inside a folder."""
        if os.path.isdir(path):
            for name in sorted(os.listdir(path)):
                child = os.path.join(path, name)
                if name.startswith(".") or not name.endswith(ENTRY_FILE_SUFFIXES):
                    continue
                if os.path.isfile(child):
                    self.file(child)
        elif os.path.exists(path):
            self.file(path)
        else:
            self.missing.append(path)

    def file(self, path: str) -> None:
        try:
            text = yamltext.read_text(path, self.max_file_size)
        except OSError as e:
            self.problems.append(Problem(path, None, None, f"cannot read: {e.strerror}"))
            return
        except ValueError as e:
            self.problems.append(Problem(path, None, None, str(e)))
            return
        self.text(text, path)

    def result(self) -> Entries:
        return Entries(
            tuple(self.service_entries),
            tuple(self.services),
            tuple(self.endpoint_slices),
            tuple(self.notes),
            tuple(self.sidecars),
            tuple(self.problems),
            tuple(self.missing),
        )


def _key(raw: Mapping[str, Any]) -> DocumentKey | None:
    """
    A document's kind, namespace and name, read leniently (before its fields
    are checked), or L{None} when they are not all plain strings.
    """
    metadata = raw.get("metadata")
    if not isinstance(metadata, dict):
        return None
    kind, namespace, name = (
        raw.get("kind"),
        metadata.get("namespace") or "default",
        metadata.get("name"),
    )
    if not all(isinstance(part, str) for part in (kind, namespace, name)):
        return None
    return (kind, namespace, name)


def load_entries(paths: Iterable[str], max_file_size: int = yamltext.MAX_FILE_SIZE) -> Entries:
    """
    Read every entry file and folder, leaving out what is invalid.

    Every invalid document (and unreadable or unparsable file) is one
    L{Problem} in the result, and everything else is read: in a folder of
    many teams' files, one team's mistake must not take the rest down. A path
    that does not exist contributes nothing (it is one of C{missing}):
    deleting every entry file is a valid, empty mesh.

    @param max_file_size: bytes; a larger file is one error, and is not read.
    """
    collector = _Collector(max_file_size)
    for path in paths:
        collector.path(path)
    return collector.result()


def parse_entries(text: str, file: str = "<string>") -> Entries:
    """
    Read the documents of one YAML text, strictly (for tests and the
    embedding API, whose callers want to hear about their own mistakes).

    @raise EntriesError: listing every problem, if any document is invalid.
    """
    collector = _Collector()
    collector.text(text, file)
    if collector.problems:
        raise EntriesError(collector.problems)
    return collector.result()
