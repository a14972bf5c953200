"""
Measure how long meshdns takes to build its name table, and the memory it
needs, for 1k, 10k and 100k ServiceEntry hosts.

Each size is measured in a fresh Python process (so that one size's memory
does not hide in the next one's peak) running the real start-up code path:
C{load_config}, then C{TableLoader.load} (read and validate every entry file,
allocate, build the mesh view and the L{NameTable}).

    python bench/table_build.py [--sizes 1000,10000,100000] [--hosts-per-entry 1]

prints one Markdown table; C{--json} prints the raw figures instead.
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

import gen_entries  # noqa: E402
from report import table_build_table  # noqa: E402

CONFIG = """\
listen: {address: 127.0.0.1, port: 15053}
upstream: {servers: ["127.0.0.1:53"], resolv_conf: /dev/null}
mesh: {search: [], auto_allocate: true}
entries: [entries]
admin: {port: 0}
vip_listeners: {enabled: false}
"""


def max_rss_mb() -> float:
    """
    This process's peak resident set size (C{VmHWM}), in MB.

    Not C{getrusage}: its C{ru_maxrss} survives C{fork} and C{exec}, so a
    child would report its parent's peak.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure(config_path: str) -> dict[str, float]:
    """
    Build a table from C{config_path} the way C{twistd meshdns} does at
    start-up; return the seconds it took and the peak RSS before and after.
    """
    import gc

    from meshdns_plugin.config import load_config
    from meshdns_plugin.mesh.loader import TableLoader
    from meshdns_plugin.sources.files import load_entries
    from meshdns_plugin.tap import GC_THRESHOLDS

    # The collector thresholds twistd meshdns runs with.
    gc.set_threshold(*GC_THRESHOLDS)
    baseline = max_rss_mb()
    started = time.perf_counter()
    config = load_config(config_path)
    table = TableLoader(config, load_entries).load()
    seconds = time.perf_counter() - started
    return {
        "names": len(table),
        "seconds": seconds,
        "rss_baseline_mb": baseline,
        "rss_peak_mb": max_rss_mb(),
    }


def run_size(hosts: int, per_entry: int) -> dict[str, float]:
    """Generate C{hosts} entries in a scratch folder and measure them in a child process."""
    with tempfile.TemporaryDirectory(prefix="meshdns-table-") as scratch:
        folder = Path(scratch)
        gen_entries.write(folder, hosts, per_entry)
        (folder / "meshdns.yaml").write_text(CONFIG)
        size = (folder / "entries" / "bench.yaml").stat().st_size
        output = subprocess.run(
            [sys.executable, __file__, "--measure", str(folder / "meshdns.yaml")],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    result = json.loads(output)
    result["hosts"] = hosts
    result["file_mb"] = size / 1e6
    return result


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="host counts, comma-separated")
    parser.add_argument("--hosts-per-entry", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print raw figures as JSON")
    parser.add_argument("--measure", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return 0
    results = [run_size(int(s), args.hosts_per_entry) for s in args.sizes.split(",")]
    print(json.dumps(results, indent=1) if args.json else table_build_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
