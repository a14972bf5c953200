# -*- test-case-name: tests.unit.test_kubeapi -*-
"""
What the test Kubernetes API server (L{tests.support.kubeapi}) serves: the
resource types meshdns reads, as the real server's discovery describes them;
the server-side table rows C{kubectl get} asks for; and sample objects shaped
as the API server stores them (server-filled fields included), so tests feed
meshdns what a real cluster would hand it.
"""

from __future__ import annotations

import calendar
import time
from dataclasses import dataclass
from typing import Any

#: The verbs the real server lists for Services, Pods, EndpointSlices and Istio's CRDs.
VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
ISTIO_GROUP = "networking.istio.io"


@dataclass(frozen=True)
class ResourceType:
    """
    One served resource, as a discovery C{APIResourceList} entry names it.

    @ivar group: The API group; C{""} is the core group under C{/api}.
    @ivar versions: The versions served, the preferred (storage) one first.
    @ivar custom: A CustomResourceDefinition's resource: its list items keep
        C{kind} and C{apiVersion}, as the real server's unstructured lists do
        (built-in types' items carry neither).
    """

    group: str
    versions: tuple[str, ...]
    plural: str
    singular: str
    kind: str
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    custom: bool = False

    def api_version(self, version: str) -> str:
        return f"{self.group}/{version}" if self.group else version

    def prefix(self, version: str) -> str:
        """The path the group version is served under (C{/api/v1}, C{/apis/g/v})."""
        return f"/apis/{self.group}/{version}" if self.group else f"/api/{version}"

    def discovery(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": self.plural, "singularName": self.singular, "namespaced": True,
            "kind": self.kind, "verbs": list(VERBS),
        }
        if self.short_names:
            entry["shortNames"] = list(self.short_names)
        if self.categories:
            entry["categories"] = list(self.categories)
        return entry


def resource_types(istio_versions: tuple[str, ...] = ()) -> tuple[ResourceType, ...]:
    """The served types; Istio's two CRDs only when C{istio_versions} names versions."""
    types = [
        ResourceType("", ("v1",), "services", "service", "Service", ("svc",), ("all",)),
        ResourceType("", ("v1",), "pods", "pod", "Pod", ("po",), ("all",)),
        ResourceType("discovery.k8s.io", ("v1",), "endpointslices", "endpointslice",
                     "EndpointSlice"),
    ]
    if istio_versions:
        categories = ("istio-io", "networking-istio-io")
        types += [
            ResourceType(ISTIO_GROUP, istio_versions, "serviceentries", "serviceentry",
                         "ServiceEntry", ("se",), categories, custom=True),
            ResourceType(ISTIO_GROUP, istio_versions, "sidecars", "sidecar", "Sidecar",
                         (), categories, custom=True),
        ]
    return tuple(types)


def human_age(seconds: float) -> str:
    """An age as the server's table cells write it (apimachinery's C{HumanDuration})."""
    s = int(seconds)
    if s < 120:
        return f"{max(s, 0)}s"
    minutes, hours = s // 60, s // 3600
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 8 * 24 and hours % 24:
        return f"{hours // 24}d{hours % 24}h"
    return f"{hours // 24}d"


def _age(obj: dict[str, Any]) -> str:
    created = time.strptime(obj["metadata"]["creationTimestamp"], "%Y-%m-%dT%H:%M:%SZ")
    return human_age(time.time() - calendar.timegm(created))


def _column(name: str, description: str, kind: str = "string", fmt: str = "") -> dict:
    return {"name": name, "type": kind, "format": fmt, "description": description,
            "priority": 0}


NAME_COLUMN = _column("Name", "Name must be unique within a namespace.", fmt="name")
AGE_COLUMN = _column("Age", "CreationTimestamp is a timestamp representing the server time "
                     "when this object was created.")
SERVICE_COLUMNS = [
    NAME_COLUMN,
    _column("Type", "type determines how the Service is exposed."),
    _column("Cluster-IP", "clusterIP is the IP address of the service."),
    _column("External-IP", "externalIPs is a list of IP addresses for which nodes in the "
            "cluster will also accept traffic for this service."),
    _column("Port(s)", "The list of ports that are exposed by this service."),
    AGE_COLUMN,
]


def table_columns(kind: str) -> list[dict[str, Any]]:
    """A C{Table}'s column definitions: C{kubectl}'s Service columns, else name and age."""
    return SERVICE_COLUMNS if kind == "Service" else [NAME_COLUMN, AGE_COLUMN]


def table_row(obj: dict[str, Any]) -> dict[str, Any]:
    """
    One C{Table} row: the cells, and the object's metadata as a
    C{PartialObjectMetadata} (the server's default C{includeObject=Metadata}),
    from which C{kubectl get -A} takes the NAMESPACE column.
    """
    cells: list[Any] = [obj["metadata"]["name"]]
    spec = obj.get("spec", {})
    if obj["kind"] == "Service":
        ports = ",".join(f"{p['port']}/{p.get('protocol', 'TCP')}" for p in spec.get("ports", ()))
        cells += [spec.get("type", "ClusterIP"), spec.get("clusterIP", "<none>"),
                  ",".join(spec.get("externalIPs", ())) or "<none>", ports or "<none>"]
    cells.append(_age(obj))
    metadata = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                "metadata": obj["metadata"]}
    return {"cells": cells, "object": metadata}


def service(namespace: str, name: str, cluster_ips: tuple[str, ...] | str = ("10.96.0.10",),
            ports: tuple[int, ...] = (80,), selector: dict | None = None) -> dict[str, Any]:
    """
    A ClusterIP Service as the API server returns it once it assigned the
    address: C{clusterIP} and C{clusterIPs}, C{ipFamilies} in the same order,
    C{ipFamilyPolicy}, defaulted C{protocol}/C{targetPort}, an empty C{status}.
    C{cluster_ips="None"} makes it headless.
    """
    ips = (cluster_ips,) if isinstance(cluster_ips, str) else cluster_ips
    families = ["IPv6" if ":" in ip else "IPv4" for ip in ips if ip != "None"] or ["IPv4"]
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "ports": [{"name": f"p{port}", "protocol": "TCP", "port": port, "targetPort": port}
                      for port in ports],
            "selector": selector or {"app": name},
            "clusterIP": ips[0], "clusterIPs": list(ips), "type": "ClusterIP",
            "sessionAffinity": "None", "ipFamilies": families,
            "ipFamilyPolicy": "PreferDualStack" if len(families) > 1 else "SingleStack",
            "internalTrafficPolicy": "Cluster",
        },
        "status": {"loadBalancer": {}},
    }


def endpoint_slice(namespace: str, service_name: str, addresses: tuple[str, ...],
                   ready: bool = True, hostnames: bool = False, port: int = 80,
                   suffix: str = "x7k2p") -> dict[str, Any]:
    """
    The EndpointSlice the controller writes for a Service's Pods: the
    C{kubernetes.io/service-name} and C{endpointslice.kubernetes.io/managed-by}
    labels, C{addressType} from the first address, one endpoint per Pod with its
    conditions, C{targetRef}, and (for a headless Service's subdomain Pods)
    C{hostname}.
    """
    endpoints = []
    for index, address in enumerate(addresses):
        pod = f"{service_name}-{index}"
        endpoint: dict[str, Any] = {
            "addresses": [address],
            "conditions": {"ready": ready, "serving": ready, "terminating": False},
            "targetRef": {"kind": "Pod", "namespace": namespace, "name": pod},
            "nodeName": "node-1",
        }
        if hostnames:
            endpoint["hostname"] = pod
        endpoints.append(endpoint)
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service_name}-{suffix}", "namespace": namespace,
            "generateName": f"{service_name}-",
            "labels": {"kubernetes.io/service-name": service_name,
                       "endpointslice.kubernetes.io/managed-by":
                           "endpointslice-controller.k8s.io"},
        },
        "addressType": "IPv6" if addresses and ":" in addresses[0] else "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": f"p{port}", "protocol": "TCP", "port": port}],
    }


def service_entry(namespace: str, name: str, hosts: tuple[str, ...],
                  addresses: tuple[str, ...] = (), resolution: str = "DNS",
                  version: str = "v1") -> dict[str, Any]:
    """A ServiceEntry as C{kubectl apply} stores it (Istio writes no defaults into it)."""
    spec: dict[str, Any] = {"hosts": list(hosts),
                            "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
                            "location": "MESH_EXTERNAL", "resolution": resolution}
    if addresses:
        spec["addresses"] = list(addresses)
    return {"apiVersion": f"{ISTIO_GROUP}/{version}", "kind": "ServiceEntry",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def sidecar(namespace: str, name: str = "default",
            hosts: tuple[str, ...] = ("./*", "istio-system/*")) -> dict[str, Any]:
    """A namespace's Sidecar whose egress listener limits what its proxies import."""
    return {"apiVersion": f"{ISTIO_GROUP}/v1", "kind": "Sidecar",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"egress": [{"hosts": list(hosts)}]}}


def pod(namespace: str, name: str, ips: tuple[str, ...] = ("10.244.0.5",),
        hostname: str = "", subdomain: str = "") -> dict[str, Any]:
    """A running, ready Pod with C{status.podIP} and C{podIPs} as the kubelet reports them."""
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.9"}],
                            "nodeName": "node-1", "restartPolicy": "Always",
                            "dnsPolicy": "ClusterFirst"}
    if hostname:
        spec["hostname"] = hostname
    if subdomain:
        spec["subdomain"] = subdomain
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": spec,
        "status": {"phase": "Running", "podIP": ips[0], "podIPs": [{"ip": ip} for ip in ips],
                   "hostIP": "172.18.0.2",
                   "conditions": [{"type": "Ready", "status": "True"}]},
    }

