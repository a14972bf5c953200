"""
Generate the benchmark's local names, in every format the servers under test read.

The same names must reach meshdns, dnsmasq, unbound and stock Twisted Names,
or the comparison means nothing: this script is the one place they come from.
Host C{i} is C{host-NNNNNN.bench.internal}; even hosts have one IPv4 address
(answering A), odd hosts one IPv6 address (answering AAAA), so that a run of
the local workload is 50/50 A/AAAA.

    python bench/gen_entries.py --hosts 1000 --out DIR            # entries only
    python bench/gen_entries.py --hosts 1000 --out DIR --servers  # + peers, queries
    python bench/gen_entries.py ... --servers --forward-names N --forward-light-names M

Files written in C{DIR}:
  - C{entries/bench.yaml}: one ServiceEntry per host (C{--hosts-per-entry} to
    group them), with its address, as meshdns reads it;
  - with C{--servers}: C{hosts} (dnsmasq's C{--addn-hosts}), C{unbound-local.conf}
    (C{local-data} lines), C{bench.internal.zone} (a BIND zone for stock
    C{twistd dns --bindzone}), and the dnsperf query files C{local.txt},
    C{upstream.txt} (names the fake upstream answers, 50/50 A/AAAA) and
    C{nxdomain.txt} (names it answers NXDOMAIN);
  - with C{--servers}, for the forward workload: C{fwd.bench.zone} (the zone NSD
    serves: a wildcard answers any name below it), C{forward.txt} (the names
    bench/probe.py checks), and the dnsperf files C{forward.sat.txt} and
    C{forward.light.txt}, C{--forward-names} and C{--forward-light-names}
    lines of names never used anywhere else: each one is a cache miss at
    every server, asked once (dnsperf C{-n 1}).
"""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

#: The zone the local names live in.
LOCAL_ZONE = "bench.internal"
#: The fake upstream's zone (tests/support/fakeupstream.py): every name below it
#: answers A and AAAA; a label starting with "nx" makes it NXDOMAIN.
UPSTREAM_ZONE = "upstream.test"
#: TTL of the local answers everywhere (meshdns's default mesh TTL).
LOCAL_TTL = 30
#: The forward workload's zone, served by NSD with a wildcard, so that a name
#: nobody asked before is answered at once. Outside C{test.}, C{bench.internal.}
#: and C{upstream.test.}, so no server can answer it from anything else.
FORWARD_ZONE = "fwd.bench"
#: What the wildcard answers: the fake upstream's addresses and TTL, so that
#: bench/probe.py checks both upstreams alike.
FORWARD_ANSWER = {"A": "127.0.0.10", "AAAA": "::10"}
FORWARD_TTL = 300

_IPV4_BASE = int(ipaddress.IPv4Address("10.0.0.0"))
_IPV6_BASE = int(ipaddress.IPv6Address("fd00:bec::"))


@dataclass(frozen=True)
class LocalName:
    """One local name: its owner, the query type it answers, its address."""

    name: str
    qtype: str
    address: str


def local_names(count: int) -> Iterator[LocalName]:
    """The first C{count} local names, alternating IPv4 and IPv6."""
    for i in range(count):
        name = f"host-{i:06d}.{LOCAL_ZONE}"
        if i % 2 == 0:
            yield LocalName(name, "A", str(ipaddress.IPv4Address(_IPV4_BASE + 1 + i)))
        else:
            yield LocalName(name, "AAAA", str(ipaddress.IPv6Address(_IPV6_BASE + 1 + i)))


def service_entries(names: list[LocalName], per_entry: int = 1) -> str:
    """ServiceEntry documents, C{per_entry} hosts each (all their addresses on it)."""
    docs = []
    for start in range(0, len(names), per_entry):
        group = names[start : start + per_entry]
        hosts = "".join(f"  - {n.name}\n" for n in group)
        addresses = "".join(f"  - {n.address}\n" for n in group)
        docs.append(
            "apiVersion: networking.istio.io/v1\n"
            "kind: ServiceEntry\n"
            "metadata:\n"
            f"  name: bench-{start:06d}\n"
            "  namespace: default\n"
            "spec:\n"
            f"  hosts:\n{hosts}"
            f"  addresses:\n{addresses}"
            "  ports:\n"
            "  - name: http\n"
            "    number: 80\n"
            "    protocol: HTTP\n"
            "  location: MESH_EXTERNAL\n"
            "  resolution: STATIC\n"
        )
    return "---\n".join(docs)


def hosts_file(names: list[LocalName]) -> str:
    """An /etc/hosts-style file (dnsmasq's C{--addn-hosts})."""
    return "".join(f"{n.address} {n.name}\n" for n in names)


def unbound_local_data(names: list[LocalName]) -> str:
    """C{local-data} lines for unbound's C{server:} clause."""
    return "".join(
        f'    local-data: "{n.name}. {LOCAL_TTL} IN {n.qtype} {n.address}"\n' for n in names
    )


def bind_zone(names: list[LocalName]) -> str:
    """A BIND zone file for C{twistd dns --bindzone}."""
    head = (
        f"$ORIGIN {LOCAL_ZONE}.\n"
        f"$TTL {LOCAL_TTL}\n"
        f"@ IN SOA ns.{LOCAL_ZONE}. hostmaster.{LOCAL_ZONE}. 1 3600 600 86400 {LOCAL_TTL}\n"
        f"@ IN NS ns.{LOCAL_ZONE}.\n"
    )
    return head + "".join(f"{n.name}. IN {n.qtype} {n.address}\n" for n in names)


def queries(count: int) -> dict[str, str]:
    """The dnsperf query files of the three workloads, C{count} lines each."""
    return {
        "local.txt": "".join(f"{n.name} {n.qtype}\n" for n in local_names(count)),
        "upstream.txt": "".join(
            f"name-{i:06d}.{UPSTREAM_ZONE} {'A' if i % 2 == 0 else 'AAAA'}\n" for i in range(count)
        ),
        "nxdomain.txt": "".join(f"nx-{i:06d}.{UPSTREAM_ZONE} A\n" for i in range(count)),
    }


def forward_zone(ns_address: str) -> str:
    """
    The forward workload's zone for NSD: a wildcard A and AAAA below the apex,
    so any fresh name is answered NOERROR without a lookup in a large zone.
    """
    return (
        f"$ORIGIN {FORWARD_ZONE}.\n"
        f"$TTL {FORWARD_TTL}\n"
        f"@ IN SOA ns.{FORWARD_ZONE}. hostmaster.{FORWARD_ZONE}. 1 3600 600 86400 60\n"
        f"@ IN NS ns.{FORWARD_ZONE}.\n"
        f"ns IN A {ns_address}\n"
        f"* IN A {FORWARD_ANSWER['A']}\n"
        f"* IN AAAA {FORWARD_ANSWER['AAAA']}\n"
    )


def forward_queries(prefix: str, count: int) -> str:
    """
    C{count} dnsperf lines of distinct names below the forward zone, 50/50
    A/AAAA. Distinct prefixes keep the files apart: a name of one file is
    never in another, so no run warms the cache for the next.
    """
    return "".join(
        f"{prefix}-{i:07d}.{FORWARD_ZONE} {'A' if i % 2 == 0 else 'AAAA'}\n" for i in range(count)
    )


def write(
    out: Path,
    count: int,
    per_entry: int = 1,
    servers: bool = False,
    forward_names: int = 0,
    forward_light_names: int = 0,
    forward_ns: str = "127.0.0.163",
) -> None:
    """Write the files described in the module docstring into C{out}."""
    names = list(local_names(count))
    (out / "entries").mkdir(parents=True, exist_ok=True)
    (out / "entries" / "bench.yaml").write_text(service_entries(names, per_entry))
    if not servers:
        return
    (out / "hosts").write_text(hosts_file(names))
    (out / "unbound-local.conf").write_text(unbound_local_data(names))
    (out / f"{LOCAL_ZONE}.zone").write_text(bind_zone(names))
    for file, text in queries(count).items():
        (out / file).write_text(text)
    (out / f"{FORWARD_ZONE}.zone").write_text(forward_zone(forward_ns))
    (out / "forward.txt").write_text(forward_queries("probe", count))
    (out / "forward.sat.txt").write_text(forward_queries("sat", forward_names))
    (out / "forward.light.txt").write_text(forward_queries("light", forward_light_names))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000, help="number of local names")
    parser.add_argument("--out", type=Path, required=True, help="folder to write into")
    parser.add_argument(
        "--hosts-per-entry", type=int, default=1, help="hosts per ServiceEntry (default 1)"
    )
    parser.add_argument(
        "--servers", action="store_true", help="also the peers' files and the query files"
    )
    parser.add_argument(
        "--forward-names",
        type=int,
        default=0,
        help="lines of forward.sat.txt: more than any server answers in the saturation run",
    )
    parser.add_argument(
        "--forward-light-names",
        type=int,
        default=0,
        help="lines of forward.light.txt: more than the latency run sends",
    )
    parser.add_argument(
        "--forward-ns", default="127.0.0.163", help="NSD's address, for the zone's NS glue"
    )
    args = parser.parse_args(argv)
    write(
        args.out,
        args.hosts,
        args.hosts_per_entry,
        args.servers,
        args.forward_names,
        args.forward_light_names,
        args.forward_ns,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
