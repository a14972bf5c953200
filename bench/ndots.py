"""
The ndots:5 workload: external names looked up through a kubelet-style
search list, as glibc's stub resolver asks them, against meshdns without and
with C{mesh.autopath}, dnsmasq and unbound.

A ClusterFirst pod's resolv.conf says::

    search shop.svc.cluster.local svc.cluster.local cluster.local node.bench
    options ndots:5

so for C{w17.upstream.test} (2 dots) glibc sends A and AAAA together for
the name under each search domain in turn, and goes on to the next one while
the answers have no addresses, then asks the name alone. This script is that
client (L{lookup}): one lookup at a time, from one UDP socket, each waiting
for both replies. It counts the questions it sends, the upstream's
questions and the time each lookup takes, over every name once (cold:
nothing cached) and again (warm).

The upstream is NSD, authoritative for C{upstream.test} (a wildcard: A and
AAAA for every name) and, with no names in them, for C{cluster.local} and
C{node.bench}: every other candidate is an NXDOMAIN with its zone's SOA, as
kube-dns and the node's DNS give them (negative TTL 60 s).

meshdns runs as a sidecar of C{shop} would (C{mesh.search} is the pod's
list) from entry files alone, so the candidates under C{cluster.local} go
upstream as the others do.

    python bench/ndots.py [--names 200] [--servers "meshdns meshdns-autopath dnsmasq unbound"]

prints one Markdown table. Everything listens on loopback: NSD and the
servers on free ports of 127.0.0.1, each process stopped by its PID.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype

SEARCH = ("shop.svc.cluster.local", "svc.cluster.local", "cluster.local", "node.bench")
ADDRESS = "127.0.0.1"
SERVERS = ("meshdns", "meshdns-autopath", "dnsmasq", "unbound")
#: glibc's default, as kubelet leaves it (options timeout:5 is not written).
TIMEOUT = 5.0

MESHDNS_CONFIG = """\
listen: {{address: {address}, port: {port}}}
upstream: {{servers: ["{address}:{upstream}"], resolv_conf: {work}/empty-resolv.conf}}
mesh: {{search: [{search}], autopath: {autopath}}}
entries: [{work}/entries.yaml]
admin: {{port: 0}}
vip_listeners: {{enabled: false}}
"""

NSD_CONFIG = """\
server:
    ip-address: {address}
    port: {port}
    server-count: 1
    do-ip6: no
    username: ""
    chroot: ""
    zonesdir: "{work}"
    database: ""
    zonelistfile: "{work}/zone.list"
    xfrdfile: "{work}/xfrd.state"
    xfrdir: "{work}"
    pidfile: ""
    logfile: "{work}/nsd.log"
    verbosity: 0
    minimal-responses: yes
    rrl-ratelimit: 0
    rrl-whitelist-ratelimit: 0
remote-control:
    control-enable: yes
    control-interface: {work}/nsd.sock
"""

#: A zone of NSD's: its SOA (negative TTL 60 s), NS, and C{records}.
ZONE = """\
$ORIGIN {zone}.
@ 60 IN SOA ns.{zone}. hostmaster.{zone}. 1 7200 1800 86400 60
@ 60 IN NS ns.{zone}.
{records}
"""
ZONES = {
    "upstream.test": "* 300 IN A 127.0.0.10\n* 300 IN AAAA ::10\nns 60 IN A 127.0.0.1",
    "cluster.local": "ns 60 IN A 127.0.0.1",
    "node.bench": "ns 60 IN A 127.0.0.1",
}

UNBOUND_CONFIG = """\
server:
    interface: {address}@{port}
    port: {port}
    num-threads: 1
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "{work}"
    pidfile: ""
    use-syslog: no
    logfile: ""
    verbosity: 0
    do-ip6: no
    access-control: 127.0.0.0/8 allow
    do-not-query-localhost: no
    module-config: "iterator"
    local-zone: "test." nodefault
    local-zone: "local." nodefault
    prefetch: no
    qname-minimisation: no
remote-control:
    control-enable: no
forward-zone:
    name: "."
    forward-addr: {address}@{upstream}
"""


@dataclass
class Figures:
    """One pass over the names: questions and times, per lookup."""

    lookups: int = 0
    failed: int = 0
    sent: int = 0
    upstream: int = 0
    times: list[float] = field(default_factory=list)

    def row(self, server: str, cache: str) -> str:
        times = sorted(self.times)
        mean = sum(times) / len(times) * 1000
        p50 = times[len(times) // 2] * 1000
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))] * 1000
        per = self.lookups or 1
        return (
            f"| {server} | {cache} | {self.sent / per:.1f} | {self.upstream / per:.1f} "
            f"| {mean:.2f} | {p50:.2f} | {p99:.2f} | {self.failed} |"
        )


def candidates(name: str) -> list[str]:
    """What glibc asks for C{name} (fewer dots than ndots), in order."""
    return [f"{name}.{domain}." for domain in SEARCH] + [f"{name}."]


def lookup(sock: socket.socket, server: tuple[str, int], name: str, ident: int) -> tuple[int, bool]:
    """
    One C{getaddrinfo} of C{name}: A and AAAA together for each candidate
    until one has addresses.

    @return: the questions sent, and whether addresses were found.
    """
    sent = 0
    for candidate in candidates(name):
        waiting = {}
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            query = dns.message.make_query(candidate, rdtype)
            query.id = ident = (ident + 1) & 0xFFFF
            waiting[query.id] = query
            sock.sendto(query.to_wire(), server)
            sent += 1
        found = False
        deadline = time.monotonic() + TIMEOUT
        while waiting:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                data, peer = sock.recvfrom(65535)
            except TimeoutError:
                return sent, False
            reply = dns.message.from_wire(data)
            if peer != server or waiting.pop(reply.id, None) is None:
                continue
            found |= any(r.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA) for r in reply.answer)
        if found:
            return sent, True
    return sent, False


def nsd_queries(work: Path) -> int:
    """The questions NSD has received so far (its own count)."""
    found = subprocess.run(
        [sbin("nsd-control"), "-c", str(work / "nsd.conf"), "stats_noreset"],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout
    match = re.search(r"^num\.queries=(\d+)$", found, re.MULTILINE)
    if match is None:
        raise SystemExit(f"ndots.py: no query count from nsd-control:\n{found}")
    return int(match.group(1))


def sbin(command: str) -> str:
    return shutil.which(command, path="/usr/sbin:/usr/bin:/sbin:/bin") or command


def run_pass(server: tuple[str, int], work: Path, names: list[str]) -> Figures:
    figures = Figures()
    before = nsd_queries(work)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((ADDRESS, 0))
        for index, name in enumerate(names):
            start = time.perf_counter()
            sent, found = lookup(sock, server, name, index * 16)
            figures.times.append(time.perf_counter() - start)
            figures.lookups += 1
            figures.sent += sent
            figures.failed += not found
    figures.upstream = nsd_queries(work) - before
    return figures


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((ADDRESS, 0))
        return sock.getsockname()[1]


@contextmanager
def process(command: list[str], log: Path) -> Iterator[subprocess.Popen]:
    """C{command}, stopped by its PID when done (SIGTERM, then SIGKILL)."""
    with log.open("w") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent)
    try:
        yield child
    finally:
        child.terminate()
        try:
            child.wait(5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def wait_ready(port: int, child: subprocess.Popen, log: Path) -> None:
    """Until the server answers a question for a name of the upstream (at most 20 s)."""
    deadline = time.monotonic() + 20
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.5)
        while time.monotonic() < deadline:
            if child.poll() is not None:
                raise SystemExit(f"ndots.py: {log.name} exited:\n{log.read_text()}")
            query = dns.message.make_query("ready.upstream.test.", "A")
            sock.sendto(query.to_wire(), (ADDRESS, port))
            try:
                sock.recvfrom(65535)
                return
            except TimeoutError:
                continue
    raise SystemExit(f"ndots.py: {log.name} never answered:\n{log.read_text()}")


def server_command(name: str, port: int, upstream: int, work: Path) -> list[str]:
    if name.startswith("meshdns"):
        config = work / f"{name}.yaml"
        config.write_text(
            MESHDNS_CONFIG.format(
                address=ADDRESS,
                port=port,
                upstream=upstream,
                work=work,
                search=", ".join(SEARCH),
                autopath=str(name == "meshdns-autopath").lower(),
            )
        )
        twistd = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"
        return [
            sys.executable,
            "-c",
            twistd,
            "-n",
            "--pidfile=",
            "meshdns",
            "--config",
            f"{config}",
        ]
    if name == "dnsmasq":
        return [
            sbin("dnsmasq"),
            "--keep-in-foreground", "--conf-file=/dev/null", "--pid-file=", "--log-facility=-",
            "--bind-interfaces", f"--listen-address={ADDRESS}", f"--port={port}",
            "--no-resolv", "--no-hosts", "--no-poll", f"--server={ADDRESS}#{upstream}",
            "--cache-size=10000",
        ]  # fmt: skip
    if name == "unbound":
        config = work / "unbound.conf"
        config.write_text(
            UNBOUND_CONFIG.format(address=ADDRESS, port=port, upstream=upstream, work=work)
        )
        return [sbin("unbound"), "-d", "-c", str(config)]
    raise SystemExit(f"ndots.py: unknown server {name} (one of {' '.join(SERVERS)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--names", type=int, default=200, help="names, each looked up twice")
    parser.add_argument("--servers", default=" ".join(SERVERS))
    options = parser.parse_args()
    names = [f"w{index}.upstream.test" for index in range(options.names)]
    rows = []
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="meshdns-ndots.")))
        os.chmod(work, 0o755)
        (work / "empty-resolv.conf").write_text("# no nameservers, no search list\n")
        (work / "entries.yaml").write_text("")
        upstream_port = free_port()
        nsd_config = NSD_CONFIG.format(address=ADDRESS, port=upstream_port, work=work)
        for zone, records in ZONES.items():
            (work / f"{zone}.zone").write_text(ZONE.format(zone=zone, records=records))
            nsd_config += f"zone:\n    name: {zone}.\n    zonefile: {zone}.zone\n"
        (work / "nsd.conf").write_text(nsd_config)
        log = work / "nsd.out"
        nsd = stack.enter_context(process([sbin("nsd"), "-d", "-c", str(work / "nsd.conf")], log))
        wait_ready(upstream_port, nsd, log)
        for name in options.servers.split():
            port = free_port()
            log = work / f"{name}.log"
            with process(server_command(name, port, upstream_port, work), log) as child:
                wait_ready(port, child, log)
                for cache in ("cold", "warm"):
                    rows.append(run_pass((ADDRESS, port), work, names).row(name, cache))
    print(f"{options.names} names, each looked up cold then warm; load {os.getloadavg()[0]:.2f}\n")
    print(
        "| server | cache | pod questions / lookup | upstream questions / lookup "
        "| mean ms | p50 ms | p99 ms | failed |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
