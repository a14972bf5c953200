"""
Measure the load of per-client views (node-local mode): N namespaces x S
Kubernetes Services, each Service with an EndpointSlice of Pod endpoints (so
that every namespace has clients and a view), loaded with
C{mesh.per_client_views} off and on.

Each run is a fresh Python process running C{load_config} then
C{TableLoader.load} (parse, allocate, mesh view, table and views), as
C{twistd meshdns} starts.

    python bench/views_build.py [--namespaces 1000] [--services 10] [--pods 2]

prints one Markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from table_build import max_rss_mb  # noqa: E402

CONFIG = """\
listen: {{address: 127.0.0.1, port: 15053}}
upstream: {{servers: ["127.0.0.1:53"], resolv_conf: /dev/null}}
mesh: {{search: [], per_client_views: {views}}}
entries: [entries.yaml]
admin: {{port: 0}}
vip_listeners: {{enabled: false}}
"""


def entries(namespaces: int, services: int, pods: int) -> str:
    """Services 10.{n/250}.{n%250}.{s} with Pod endpoints 10.200+ ... in namespace ns-<n>."""
    docs = []
    for n in range(namespaces):
        for s in range(services):
            ip = f"10.{n // 250}.{n % 250}.{s + 1}"
            docs.append(
                f"apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{s}, namespace: ns-{n}}}\n"
                f"spec: {{clusterIP: {ip}, ports: [{{port: 80}}]}}\n"
            )
            endpoints = "".join(
                f"- addresses: [10.{100 + n // 250}.{n % 250}.{s * pods + p + 1}]\n"
                f"  targetRef: {{kind: Pod, name: svc-{s}-{p}, namespace: ns-{n}}}\n"
                for p in range(pods)
            )
            docs.append(
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
                f"metadata: {{name: svc-{s}-1, namespace: ns-{n}, "
                f"labels: {{kubernetes.io/service-name: svc-{s}}}}}\n"
                f"addressType: IPv4\nendpoints:\n{endpoints}"
            )
    return "---\n".join(docs)


def measure(config_path: str) -> dict[str, float]:
    from meshdns_plugin.config import load_config
    from meshdns_plugin.mesh.loader import TableLoader
    from meshdns_plugin.sources.files import load_entries

    baseline = max_rss_mb()
    started = time.perf_counter()
    loader = TableLoader(load_config(config_path), load_entries)
    table = loader.load()
    seconds = time.perf_counter() - started
    views = loader.views
    return {
        "names": len(table),
        "views": len(views.tables) if views else 1,
        "whole": len(views.whole) if views else 0,
        "seconds": seconds,
        "rss_baseline_mb": baseline,
        "rss_peak_mb": max_rss_mb(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--namespaces", type=int, default=1000)
    parser.add_argument("--services", type=int, default=10)
    parser.add_argument("--pods", type=int, default=2, help="Pod endpoints per Service")
    parser.add_argument("--measure", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "entries.yaml").write_text(entries(args.namespaces, args.services, args.pods))
        for views in ("false", "true"):
            config = root / f"meshdns-{views}.yaml"
            config.write_text(CONFIG.format(views=views))
            out = subprocess.run(
                [sys.executable, __file__, "--measure", str(config)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            rows.append((views, json.loads(out)))
    print(f"{args.namespaces} namespaces x {args.services} Services, {args.pods} Pods each\n")
    print(
        "| per_client_views | views (whole) | default view names | load s | peak RSS MB "
        "(baseline) |"
    )
    print("|---|---|---|---|---|")
    for views, r in rows:
        print(
            f"| {views} | {r['views']} ({r['whole']}) | {r['names']} | {r['seconds']:.2f} | "
            f"{r['rss_peak_mb']:.0f} ({r['rss_baseline_mb']:.0f}) |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
