"""
Turn one benchmark run's raw dnsperf output into the tables of bench/README.md.

C{bench/run.sh} leaves in its results folder, per server and workload,
C{SERVER.WORKLOAD.sat.txt} (dnsperf at saturation), C{SERVER.WORKLOAD.cpu}
(C{key=value} lines: the CPU the server, dnsperf and, for forward, the
upstream used over the saturation run, and the queries the upstream got) and
C{SERVER.WORKLOAD.light.txt} (dnsperf C{-v} at a light fixed rate, one line
per query), C{SERVER.rss} (C{/proc/PID/status} after the server's last
workload; C{SERVER.forward.rss} and C{SERVER.down.rss} for the instances that
run the forward and down workloads), and optionally C{table_build.json} (bench/table_build.py) and
C{machine.txt}.

    python bench/report.py RESULTS_DIR [--json FILE]

prints the results, meshdns's ratio to every peer and the targets of issues 5
and 11 as Markdown; C{--json} also writes the parsed figures.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

SERVERS = ("meshdns", "dnsmasq", "unbound", "twistd")
WORKLOADS = ("local", "upstream", "nxdomain", "forward", "down")
#: The rcode every reply of a workload must have.
EXPECTED_RCODE = {
    "local": "NOERROR",
    "upstream": "NOERROR",
    "nxdomain": "NXDOMAIN",
    "forward": "NOERROR",
    "down": "NOERROR",
}
#: The workloads whose every query is a miss forwarded to NSD.
FORWARDED = ("forward", "down")
#: Above this share of a core, the upstream (or the client core it shares
#: with dnsperf) may be what limits the forward workload, not the server.
BUSY_CORE = 0.8
LABELS = {
    "meshdns": "meshdns",
    "dnsmasq": "dnsmasq",
    "unbound": "unbound (1 thread)",
    "twistd": "stock twistd dns",
}

_QPS = re.compile(r"Queries per second:\s+([\d.]+)")
_SENT = re.compile(r"Queries sent:\s+(\d+)")
_LOST = re.compile(r"Queries lost:\s+(\d+)")
_MEAN = re.compile(r"Average Latency \(s\):\s+([\d.]+)")
_RCODES = re.compile(r"Response codes:\s+(.*)")
_PER_QUERY = re.compile(r"^> (\S+) \S+ \S+ ([\d.]+)$", re.MULTILINE)


@dataclass
class Run:
    """The figures of one dnsperf run."""

    qps: float
    sent: int
    lost: int
    mean_ms: float
    rcodes: dict[str, int]
    p99_ms: float | None = None
    p50_ms: float | None = None


@dataclass
class Cpu:
    """
    CPU over one saturation run (C{SERVER.WORKLOAD.cpu}), in seconds: what a
    query costs the server, and whether the client side kept up. For the
    forward workload, also the upstream's CPU and the queries it received, to
    show that it was not the bottleneck and that no query was a cache hit.
    """

    wall_s: float
    server_s: float
    client_s: float
    upstream_s: float | None = None
    upstream_queries: int | None = None
    names: int | None = None
    dead_queries: int | None = None


@dataclass
class Result:
    """One server under one workload."""

    server: str
    workload: str
    saturation: Run
    light: Run
    rss_mb: float | None = None
    cpu: Cpu | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def completed(self) -> int:
        """Queries of the saturation run that were answered."""
        return self.saturation.sent - self.saturation.lost

    @property
    def cpu_us(self) -> float | None:
        """Server CPU per answered query of the saturation run, in µs."""
        if self.cpu is None or self.completed <= 0:
            return None
        return self.cpu.server_s / self.completed * 1e6


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of C{values} (C{fraction} in 0..1)."""
    ordered = sorted(values)
    return ordered[max(math.ceil(fraction * len(ordered)) - 1, 0)]


def parse_dnsperf(text: str) -> Run:
    """
    The summary of one dnsperf output; with C{-v}, also the 50th and 99th
    percentiles of the per-query latencies.

    @raise ValueError: if the output has no summary (dnsperf failed).
    """
    found = {
        name: pattern.search(text)
        for name, pattern in (("qps", _QPS), ("sent", _SENT), ("lost", _LOST), ("mean", _MEAN))
    }
    missing = [name for name, match in found.items() if match is None]
    if missing:
        raise ValueError(f"no {', '.join(missing)} in dnsperf output")
    rcodes: dict[str, int] = {}
    rcode_line = _RCODES.search(text)
    if rcode_line:
        for rcode, count in re.findall(r"(\w+) (\d+) \(", rcode_line.group(1)):
            rcodes[rcode] = int(count)
    latencies = [float(seconds) for _, seconds in _PER_QUERY.findall(text)]
    return Run(
        qps=float(found["qps"].group(1)),
        sent=int(found["sent"].group(1)),
        lost=int(found["lost"].group(1)),
        mean_ms=float(found["mean"].group(1)) * 1000,
        rcodes=rcodes,
        p99_ms=percentile(latencies, 0.99) * 1000 if latencies else None,
        p50_ms=percentile(latencies, 0.5) * 1000 if latencies else None,
    )


def read_rss_mb(path: Path) -> float | None:
    """C{VmRSS} from a saved C{/proc/PID/status}, in MB."""
    if not path.exists():
        return None
    match = re.search(r"VmRSS:\s+(\d+) kB", path.read_text())
    return int(match.group(1)) / 1024 if match else None


def read_cpu(path: Path) -> Cpu | None:
    """
    A C{SERVER.WORKLOAD.cpu} file of C{key=value} lines (clock ticks for the
    processes read from C{/proc/PID/stat}, seconds for dnsperf's own time).

    @raise ValueError: if a line is malformed or a required key is missing.
    """
    if not path.exists():
        return None
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"{path.name}: not key=value: {line!r}")
        values[key.strip()] = value.strip()
    try:
        tick = 1 / int(values["clk_tck"])
        cpu = Cpu(
            wall_s=float(values["wall_s"]),
            server_s=int(values["server_ticks"]) * tick,
            client_s=float(values["client_s"]),
        )
        if "upstream_ticks" in values:
            cpu.upstream_s = int(values["upstream_ticks"]) * tick
            cpu.upstream_queries = int(values["upstream_queries"])
            cpu.names = int(values["names"])
        if "dead_queries" in values:
            cpu.dead_queries = int(values["dead_queries"])
    except KeyError as e:
        raise ValueError(f"{path.name}: no {e.args[0]}") from None
    return cpu


def forward_problems(result: Result) -> list[str]:
    """
    What makes a forward run not measure what it should: names that reached
    no upstream (cache hits, or answered from elsewhere), a file too short
    for the run, an upstream or client core too busy to keep up.
    """
    cpu = result.cpu
    if cpu is None or cpu.upstream_queries is None:
        return ["no upstream figures (.cpu file)"]
    found = []
    if cpu.upstream_queries < result.completed:
        found.append(
            f"the upstream got {cpu.upstream_queries} queries for {result.completed} answers: "
            "some were not forwarded"
        )
    if cpu.names is not None and result.saturation.sent >= cpu.names:
        found.append(f"dnsperf used all {cpu.names} names: the run ended early")
    if cpu.wall_s > 0 and cpu.upstream_s is not None:
        upstream = cpu.upstream_s / cpu.wall_s
        client_core = (cpu.upstream_s + cpu.client_s) / cpu.wall_s
        if upstream > BUSY_CORE:
            found.append(f"the upstream used {upstream:.0%} of a core: it may be the bottleneck")
        elif client_core > BUSY_CORE:
            found.append(
                f"the upstream and dnsperf used {client_core:.0%} of their core: "
                "the client side may be the bottleneck"
            )
    return found


def load(results: Path) -> list[Result]:
    """Every (server, workload) the results folder has both runs of."""
    loaded = []
    for server in SERVERS:
        for workload in WORKLOADS:
            sat = results / f"{server}.{workload}.sat.txt"
            light = results / f"{server}.{workload}.light.txt"
            if not (sat.exists() and light.exists()):
                continue
            rss = results / f"{server}.{workload}.rss"
            result = Result(
                server,
                workload,
                parse_dnsperf(sat.read_text()),
                parse_dnsperf(light.read_text()),
                read_rss_mb(rss if rss.exists() else results / f"{server}.rss"),
                read_cpu(results / f"{server}.{workload}.cpu"),
            )
            for name, run in (("saturation", result.saturation), ("light", result.light)):
                wrong = {r: n for r, n in run.rcodes.items() if r != EXPECTED_RCODE[workload]}
                if wrong:
                    result.problems.append(f"{name} run: unexpected rcodes {wrong}")
            if workload in FORWARDED:
                result.problems += forward_problems(result)
            loaded.append(result)
    return loaded


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _ratio(mine: float | None, theirs: float | None) -> str:
    if mine is None or theirs is None or theirs == 0:
        return "-"
    return f"{mine / theirs:.2f}×"


def results_table(results: list[Result]) -> str:
    """One row per server and workload."""
    lines = [
        "| workload | server | qps (saturation) | CPU µs/query (saturation) "
        "| mean ms (300 qps) | p99 ms (300 qps) | lost (sat + light) | RSS MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lost = r.saturation.lost + r.light.lost
        note = f" ⚠ {'; '.join(r.problems)}" if r.problems else ""
        lines.append(
            f"| {r.workload} | {LABELS[r.server]} | {r.saturation.qps:,.0f} | {_us(r.cpu_us)} "
            f"| {_ms(r.light.mean_ms)} | {_ms(r.light.p99_ms)} | {lost} "
            f"| {r.rss_mb or 0:.1f} |{note}"
        )
    return "\n".join(lines)


def _share(seconds: float | None, cpu: Cpu) -> str:
    if seconds is None or cpu.wall_s <= 0:
        return "-"
    return f"{seconds / cpu.wall_s:.0%}"


def forward_table(results: list[Result]) -> str:
    """
    The forward workload's checks, per server: every answered query reached
    the upstream once (upstream queries ÷ answered = 1.00; below 1, some were
    cache hits), and the upstream, on the client core beside dnsperf, kept up.
    """
    lines = [
        "| server | answered (saturation) | upstream got | ÷ answered "
        "| upstream CPU | dnsperf CPU | client core busy |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r.workload != "forward" or r.cpu is None or r.cpu.upstream_queries is None:
            continue
        cpu = r.cpu
        ratio = f"{cpu.upstream_queries / r.completed:.3f}" if r.completed else "-"
        both = None if cpu.upstream_s is None else cpu.upstream_s + cpu.client_s
        lines.append(
            f"| {LABELS[r.server]} | {r.completed:,} | {cpu.upstream_queries:,} | {ratio} "
            f"| {_share(cpu.upstream_s, cpu)} | {_share(cpu.client_s, cpu)} "
            f"| {_share(both, cpu)} |"
        )
    return "\n".join(lines) if len(lines) > 2 else ""


def down_table(results: list[Result]) -> str:
    """
    The down workload per server, and meshdns's ratio to each peer: forwarded
    queries per second with the first upstream blackholed, the latency
    percentiles at 300 qps, and how many queries still went to the dead
    server during the saturation run.
    """
    down = {r.server: r for r in results if r.workload == "down"}
    if not down:
        return ""
    lines = [
        "| server | qps (saturation) | p50 ms (300 qps) | p99 ms (300 qps) "
        "| lost (sat + light) | to the dead server (saturation) | NSD got ÷ answered |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in down.values():
        cpu = r.cpu
        dead = "-" if cpu is None or cpu.dead_queries is None else f"{cpu.dead_queries:,}"
        got = (
            f"{cpu.upstream_queries / r.completed:.3f}"
            if cpu is not None and cpu.upstream_queries is not None and r.completed
            else "-"
        )
        lines.append(
            f"| {LABELS[r.server]} | {r.saturation.qps:,.0f} | {_ms(r.light.p50_ms)} "
            f"| {_ms(r.light.p99_ms)} | {r.saturation.lost + r.light.lost} | {dead} | {got} |"
        )
    mine = down.get("meshdns")
    peers = [down[p] for p in SERVERS[1:] if p in down]
    if mine is not None and peers:
        lines += [
            "",
            "| meshdns ÷ | qps | p50 latency | p99 latency |",
            "|---|---:|---:|---:|",
        ]
        for theirs in peers:
            lines.append(
                f"| {LABELS[theirs.server]} | {_ratio(mine.saturation.qps, theirs.saturation.qps)} "
                f"| {_ratio(mine.light.p50_ms, theirs.light.p50_ms)} "
                f"| {_ratio(mine.light.p99_ms, theirs.light.p99_ms)} |"
            )
    return "\n".join(lines)


def ratios_table(results: list[Result]) -> str:
    """meshdns's figures divided by each peer's, per workload."""
    by_key = {(r.server, r.workload): r for r in results}
    lines = [
        "| workload | meshdns ÷ | qps | CPU per query | mean latency | p99 latency | RSS |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for workload in WORKLOADS:
        mine = by_key.get(("meshdns", workload))
        if mine is None:
            continue
        for peer in SERVERS[1:]:
            theirs = by_key.get((peer, workload))
            if theirs is None:
                continue
            lines.append(
                f"| {workload} | {LABELS[peer]} "
                f"| {_ratio(mine.saturation.qps, theirs.saturation.qps)} "
                f"| {_ratio(mine.cpu_us, theirs.cpu_us)} "
                f"| {_ratio(mine.light.mean_ms, theirs.light.mean_ms)} "
                f"| {_ratio(mine.light.p99_ms, theirs.light.p99_ms)} "
                f"| {_ratio(mine.rss_mb, theirs.rss_mb)} |"
            )
    return "\n".join(lines)


@dataclass
class Target:
    """One target of issue 5 or 11 and how this run did."""

    what: str
    wanted: str
    got: str
    met: bool | None


def targets(results: list[Result], table_build: list[dict] | None) -> list[Target]:
    """Evaluate every target whose figures this run has."""
    by_key = {(r.server, r.workload): r for r in results}
    found: list[Target] = []

    def qps_ratio(workload: str, peer: str, at_least: float) -> None:
        mine, theirs = by_key.get(("meshdns", workload)), by_key.get((peer, workload))
        if mine is None or theirs is None:
            return
        ratio = mine.saturation.qps / theirs.saturation.qps
        found.append(
            Target(
                f"{workload} qps vs {peer}", f"≥ {at_least}×", f"{ratio:.2f}×", ratio >= at_least
            )
        )

    qps_ratio("local", "dnsmasq", 0.8)
    qps_ratio("local", "twistd", 4.0)
    qps_ratio("upstream", "dnsmasq", 1.0)
    qps_ratio("nxdomain", "dnsmasq", 0.8)
    # Issue 11, item 6: the miss path.
    qps_ratio("forward", "dnsmasq", 1.5)
    forward = by_key.get(("meshdns", "forward"))
    if forward is not None and forward.cpu_us is not None:
        found.append(
            Target(
                "forward: server CPU per forwarded query",
                "≤ 100 µs",
                f"{forward.cpu_us:.0f} µs",
                forward.cpu_us <= 100,
            )
        )
    mine = [r for r in results if r.server == "meshdns"]
    if mine:
        lost = sum(r.saturation.lost + r.light.lost for r in mine)
        found.append(Target("meshdns lost queries (all runs)", "0", str(lost), lost == 0))
    for workload in WORKLOADS:
        m, d = by_key.get(("meshdns", workload)), by_key.get(("dnsmasq", workload))
        if m is None or d is None or m.light.p99_ms is None or d.light.p99_ms is None:
            continue
        ratio = m.light.p99_ms / d.light.p99_ms
        found.append(
            Target(f"{workload} p99 at 300 qps vs dnsmasq", "≤ 1.5×", f"{ratio:.2f}×", ratio <= 1.5)
        )
    for row in table_build or []:
        if row["hosts"] == 100000:
            found.append(
                Target(
                    "table build, 100k hosts: time",
                    "< 10 s",
                    f"{row['seconds']:.1f} s",
                    row["seconds"] < 10,
                )
            )
            found.append(
                Target(
                    "table build, 100k hosts: peak RSS",
                    "< 500 MB",
                    f"{row['rss_peak_mb']:.0f} MB",
                    row["rss_peak_mb"] < 500,
                )
            )
    return found


def targets_table(found: list[Target]) -> str:
    """The targets as Markdown."""
    lines = ["| target | wanted | got | met |", "|---|---|---|---|"]
    for t in found:
        lines.append(f"| {t.what} | {t.wanted} | {t.got} | {'yes' if t.met else '**no**'} |")
    return "\n".join(lines)


def table_build_table(rows: list[dict]) -> str:
    """bench/table_build.py's figures as Markdown."""
    lines = [
        "| hosts | entries file | build time | peak RSS | RSS before build |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['hosts']:,} | {r['file_mb']:.1f} MB | {r['seconds']:.2f} s "
            f"| {r['rss_peak_mb']:.0f} MB | {r['rss_baseline_mb']:.0f} MB |"
        )
    return "\n".join(lines)


def markdown(results_dir: Path, results: list[Result], table_build: list[dict] | None) -> str:
    """The whole report."""
    parts = []
    machine = results_dir / "machine.txt"
    if machine.exists():
        parts.append("```\n" + machine.read_text().strip() + "\n```")
    if results:
        parts += ["### Results", results_table(results)]
        forward = forward_table(results)
        if forward:
            parts += [
                "### Forward: did every query reach the upstream, and did the client side keep up?",
                forward,
            ]
        down = down_table(results)
        if down:
            parts += ["### Down: the first upstream blackholed, the second answering", down]
        if any(r.server != "meshdns" for r in results):
            parts += ["### meshdns as a ratio to each peer (same run)", ratios_table(results)]
    if table_build:
        parts += [
            "### Table build (TableLoader.load, fresh process)",
            table_build_table(table_build),
        ]
    found = targets(results, table_build)
    if found:
        parts += ["### Targets (issues 5 and 11)", targets_table(found)]
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("results", type=Path, help="the results folder of bench/run.sh")
    parser.add_argument("--json", type=Path, help="also write the parsed figures here")
    args = parser.parse_args(argv)
    try:
        results = load(args.results)
    except ValueError as e:
        print(f"report: {e}", file=sys.stderr)
        return 1
    build_path = args.results / "table_build.json"
    table_build = json.loads(build_path.read_text()) if build_path.exists() else None
    print(markdown(args.results, results, table_build), end="")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "results": [{**asdict(r), "cpu_us_per_query": r.cpu_us} for r in results],
                    "table_build": table_build,
                    "targets": [asdict(t) for t in targets(results, table_build)],
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
