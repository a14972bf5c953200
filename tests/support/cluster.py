"""
Documents of a small cluster, as kubectl prints them: Services with a
clusterIP, EndpointSlices whose endpoints are Pods, and ServiceEntries; for
the per-client view tests, each in the namespace given.
"""

from __future__ import annotations

DOMAIN = "cluster.local"


def service(namespace: str, name: str, ip: str, annotations: str = "") -> str:
    return f"""
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {namespace}
{annotations}
spec:
  clusterIP: {ip}
  ports: [{{port: 80}}]
---"""


def pods_slice(namespace: str, service_name: str, *addresses: str, ready: bool = True) -> str:
    endpoints = "".join(
        f"""
  - addresses: ["{a}"]
    conditions: {{ready: {str(ready).lower()}}}
    targetRef: {{kind: Pod, name: p{i}, namespace: {namespace}}}"""
        for i, a in enumerate(addresses)
    )
    return f"""
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {service_name}-x
  namespace: {namespace}
  labels: {{kubernetes.io/service-name: {service_name}}}
addressType: IPv4
endpoints:{endpoints}
---"""


def service_entry(namespace: str, name: str, host: str, address: str, export: str = "") -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: {name}
  namespace: {namespace}
spec:
  hosts: ["{host}"]
  addresses: ["{address}"]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  location: MESH_EXTERNAL
{export}
---"""
