# -*- test-case-name: tests.unit.mesh.test_entries,tests.unit.mesh.test_entries_validation -*-
"""
Istio's C{ServiceEntry}: read and validated as Istio's webhook does, for the
fields meshdns reads.
"""

from __future__ import annotations

import ipaddress

from meshdns_plugin.mesh.documents import (
    Document,
    Invalid,
    check_export_to,
    exact_host,
    is_ip,
    is_partial_wildcard,
    port_number,
    quote,
    read_host,
    read_ip,
    read_ports,
)
from meshdns_plugin.mesh.model import Endpoint, Origin, ServiceEntry

APIS = frozenset(
    f"networking.istio.io/{version}" for version in ("v1", "v1beta1", "v1alpha3")
)
RESOLUTIONS = frozenset({"NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN", "DYNAMIC_DNS"})
#: An endpoint that is a Unix domain socket (C{unix:///var/run/socket}).
UNIX_PREFIX = "unix://"
DNS_RESOLUTIONS = frozenset({"DNS", "DNS_ROUND_ROBIN"})

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


def _check_service_entry(spec: Document, entry: ServiceEntry) -> list[str]:
    """
    The rules of Istio's ServiceEntry validation for the fields meshdns
    reads, so that meshdns refuses what C{kubectl apply} would refuse and
    nothing else: port numbers and names are unique, protocols known; CIDR
    addresses only with C{NONE} or C{STATIC}; no endpoints with C{NONE}
    (the CRD's "NONE mode cannot set endpoints"); endpoints' port names are the
    entry's; a unix socket endpoint has no ports, and its entry one port;
    C{DNS}/C{DNS_ROUND_ROBIN} without endpoints need exact hosts, and
    C{DNS_ROUND_ROBIN} at most one endpoint; C{workloadSelector} and
    C{endpoints} exclude each other.

    @return: warnings: a partial wildcard host (C{*x.example.com}) outside
        C{DYNAMIC_DNS}, as Istio's C{ValidateServiceEntry} warns; several
        hosts sharing a port that carries no host
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
    if entry.resolution == "NONE" and spec.raw.get("endpoints"):
        raise Invalid("spec.endpoints", "resolution NONE cannot set endpoints")
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
            if host.startswith("*"):
                raise Invalid(
                    f"spec.hosts[{index}]",
                    f"resolution {entry.resolution} without endpoints needs exact hosts",
                )
    if entry.resolution == "DNS_ROUND_ROBIN" and len(entry.endpoints) > 1:
        raise Invalid("spec.endpoints", "resolution DNS_ROUND_ROBIN takes at most one endpoint")
    warnings = []
    if entry.resolution != "DYNAMIC_DNS":
        warnings.extend(
            f"{entry.origin}: spec.hosts[{index}] {quote(host)} is a partial wildcard, which "
            "Istio accepts with a warning and its DNS proxy never answers: not answered here"
            for index, host in enumerate(entry.hosts)
            if is_partial_wildcard(host)
        )
    if entry.resolution != "NONE" and len(entry.hosts) > 1:
        for port in entry.ports:
            if port.protocol not in _HOST_AWARE_PROTOCOLS:
                warnings.append(
                    f"{entry.origin}: several hosts share port {port.number} ({port.protocol}), "
                    "which does not say which host a connection is for: one backend gets them all"
                )
                break
    return warnings


def read(doc: Document, origin: Origin) -> tuple[ServiceEntry, list[str]]:
    """
    The entry, and its warnings: those of L{_check_service_entry}, and the
    C{status.addresses} of a C{resolution: NONE} entry, which are dropped.
    """
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
            if resolution != "STATIC" or len(address) == len(UNIX_PREFIX):
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
    warnings = []
    if resolution == "NONE" and status:
        # Istio's allocator allocates nothing for NONE and its conversion
        # reads status addresses only where it would allocate
        # (ShouldV2AutoAllocateIP), so a proxy never routes these.
        warnings.append(
            f"{origin}: status.addresses of a resolution NONE entry are ignored, "
            "as Istio ignores and clears them"
        )
        status = {}
    export_to = spec.texts("exportTo")
    check_export_to("spec.exportTo", export_to, origin.namespace)
    entry = ServiceEntry(
        origin=origin,
        hosts=tuple(hosts),
        addresses=tuple(dict.fromkeys(addresses)),
        ports=read_ports(spec),
        resolution=resolution,
        endpoints=tuple(endpoints),
        export_to=export_to,
        labels=doc.mapping("metadata").string_map("labels"),
        networks=tuple(dict.fromkeys(networks)),
        status_addresses={h: tuple(dict.fromkeys(a)) for h, a in status.items()},
    )
    return entry, [*warnings, *_check_service_entry(spec, entry)]
