"""
Measure meshdns's file path at cluster size: one file holding what
C{kubectl get services,endpointslices,serviceentries -A -o yaml} prints for a
cluster of 20,000 Services, 20,000 EndpointSlices (3 endpoints each) and
2,000 ServiceEntries (issue 18): one C{kind: List} document of about 37 MB
(the issue's own estimate: 0.5 KB per Service, 1.3 KB per slice; its
author's file, with fewer fields, was 26 MB).

A fresh Python process runs the real start-up path (C{load_config}, then
C{TableLoader.load}, with the collector thresholds twistd meshdns sets) and
reports the seconds it took, its resident memory after the load (C{VmRSS})
and its peak (C{VmHWM}).

    python bench/cluster_file.py [--services 20000] [--service-entries 2000]
                                 [--endpoints 3] [--keep DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

CONFIG = """\
listen: {address: 127.0.0.1, port: 15053}
upstream: {servers: ["127.0.0.1:53"], resolv_conf: /dev/null}
mesh: {namespace: ns-0000, auto_allocate: true}
entries: [cluster.yaml]
admin: {port: 0}
vip_listeners: {enabled: false}
"""
#: Services per namespace, as a large cluster spreads them.
PER_NAMESPACE = 20


def _service(i: int) -> str:
    """One Service item as C{kubectl get -o yaml} prints it (inside a List)."""
    namespace, name = f"ns-{i // PER_NAMESPACE:04d}", f"svc-{i:05d}"
    ip = f"10.{96 + (i >> 16)}.{i >> 8 & 255}.{i & 255}"
    return f"""\
- apiVersion: v1
  kind: Service
  metadata:
    creationTimestamp: "2026-11-02T09:14:{i % 60:02d}Z"
    labels:
      app: {name}
    name: {name}
    namespace: {namespace}
    resourceVersion: "{100000 + i}"
    uid: 5f0c{i:08x}-1b2a-4c3d-9e8f-0a1b2c3d4e5f
  spec:
    clusterIP: {ip}
    clusterIPs:
    - {ip}
    internalTrafficPolicy: Cluster
    ipFamilies:
    - IPv4
    ipFamilyPolicy: SingleStack
    ports:
    - name: http
      port: 80
      protocol: TCP
      targetPort: 8080
    selector:
      app: {name}
    sessionAffinity: None
    type: ClusterIP
  status:
    loadBalancer: {{}}
"""


def _endpoint_slice(i: int, endpoints: int) -> str:
    """The EndpointSlice of Service C{i}, with C{endpoints} ready Pods."""
    namespace, name = f"ns-{i // PER_NAMESPACE:04d}", f"svc-{i:05d}"
    items = "".join(
        f"""\
  - addresses:
    - 10.{128 + (i >> 14)}.{(i >> 6) & 255}.{(i & 63) * 4 + e}
    conditions:
      ready: true
      serving: true
      terminating: false
    nodeName: node-{(i + e) % 200:03d}
    targetRef:
      kind: Pod
      name: {name}-7d4b9c8f6d-{e:05d}
      namespace: {namespace}
    zone: zone-{e % 3}
"""
        for e in range(endpoints)
    )
    return f"""\
- addressType: IPv4
  apiVersion: discovery.k8s.io/v1
  endpoints:
{items}  kind: EndpointSlice
  metadata:
    creationTimestamp: "2026-11-02T09:14:{i % 60:02d}Z"
    generateName: {name}-
    generation: 1
    labels:
      endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
      kubernetes.io/service-name: {name}
    name: {name}-x7k2p
    namespace: {namespace}
    resourceVersion: "{200000 + i}"
    uid: 7e2d{i:08x}-1b2a-4c3d-9e8f-0a1b2c3d4e5f
  ports:
  - name: http
    port: 8080
    protocol: TCP
"""


def _service_entry(i: int) -> str:
    """A ServiceEntry for an external API, without addresses (it gets a VIP)."""
    return f"""\
- apiVersion: networking.istio.io/v1
  kind: ServiceEntry
  metadata:
    creationTimestamp: "2026-11-02T09:14:{i % 60:02d}Z"
    generation: 1
    name: external-{i:05d}
    namespace: ns-{i % 1000:04d}
    resourceVersion: "{300000 + i}"
    uid: 3c4d{i:08x}-1b2a-4c3d-9e8f-0a1b2c3d4e5f
  spec:
    hosts:
    - api-{i:05d}.partner.example.com
    location: MESH_EXTERNAL
    ports:
    - name: https
      number: 443
      protocol: TLS
    resolution: DNS
"""


def cluster_items(services: int, service_entries: int, endpoints: int) -> Iterator[str]:
    """The items of the List, in the order kubectl prints them (by kind)."""
    for i in range(services):
        yield _service(i)
    for i in range(services):
        yield _endpoint_slice(i, endpoints)
    for i in range(service_entries):
        yield _service_entry(i)


def write(path: Path, services: int, service_entries: int, endpoints: int) -> None:
    """Write the whole cluster as one C{kind: List} document."""
    with path.open("w") as out:
        out.write("apiVersion: v1\nitems:\n")
        for item in cluster_items(services, service_entries, endpoints):
            out.write(item)
        out.write('kind: List\nmetadata:\n  resourceVersion: ""\n')


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(config_path: str) -> dict[str, float]:
    """Load the table as C{twistd meshdns} does at start-up, in this process."""
    import gc

    import meshdns_plugin.service  # noqa: F401  (what a serving process has loaded)
    from meshdns_plugin.tap import GC_THRESHOLDS

    gc.set_threshold(*GC_THRESHOLDS)
    baseline = _status_mb("VmRSS")
    started = time.perf_counter()
    table = _load(config_path)
    seconds = time.perf_counter() - started
    return {
        "names": len(table),
        "seconds": seconds,
        "rss_baseline_mb": baseline,
        "rss_after_mb": _status_mb("VmRSS"),
        "rss_peak_mb": _status_mb("VmHWM"),
    }


def _load(config_path: str) -> object:
    from meshdns_plugin.config import load_config
    from meshdns_plugin.mesh.loader import TableLoader
    from meshdns_plugin.sources.files import load_entries

    return TableLoader(load_config(config_path), load_entries).load()


def run(services: int, service_entries: int, endpoints: int, keep: str | None) -> dict:
    """Generate the cluster file and measure its load in a child process."""
    with tempfile.TemporaryDirectory(prefix="meshdns-cluster-") as scratch:
        folder = Path(keep or scratch)
        folder.mkdir(parents=True, exist_ok=True)
        write(folder / "cluster.yaml", services, service_entries, endpoints)
        (folder / "meshdns.yaml").write_text(CONFIG)
        size = (folder / "cluster.yaml").stat().st_size
        output = subprocess.run(
            [sys.executable, __file__, "--measure", str(folder / "meshdns.yaml")],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    result = json.loads(output)
    result.update(services=services, service_entries=service_entries, file_mb=size / 1e6)
    return result


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--services", type=int, default=20_000)
    parser.add_argument("--service-entries", type=int, default=2_000)
    parser.add_argument("--endpoints", type=int, default=3, help="per EndpointSlice")
    parser.add_argument("--keep", metavar="DIR", help="write the files here and keep them")
    parser.add_argument("--json", action="store_true", help="print raw figures as JSON")
    parser.add_argument("--measure", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return 0
    result = run(args.services, args.service_entries, args.endpoints, args.keep)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(
            f"{result['file_mb']:.1f} MB file, {result['names']} names: "
            f"load {result['seconds']:.1f} s, RSS {result['rss_baseline_mb']:.0f} MB before, "
            f"{result['rss_after_mb']:.0f} MB after, peak {result['rss_peak_mb']:.0f} MB"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
