# -*- test-case-name: tests.unit.mesh.test_entries -*-
"""
YAML documents -> the frozen objects of L{meshdns_plugin.mesh.model}: Istio
C{ServiceEntry} and C{Sidecar}, Kubernetes C{Service} and C{EndpointSlice}.

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
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from meshdns_plugin.mesh import yamltext
from meshdns_plugin.mesh.documents import (
    Document,
    Invalid,
    check_metadata,
    exact_host,
    is_ip,
    is_k8s_label,
    port_number,
    quote,
    read_host,
    read_ip,
)
from meshdns_plugin.mesh.model import (
    DocumentKey,
    Endpoint,
    EndpointSlice,
    Entries,
    EntriesError,
    Origin,
    Pod,
    Port,
    Problem,
    Service,
    ServiceEntry,
    Sidecar,
)

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
ENTRY_FILE_SUFFIXES = (".yaml", ".yml", ".json")
DNS_RESOLUTIONS = frozenset({"DNS", "DNS_ROUND_ROBIN"})
# A host label: ASCII only, so a name is the same bytes in the table and on the wire.
def _ports(doc: Document) -> tuple[Port, ...]:
    ports = []
    for path, raw in doc.items("ports"):
        if not isinstance(raw, dict):
            raise Invalid(path, f"expected a mapping, got {quote(raw)}")
        port = Document(raw, path + ".")
        number = port_number(path + ".number", raw.get("number", raw.get("port")))
        target = raw.get("targetPort")
        ports.append(
            Port(
                number=number,
                name=port.text("name"),
                protocol=port.text("protocol", "TCP").upper() or "TCP",
                target_port=(
                    port_number(path + ".targetPort", target) if isinstance(target, int) else None
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
            raise Invalid(f"{path}[{index}]", f"{quote(value)} is not ., *, ~ or a namespace")
        if value in values[:index]:
            raise Invalid(f"{path}[{index}]", f"{quote(value)} is repeated")
    if len(values) > 1 and ("~" in values or "*" in values):
        raise Invalid(path, "~ and * cannot be combined with other values")


def _check_service_entry(spec: Document, entry: ServiceEntry) -> list[str]:
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
            raise Invalid(f"{path}.number", f"port {port.number} is already defined")
        numbers[port.number] = index
        if port.name:
            if port.name in names:
                raise Invalid(f"{path}.name", f"port name {quote(port.name)} is already defined")
            names[port.name] = index
        if port.protocol not in ISTIO_PROTOCOLS:
            raise Invalid(f"{path}.protocol", f"{quote(port.protocol)} is not an Istio protocol")
    if entry.networks and entry.resolution not in ("NONE", "STATIC"):
        raise Invalid("spec.addresses", "CIDR addresses need resolution NONE or STATIC")
    if spec.raw.get("workloadSelector") is not None and entry.endpoints:
        raise Invalid("spec.endpoints", "endpoints and workloadSelector cannot both be set")
    unix = False
    for index, endpoint in enumerate(entry.endpoints):
        path = f"spec.endpoints[{index}]"
        if endpoint.address.startswith(UNIX_PREFIX):
            unix = True
            if endpoint.ports:
                raise Invalid(f"{path}.ports", "a unix:// endpoint has no ports")
        for name in endpoint.ports:
            if name not in names:
                raise Invalid(f"{path}.ports.{name}", "not a port name of the entry")
    if unix and len(entry.ports) != 1:
        raise Invalid("spec.ports", "unix:// endpoints need exactly one port")
    if entry.resolution in DNS_RESOLUTIONS and not entry.endpoints:
        for index, host in enumerate(entry.hosts):
            if host.startswith("*."):
                raise Invalid(
                    f"spec.hosts[{index}]",
                    f"resolution {entry.resolution} without endpoints needs exact hosts",
                )
    if entry.resolution == "DNS_ROUND_ROBIN" and len(entry.endpoints) > 1:
        raise Invalid("spec.endpoints", "resolution DNS_ROUND_ROBIN takes at most one endpoint")
    if entry.resolution != "NONE" and len(entry.hosts) > 1:
        for port in entry.ports:
            if port.protocol not in _HOST_AWARE_PROTOCOLS:
                return [
                    f"{entry.origin}: several hosts share port {port.number} ({port.protocol}), "
                    "which does not say which host a connection is for: one backend gets them all"
                ]
    return []


def _service_entry(doc: Document, origin: Origin) -> tuple[ServiceEntry, list[str]]:
    """The entry, and the warnings of L{_check_service_entry}."""
    spec = doc.mapping("spec")
    hosts = []
    for path, raw in spec.items("hosts"):
        host = read_host(path, raw)
        if host in hosts:
            raise Invalid(path, f"duplicate host {quote(host)}")
        hosts.append(host)
    if not hosts:
        raise Invalid("spec.hosts", "a ServiceEntry needs at least one host")
    addresses, networks = [], []
    for path, raw in spec.items("addresses"):
        if isinstance(raw, str) and "/" in raw:
            try:
                network = ipaddress.ip_network(raw, strict=False)
            except ValueError:
                raise Invalid(path, f"{quote(raw)} is not an IP address or CIDR") from None
            if network.num_addresses == 1:
                addresses.append(str(network.network_address))
            else:
                networks.append(str(network))
        else:
            addresses.append(read_ip(path, raw))
    resolution = spec.text("resolution", "NONE").upper() or "NONE"
    if resolution not in RESOLUTIONS:
        raise Invalid(
            "spec.resolution", f"{quote(resolution)} is not one of {sorted(RESOLUTIONS)}"
        )
    endpoints = []
    for path, raw in spec.items("endpoints"):
        if not isinstance(raw, dict):
            raise Invalid(path, f"expected a mapping, got {quote(raw)}")
        endpoint = Document(raw, path + ".")
        address = endpoint.text("address")
        if address.startswith(UNIX_PREFIX):
            if resolution not in ("STATIC", "NONE") or len(address) == len(UNIX_PREFIX):
                raise Invalid(
                    path + ".address", "a unix:// endpoint needs a path and resolution STATIC"
                )
        elif address and resolution in DNS_RESOLUTIONS and not is_ip(address):
            address = exact_host(path + ".address", address, "an endpoint")
        elif address:
            address = read_ip(path + ".address", address)
        port_map = {}
        for name, number in endpoint.mapping("ports").raw.items():
            port_map[str(name)] = port_number(f"{path}.ports.{name}", number)
        if address:
            endpoints.append(Endpoint(address, port_map))
    status: dict[str, list[str]] = {}
    for path, raw in doc.mapping("status").items("addresses"):
        if not isinstance(raw, dict):
            raise Invalid(path, f"expected a mapping, got {quote(raw)}")
        item = Document(raw, path + ".")
        host = item.text("host").strip().rstrip(".").lower()
        for target in [host] if host else hosts:
            status.setdefault(target, []).append(read_ip(path + ".value", raw.get("value")))
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


def _service(doc: Document, origin: Origin) -> Service:
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
        raise Invalid("spec.type", f"{quote(service_type)} is not one of {sorted(SERVICE_TYPES)}")
    if service_type == "ExternalName":
        # Kubernetes gives such a Service no cluster IP: whatever the
        # document says about one is not looked at.
        external_name = spec.text("externalName")
        if not external_name.strip():
            raise Invalid("spec.externalName", "a Service of type ExternalName needs one")
        return Service(
            origin=origin,
            ports=_ports(spec),
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
        ports=_ports(spec),
        type=service_type,
        unassigned=cluster_ips == [""],
        export_to=export_to,
    )


def _endpoint_slice(doc: Document, origin: Origin) -> EndpointSlice | None:
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


#: Pod phases whose addresses are released: a finished pod's address may
#: already be another pod's.
_FINISHED_PHASES = ("Succeeded", "Failed")


def _pod(raw: Mapping[str, Any], file: str, index: int) -> Pod | None:
    """
    A Pod document's namespace and addresses, read leniently: anything odd
    (or a host-network pod, whose address is its node's, or a finished one)
    makes it no client rather than a problem, since meshdns reads Pods for
    nothing else.
    """
    metadata, spec, status = (raw.get(k) for k in ("metadata", "spec", "status"))
    if not isinstance(metadata, dict) or not isinstance(status, dict):
        return None
    namespace, name = metadata.get("namespace") or "default", metadata.get("name")
    if not isinstance(namespace, str) or not is_k8s_label(namespace) or not isinstance(name, str):
        return None
    if isinstance(spec, dict) and spec.get("hostNetwork") is True:
        return None
    if status.get("phase") in _FINISHED_PHASES:
        return None
    found = []
    pod_ips = status.get("podIPs")
    for item in pod_ips if isinstance(pod_ips, list) else ():
        if isinstance(item, dict):
            found.append(item.get("ip"))
    found.append(status.get("podIP"))
    addresses = []
    for value in found:
        try:
            addresses.append(read_ip("", value))
        except Invalid:
            continue
    if not addresses:
        return None
    return Pod(Origin(file, index, "Pod", namespace, name), tuple(dict.fromkeys(addresses)))


def _sidecar(doc: Document, origin: Origin) -> Sidecar:
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
        self.pods: list[Pod] = []

    def document(self, raw: Any, file: str, index: int, prefix: str = "") -> None:
        """Read one document (or, recursively, the items of a C{kind: List})."""
        if raw is None:
            return
        if not isinstance(raw, dict):
            self.problems.append(Problem(file, index, prefix or None, "expected a mapping"))
            return
        doc = Document(raw, prefix)
        key = _key(raw)
        try:
            kind = doc.text("kind")
            api = doc.text("apiVersion")
            if kind == "List" or kind.endswith("List") and isinstance(raw.get("items"), list):
                for path, item in doc.items("items"):
                    self.document(item, file, index, path + ".")
                return
            if kind == "Pod" and api == "v1":
                pod = _pod(raw, file, index)
                if pod is not None:
                    self.pods.append(pod)
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
                check_metadata(origin)
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
        except Invalid as e:
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
            tuple(self.pods),
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
