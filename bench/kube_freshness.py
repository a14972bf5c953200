# -*- test-case-name: tests.integration.test_kube_freshness_smoke -*-
"""
How fresh, how fast and how small meshdns stays when it reads a large
cluster from the Kubernetes API (issue 18, item 4).

One run, on loopback only:
  1. the test API server (L{tests.support.kubeapi.FakeKubeAPI}), in this
     process, holds N Services over ~200 namespaces (one in ten headless, so
     that EndpointSlice changes show in answers: a ClusterIP Service answers
     its cluster IP whatever its endpoints), one 3-endpoint EndpointSlice
     each, and M ServiceEntries (half with addresses, half given VIPs);
  2. the real C{twistd -n meshdns}, as installed, syncs from it: the time
     from process start to C{/readyz} 200, and to the first answer for the
     last name the Service list hands over;
  3. a steady query stream for names nothing changes (another process, one
     socket, open loop) runs first alone (baseline), then beside a churn of
     changes per second (Services and EndpointSlices added, modified and
     deleted, and ServiceEntries); every change is timed from the API
     server's commit to the first UDP answer that shows it, the changed name
     polled every 5 ms from a thread and socket of its own;
  4. meshdns's VmRSS after the sync and at the end, and its VmHWM (peak).

    .venv/bin/python bench/kube_freshness.py            # full size, about 3 minutes
    .venv/bin/python bench/kube_freshness.py --services 200 --churn-seconds 5 --no-readme

prints a Markdown report and, unless C{--no-readme}, adds it to
C{bench/README.md} as a dated section; C{--json FILE} writes the figures.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import multiprocessing
import os
import platform
import random
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.kubeapi import FakeKubeAPI  # noqa: E402
from tests.support.kubeobjects import endpoint_slice, service, service_entry  # noqa: E402
from tests.support.processes import (  # noqa: E402
    TWISTD,
    child_env,
    free_port,
    outside_the_source_tree,
    stop_process,
)

DOMAIN = "svc.cluster.local"
VIPS = ipaddress.ip_network("240.240.0.0/16")
#: Where each kind of address comes from, so that no two collide.
CLUSTER_IPS = ipaddress.ip_address("10.96.0.1")
ENDPOINTS = ipaddress.ip_address("10.128.0.1")
NEW_CLUSTER_IPS = ipaddress.ip_address("10.100.0.1")
NEW_ENDPOINTS = ipaddress.ip_address("10.200.0.1")
ENTRY_ADDRESSES = ipaddress.ip_address("198.18.0.1")
NEW_ENTRY_ADDRESSES = ipaddress.ip_address("198.19.0.1")
#: A change not answered within this many seconds counts as never seen.
CHANGE_TIMEOUT = 10.0
#: How often a pending change's name is asked, and the cap on all such asking.
PROBE_INTERVAL = 0.005
PROBE_MAX_QPS = 2000
STALL = 0.050
#: Issue 18, item 4.
TARGETS = {"sync_s": 5.0, "p99_change_s": 1.0, "stall_ms": 50.0,
           "steady_rss_mib": 150.0, "peak_rss_mib": 300.0}
CHANGE_KINDS = [
    ("Service", "ADDED"), ("Service", "MODIFIED"), ("Service", "DELETED"),
    ("EndpointSlice", "ADDED"), ("EndpointSlice", "MODIFIED"), ("EndpointSlice", "DELETED"),
    ("ServiceEntry", "ADDED"), ("ServiceEntry", "MODIFIED"), ("ServiceEntry", "DELETED"),
]
#: Services and EndpointSlices make 90% of the changes, ServiceEntries 10%.
CHANGE_WEIGHTS = [15, 15, 15, 15, 15, 15, 10 / 3, 10 / 3, 10 / 3]


def nth(base: ipaddress.IPv4Address, n: int) -> str:
    return str(base + n)


def namespace_of(i: int, namespaces: int) -> str:
    return f"ns{i % namespaces:03d}"


def answered_addresses(wire: bytes) -> tuple[int, list[str]]:
    """A reply's id, and the addresses meshdns answered itself (AA) in it, sorted."""
    reply = dns.message.from_wire(wire)
    if reply.rcode() != dns.rcode.NOERROR or not reply.flags & dns.flags.AA:
        return reply.id, []
    return reply.id, sorted(r.address for rrset in reply.answer for r in rrset
                            if rrset.rdtype == dns.rdatatype.A)


# The cluster.
@dataclass
class Cluster:
    """
    What the API server holds, as the churn needs to know it.

    @ivar cluster_services: ClusterIP Services the churn may change: key -> IP.
    @ivar headless: headless Services: key -> {slice name -> addresses}.
    @ivar entries: ServiceEntries the churn may change: key -> host.
    @ivar steady_names: names the churn never touches, for the query stream.
    @ivar late_name: the last Service name in list order.
    """

    namespaces: int
    cluster_services: dict[tuple[str, str], str] = field(default_factory=dict)
    headless: dict[tuple[str, str], dict[str, list[str]]] = field(default_factory=dict)
    entries: dict[tuple[str, str], str] = field(default_factory=dict)
    steady_names: list[str] = field(default_factory=list)
    late_name: str = ""
    late_address: str = ""
    endpoints: int = 0


def build_cluster(api: FakeKubeAPI, services: int, entries: int,
                  namespaces: int) -> Cluster:
    """Fill the API server (one C{bulk_create}); return what the churn needs."""
    cluster = Cluster(namespaces)
    objects: list[dict[str, Any]] = []
    for i in range(services):
        ns, name = namespace_of(i, namespaces), f"svc-{i:05d}"
        addresses = tuple(nth(ENDPOINTS, 3 * i + k) for k in range(3))
        headless = i % 10 == 0
        objects.append(service(ns, name, "None" if headless else nth(CLUSTER_IPS, i)))
        objects.append(endpoint_slice(ns, name, addresses, hostnames=headless))
        cluster.endpoints += len(addresses)
        if headless:
            cluster.headless[(ns, name)] = {f"{name}-x7k2p": list(addresses)}
        elif i % 10 <= 5:
            cluster.cluster_services[(ns, name)] = nth(CLUSTER_IPS, i)
        else:
            cluster.steady_names.append(f"{name}.{ns}.{DOMAIN}")
    for i in range(entries):
        ns, name, host = namespace_of(i, namespaces), f"se-{i:05d}", f"se-{i:05d}.example.com"
        addresses = (nth(ENTRY_ADDRESSES, i),) if i % 2 else ()
        objects.append(service_entry(ns, name, (host,), addresses))
        if i % 4 == 3:
            cluster.steady_names.append(host)
        else:
            cluster.entries[(ns, name)] = host
    api.bulk_create(objects)
    last = max((i for i in range(services) if i % 10),
               key=lambda i: (namespace_of(i, namespaces), i))
    cluster.late_name = f"svc-{last:05d}.{namespace_of(last, namespaces)}.{DOMAIN}"
    cluster.late_address = nth(CLUSTER_IPS, last)
    return cluster


# Change-to-answer.
@dataclass
class Change:
    """One change made, and when the first answer showing it came."""

    kind: str
    name: str
    expected: Callable[[list[str]], bool]
    committed: float
    release: tuple[str, str, str]
    seen: float | None = None

    @property
    def latency(self) -> float:
        return float("inf") if self.seen is None else self.seen - self.committed


class Prober(threading.Thread):
    """
    Asks the name of every pending change every L{PROBE_INTERVAL} (fewer
    when more than L{PROBE_MAX_QPS} would be asked), from one socket, until
    an answer shows the change or L{CHANGE_TIMEOUT} passes.
    """

    def __init__(self, port: int, on_done: Callable[[Change], None]) -> None:
        super().__init__(daemon=True, name="prober")
        self.port, self.on_done = port, on_done
        self.lock = threading.Lock()
        self.pending: list[Change] = []
        self.done: list[Change] = []
        self.stopping = threading.Event()
        self.sent = 0

    def add(self, change: Change) -> None:
        with self.lock:
            self.pending.append(change)

    def idle(self) -> bool:
        with self.lock:
            return not self.pending

    def run(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        asked: dict[int, Change] = {}
        next_ask: dict[int, float] = {}
        query_id = 0
        while not self.stopping.is_set():
            now = time.monotonic()
            with self.lock:
                pending = list(self.pending)
            interval = max(PROBE_INTERVAL, len(pending) / PROBE_MAX_QPS)
            for change in pending:
                if now - change.committed > CHANGE_TIMEOUT:
                    self._finish(change)
                elif next_ask.get(id(change), 0.0) <= now:
                    query_id = (query_id + 1) % 65536
                    query = dns.message.make_query(change.name, "A", id=query_id)
                    query.flags &= ~dns.flags.RD
                    sock.sendto(query.to_wire(), ("127.0.0.1", self.port))
                    asked[query_id] = change
                    next_ask[id(change)] = now + interval
                    self.sent += 1
            readable, _, _ = select.select([sock], [], [], 0.001)
            while readable:
                try:
                    wire = sock.recv(4096)
                except BlockingIOError:
                    break
                received = time.monotonic()
                reply_id, addresses = answered_addresses(wire)
                change = asked.pop(reply_id, None)
                if change is not None and change.seen is None and change.expected(addresses):
                    change.seen = received
                    self._finish(change)
        sock.close()

    def _finish(self, change: Change) -> None:
        with self.lock:
            if change in self.pending:
                self.pending.remove(change)
                self.done.append(change)
        self.on_done(change)


class Churn:
    """
    Makes the changes, at a steady rate, on objects no pending change
    touches, and hands each to the L{Prober}.
    """

    def __init__(self, api: FakeKubeAPI, cluster: Cluster, prober: Prober, seed: int) -> None:
        self.api, self.cluster, self.prober = api, cluster, prober
        self.random = random.Random(seed)
        self.busy: set[tuple[str, str, str]] = set()
        self.lock = threading.Lock()
        self.counter = 0
        self.skipped = 0

    def release(self, change: Change) -> None:
        with self.lock:
            self.busy.discard(change.release)

    def run(self, rate: float, seconds: float) -> int:
        """Make C{rate} changes a second for C{seconds}; return how many were made."""
        start, made = time.monotonic(), 0
        for k in range(int(rate * seconds)):
            due = start + k / rate
            time.sleep(max(0.0, due - time.monotonic()))
            (kind, verb), = self.random.choices(CHANGE_KINDS, CHANGE_WEIGHTS)
            if getattr(self, f"_{kind}_{verb}".lower())():
                made += 1
            else:
                self.skipped += 1
        return made

    def _pick(self, kind: str, pool: dict[tuple[str, str], Any]) -> tuple[str, str] | None:
        """A random object of C{pool} no pending change touches, marked busy."""
        keys = list(pool)
        for _ in range(20 if keys else 0):
            key = self.random.choice(keys)
            with self.lock:
                if (kind, *key) not in self.busy:
                    self.busy.add((kind, *key))
                    return key
        return None

    def _unbusy(self, kind: str, key: tuple[str, str]) -> None:
        with self.lock:
            self.busy.discard((kind, *key))

    def _new(self) -> int:
        self.counter += 1
        return self.counter

    def _commit(self, kind: str, name: str, expected: Callable[[list[str]], bool],
                release: tuple[str, str, str], action: Callable[[], Any]) -> bool:
        committed = time.monotonic()
        action()
        self.prober.add(Change(kind, name, expected, committed, release))
        return True

    def _service_added(self) -> bool:
        n = self._new()
        ns, name, ip = namespace_of(n, self.cluster.namespaces), f"new-{n:05d}", nth(
            NEW_CLUSTER_IPS, n)
        with self.lock:
            self.busy.add(("Service", ns, name))
        self.cluster.cluster_services[(ns, name)] = ip
        return self._commit("Service ADDED", f"{name}.{ns}.{DOMAIN}", _exactly([ip]),
                            ("Service", ns, name), lambda: self.api.create(service(ns, name, ip)))

    def _service_modified(self) -> bool:
        key = self._pick("Service", self.cluster.cluster_services)
        if key is None:
            return False
        ns, name = key
        ip = nth(NEW_CLUSTER_IPS, 32768 + self._new())
        self.cluster.cluster_services[key] = ip
        return self._commit("Service MODIFIED", f"{name}.{ns}.{DOMAIN}", _exactly([ip]),
                            ("Service", ns, name), lambda: self.api.update(service(ns, name, ip)))

    def _service_deleted(self) -> bool:
        key = self._pick("Service", self.cluster.cluster_services)
        if key is None:
            return False
        ns, name = key
        del self.cluster.cluster_services[key]
        return self._commit("Service DELETED", f"{name}.{ns}.{DOMAIN}", _exactly([]),
                            ("Service", ns, name),
                            lambda: self.api.delete("Service", ns, name))

    def _slice_change(self, verb: str, slices: dict[str, list[str]], ns: str, name: str,
                      action: Callable[[], Any]) -> bool:
        expected = sorted(a for addresses in slices.values() for a in addresses)
        return self._commit(f"EndpointSlice {verb}", f"{name}.{ns}.{DOMAIN}",
                            _exactly(expected), ("EndpointSlice", ns, name), action)

    def _endpointslice_added(self) -> bool:
        key = self._pick("EndpointSlice", self.cluster.headless)
        if key is None:
            return False
        ns, name = key
        n = self._new()
        addresses = [nth(NEW_ENDPOINTS, 3 * n + k) for k in range(3)]
        slices = self.cluster.headless[key]
        slices[f"{name}-c{n}"] = addresses
        new = endpoint_slice(ns, name, tuple(addresses), hostnames=True, suffix=f"c{n}")
        return self._slice_change("ADDED", slices, ns, name, lambda: self.api.create(new))

    def _pick_slice(self) -> tuple[str, str, dict[str, list[str]], str] | None:
        """A headless Service's namespace, name, slices, and one slice of them to change."""
        key = self._pick("EndpointSlice", self.cluster.headless)
        if key is None:
            return None
        slices = self.cluster.headless[key]
        if not slices:
            self._unbusy("EndpointSlice", key)
            return None
        return (*key, slices, self.random.choice(sorted(slices)))

    def _endpointslice_modified(self) -> bool:
        picked = self._pick_slice()
        if picked is None:
            return False
        ns, name, slices, slice_name = picked
        addresses = [*slices[slice_name][1:], nth(NEW_ENDPOINTS, 3 * self._new())]
        slices[slice_name] = addresses
        changed = endpoint_slice(ns, name, tuple(addresses), hostnames=True,
                                 suffix=slice_name.rpartition("-")[2])
        return self._slice_change("MODIFIED", slices, ns, name, lambda: self.api.update(changed))

    def _endpointslice_deleted(self) -> bool:
        picked = self._pick_slice()
        if picked is None:
            return False
        ns, name, slices, slice_name = picked
        del slices[slice_name]
        return self._slice_change("DELETED", slices, ns, name,
                                  lambda: self.api.delete("EndpointSlice", ns, slice_name))

    def _serviceentry_added(self) -> bool:
        n = self._new()
        ns, name = namespace_of(n, self.cluster.namespaces), f"new-se-{n:05d}"
        host = f"{name}.example.com"
        addresses = (nth(NEW_ENTRY_ADDRESSES, n),) if n % 2 else ()
        with self.lock:
            self.busy.add(("ServiceEntry", ns, name))
        self.cluster.entries[(ns, name)] = host
        expected = _exactly(list(addresses)) if addresses else _one_vip
        return self._commit("ServiceEntry ADDED", host, expected, ("ServiceEntry", ns, name),
                            lambda: self.api.create(service_entry(ns, name, (host,), addresses)))

    def _serviceentry_modified(self) -> bool:
        key = self._pick("ServiceEntry", self.cluster.entries)
        if key is None:
            return False
        (ns, name), host = key, self.cluster.entries[key]
        address = nth(NEW_ENTRY_ADDRESSES, 32768 + self._new())
        changed = service_entry(ns, name, (host,), (address,))
        return self._commit("ServiceEntry MODIFIED", host, _exactly([address]),
                            ("ServiceEntry", ns, name), lambda: self.api.update(changed))

    def _serviceentry_deleted(self) -> bool:
        key = self._pick("ServiceEntry", self.cluster.entries)
        if key is None:
            return False
        ns, name = key
        host = self.cluster.entries.pop(key)
        return self._commit("ServiceEntry DELETED", host, _exactly([]),
                            ("ServiceEntry", ns, name),
                            lambda: self.api.delete("ServiceEntry", ns, name))


def _exactly(addresses: list[str]) -> Callable[[list[str]], bool]:
    expected = sorted(addresses)
    return lambda answered: answered == expected


def _one_vip(answered: list[str]) -> bool:
    return len(answered) == 1 and ipaddress.ip_address(answered[0]) in VIPS


# The steady query stream (its own process, so that this one's threads do not delay it).
def query_stream(port: int, names: list[str], qps: float, seconds: float,
                 results: Any) -> None:
    """
    Ask C{names} in turn, C{qps} a second for C{seconds} from one socket
    (open loop: a slow answer does not delay the next query), and put the
    figures on the C{results} queue.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    wires = []
    for i in range(4096):
        query = dns.message.make_query(names[i % len(names)], "A", id=i)
        query.flags &= ~dns.flags.RD
        wires.append(query.to_wire())
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    answers: list[float] = []
    start = time.monotonic()
    total = int(qps * seconds)
    k = 0
    while True:
        now = time.monotonic()
        while k < total and start + k / qps <= now:
            wire = wires[k % len(wires)]
            sock.sendto(wire, ("127.0.0.1", port))
            sent_at[k % len(wires)] = now
            k += 1
        if k >= total and (not sent_at or now > start + seconds + 2.0):
            break
        wait = max(0.0, min(start + k / qps - now, 0.002)) if k < total else 0.01
        if select.select([sock], [], [], wait)[0]:
            while True:
                try:
                    wire = sock.recv(4096)
                except BlockingIOError:
                    break
                received = time.monotonic()
                sent = sent_at.pop(int.from_bytes(wire[:2], "big"), None)
                if sent is not None:
                    latencies.append(received - sent)
                    answers.append(received)
    sock.close()
    gaps = [b - a for a, b in zip(answers, answers[1:], strict=False)]
    latencies.sort()
    results.put({
        "sent": total, "answered": len(latencies), "lost": total - len(latencies),
        "p50_ms": 1000 * percentile(latencies, 50), "p99_ms": 1000 * percentile(latencies, 99),
        "max_ms": 1000 * (latencies[-1] if latencies else float("inf")),
        "over_50ms": sum(1 for x in latencies if x > STALL),
        "longest_gap_ms": 1000 * max(gaps, default=0.0),
    })


def percentile(ordered: list[float], p: float) -> float:
    """The nearest-rank percentile of an ordered list (inf when empty)."""
    if not ordered:
        return float("inf")
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


class Stream:
    """L{query_stream} in a process of its own."""

    def __init__(self, port: int, names: list[str], qps: float, seconds: float) -> None:
        context = multiprocessing.get_context("spawn")
        self.results = context.Queue()
        self.process = context.Process(target=query_stream,
                                       args=(port, names, qps, seconds, self.results))
        self.process.start()

    def result(self, timeout: float) -> dict[str, float]:
        figures = self.results.get(timeout=timeout)
        self.process.join(5)
        return figures


# meshdns.
def reinstall() -> None:
    """Install meshdns from this tree into the running venv, as the tests run it."""
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--force-reinstall",
                    "--no-deps", str(ROOT)], check=True)


def memory_mib(pid: int) -> dict[str, float]:
    figures = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            figures[key] = int(rest.split()[0]) / 1024
    return figures


def udp_drops(pid: int, port: int) -> int:
    """Datagrams the kernel dropped on the process's UDP sockets on C{port} (buffer full)."""
    drops = 0
    for line in Path(f"/proc/{pid}/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rpartition(":")[2], 16) == port:
            drops += int(fields[-1])
    return drops


#: twistd with a SIGUSR2 handler that writes tracemalloc's biggest allocation
#: sites to the file named by C{MESHDNS_BENCH_TRACEMALLOC} (C{--tracemalloc}).
TRACED_TWISTD = [
    TWISTD[0], "-X", "tracemalloc=25", "-c",
    "import os, signal, sys, tracemalloc; sys.argv[0] = 'twistd'\n"
    "def dump(*_):\n"
    "    top = tracemalloc.take_snapshot().statistics('traceback')[:25]\n"
    "    with open(os.environ['MESHDNS_BENCH_TRACEMALLOC'], 'a') as out:\n"
    "        for stat in top:\n"
    "            print(f'{stat.size / 2**20:.1f} MiB in {stat.count} blocks', file=out)\n"
    "            print(*stat.traceback.format(most_recent_first=True)[:12], sep='\\n', file=out)\n"
    "signal.signal(signal.SIGUSR2, dump)\n"
    "from twisted.scripts.twistd import run; run()",
    *TWISTD[3:],
]


def ask(port: int, name: str, timeout: float) -> list[str] | None:
    """The addresses meshdns answers for C{name}, or None without an answer."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        query = dns.message.make_query(name, "A")
        sock.sendto(query.to_wire(), ("127.0.0.1", port))
        try:
            return answered_addresses(sock.recv(4096))[1]
        except OSError:
            return None


def ready(admin: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=0.5) as reply:
            return reply.status == 200
    except OSError:
        return False


def start_meshdns(home: Path, api: FakeKubeAPI, namespace: str, tracemalloc: str | None
                  ) -> tuple[subprocess.Popen, int, int, float]:
    """Start C{twistd -n meshdns}; the process, DNS and admin ports, and start time."""
    port, admin = free_port(), free_port()
    (home / "resolv.conf").write_text("")
    config = {
        "listen": {"address": "127.0.0.1", "port": port},
        "admin": {"address": "127.0.0.1", "port": admin},
        "upstream": {"resolv_conf": str(home / "resolv.conf")},
        "mesh": {"namespace": namespace},
        "kubernetes": {"enabled": True,
                       "kubeconfig": str(api.write_kubeconfig(home / "kubeconfig"))},
    }
    (home / "meshdns.yaml").write_text(yaml.safe_dump(config))
    output = (home / "meshdns.out").open("wb")
    env = child_env()
    if tracemalloc:
        env["MESHDNS_BENCH_TRACEMALLOC"] = tracemalloc
    started = time.monotonic()
    process = subprocess.Popen(
        [*(TRACED_TWISTD if tracemalloc else TWISTD), "--logfile", str(home / "meshdns.log"),
         "meshdns", "--config", str(home / "meshdns.yaml")],
        cwd=outside_the_source_tree(), env=env, stdout=output, stderr=subprocess.STDOUT)
    return process, port, admin, started


def wait_for_sync(process: subprocess.Popen, port: int, admin: int, late_name: str,
                  expected: list[str], started: float, limit: float) -> dict[str, float]:
    """Seconds from start to C{/readyz} 200 and to the late name's first answer."""
    figures: dict[str, float] = {}
    while len(figures) < 2:
        if process.poll() is not None:
            raise RuntimeError(f"meshdns exited ({process.returncode}) during the sync")
        if time.monotonic() - started > limit:
            raise RuntimeError(f"meshdns did not sync within {limit:.0f} s: {figures}")
        if "ready_s" not in figures and ready(admin):
            figures["ready_s"] = time.monotonic() - started
        if "late_name_s" not in figures and ask(port, late_name, 0.05) == expected:
            figures["late_name_s"] = time.monotonic() - started
        time.sleep(0.01)
    return figures


# The run.
def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.install:
        reinstall()
    results: dict[str, Any] = {"size": {"services": args.services,
                                        "service_entries": args.service_entries,
                                        "namespaces": args.namespaces}}
    with FakeKubeAPI() as api, tempfile.TemporaryDirectory() as scratch:
        loaded = time.monotonic()
        cluster = build_cluster(api, args.services, args.service_entries, args.namespaces)
        results["size"]["endpoints"] = cluster.endpoints
        results["api_load_s"] = time.monotonic() - loaded
        home = Path(scratch)
        process, port, admin, started = start_meshdns(
            home, api, namespace_of(0, args.namespaces), args.tracemalloc)
        try:
            sampler = py_spy(process.pid, args.py_spy, "sync", 0)
            results["sync"] = wait_for_sync(process, port, admin, cluster.late_name,
                                            [cluster.late_address], started, 120)
            if sampler is not None:
                sampler.send_signal(signal.SIGINT)
                sampler.wait(30)
            time.sleep(1.0)
            results["memory_after_sync"] = memory_mib(process.pid)
            snapshot(process.pid, args.tracemalloc, "after the sync")
            names = cluster.steady_names
            random.Random(args.seed).shuffle(names)
            drops = udp_drops(process.pid, port)
            results["baseline"] = Stream(port, names, args.qps, args.baseline_seconds).result(
                args.baseline_seconds + 30)
            results["baseline"]["kernel_drops"] = udp_drops(process.pid, port) - drops
            drops = udp_drops(process.pid, port)
            sampler = py_spy(process.pid, args.py_spy, "churn", args.churn_seconds)
            results.update(churn(api, cluster, port, names, args))
            results["during_churn"]["kernel_drops"] = udp_drops(process.pid, port) - drops
            if sampler is not None:
                sampler.wait(30)
            time.sleep(args.settle_seconds)
            results["memory_end"] = memory_mib(process.pid)
            snapshot(process.pid, args.tracemalloc, "at the end")
            results["alive"] = process.poll() is None
        finally:
            if args.keep_log:
                Path(args.keep_log).write_bytes((home / "meshdns.log").read_bytes())
            results["exit_code"] = stop_process(process)
    return results


def py_spy(pid: int, folder: str | None, phase: str, seconds: float
           ) -> subprocess.Popen | None:
    """
    Sample C{pid} with C{py-spy record} (every thread, with idle ones; raw
    collapsed stacks) into C{folder/phase.txt}, for C{seconds} or until
    interrupted (0).
    """
    if folder is None:
        return None
    Path(folder).mkdir(parents=True, exist_ok=True)
    beside = Path(sys.executable).with_name("py-spy")
    command = [str(beside) if beside.exists() else "py-spy", "record", "-p", str(pid),
               "--threads", "--idle", "--format", "raw", "-r", "200",
               "-o", str(Path(folder) / f"{phase}.txt")]
    if seconds:
        command += ["-d", str(int(seconds))]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def snapshot(pid: int, path: str | None, moment: str) -> None:
    """Have a C{--tracemalloc} meshdns write its biggest allocation sites to C{path}."""
    if path is None:
        return
    with open(path, "a") as out:
        print(f"== {moment}", file=out)
    os.kill(pid, signal.SIGUSR2)
    time.sleep(5.0)


def churn(api: FakeKubeAPI, cluster: Cluster, port: int, names: list[str],
          args: argparse.Namespace) -> dict[str, Any]:
    """The churn with the query stream beside it; change-to-answer by kind, and the stream."""
    churner: Churn
    prober = Prober(port, lambda change: churner.release(change))
    churner = Churn(api, cluster, prober, args.seed)
    prober.start()
    stream = Stream(port, names, args.qps, args.churn_seconds)
    made = churner.run(args.rate, args.churn_seconds)
    during = stream.result(CHANGE_TIMEOUT + 30)
    deadline = time.monotonic() + CHANGE_TIMEOUT + 1
    while not prober.idle() and time.monotonic() < deadline:
        time.sleep(0.05)
    prober.stopping.set()
    prober.join(5)
    by_kind: dict[str, list[float]] = defaultdict(list)
    for change in prober.done:
        by_kind[change.kind].append(change.latency)
        by_kind["all"].append(change.latency)
    changes = {}
    for kind, latencies in sorted(by_kind.items()):
        latencies.sort()
        changes[kind] = {"count": len(latencies),
                         "unseen": sum(1 for x in latencies if x == float("inf")),
                         "over_1s": sum(1 for x in latencies if x > 1.0),
                         "p50_ms": 1000 * percentile(latencies, 50),
                         "p99_ms": 1000 * percentile(latencies, 99),
                         "max_ms": 1000 * latencies[-1]}
    return {"changes": changes, "changes_made": made, "changes_skipped": churner.skipped,
            "probe_queries": prober.sent, "during_churn": during}


# The report.
def machine() -> dict[str, str]:
    model = next((line.split(":", 1)[1].strip()
                  for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return {"date": time.strftime("%d %b %Y", time.gmtime()), "cpus": str(os.cpu_count()),
            "model": model, "uptime": load}


def coredns_mib(pods: int, services: int) -> float:
    """CoreDNS's sizing with default settings (coredns/deployment, Scaling_CoreDNS.md)."""
    return (pods + services) / 1000 + 54


def verdict(value: float, target: float, unit: str) -> str:
    if value < target:
        return f"met ({target - value:.3g} {unit} to spare)"
    if value == float("inf"):
        return "missed (never seen)"
    return f"**missed** by {value - target:.3g} {unit} ({value / target:.2g}× the target)"


def fmt(value: float, digits: int = 1) -> str:
    return "never" if value == float("inf") else f"{value:.{digits}f}"


def report(results: dict[str, Any], host: dict[str, str]) -> str:
    size, sync = results["size"], results["sync"]
    after, end = results["memory_after_sync"], results["memory_end"]
    base, during = results["baseline"], results["during_churn"]
    changes = results["changes"]
    everything = changes.get("all", {"p99_ms": float("inf"), "count": 0, "unseen": 0})
    coredns = coredns_mib(size["endpoints"], size["services"])
    lines = [
        f"Cluster: {size['services']:,} Services over {size['namespaces']} namespaces "
        f"(one in ten headless), {size['services']:,} EndpointSlices "
        f"({size['endpoints']:,} endpoints), {size['service_entries']:,} ServiceEntries "
        "(half with addresses). Machine: "
        f"{host['cpus']} × {host['model']}; `uptime`: {host['uptime']}.",
        "",
        "| Measure | Figure |",
        "|---|---|",
        f"| Initial sync: start to `/readyz` 200 | {sync['ready_s']:.2f} s |",
        f"| Initial sync: start to the last-listed Service's first answer "
        f"| {sync['late_name_s']:.2f} s |",
        f"| Changes made (rate × seconds) / skipped (object busy) "
        f"| {results['changes_made']} / {results['changes_skipped']} |",
    ]
    for kind, figures in changes.items():
        label = "every change" if kind == "all" else kind
        lines.append(f"| Change to answer, {label} ({figures['count']}; "
                     f"{figures['over_1s']} over 1 s, {figures['unseen']} never seen in "
                     f"{CHANGE_TIMEOUT:.0f} s): p50 / p99 / max "
                     f"| {fmt(figures['p50_ms'])} / {fmt(figures['p99_ms'])} / "
                     f"{fmt(figures['max_ms'])} ms |")
    for label, stream in (("no churn", base), ("during churn", during)):
        lines.append(
            f"| Queries {label} ({stream['sent']:,}, {stream['lost']} lost): p50 / p99 / max; "
            f"over 50 ms; longest answer gap | {fmt(stream['p50_ms'], 2)} / "
            f"{fmt(stream['p99_ms'], 2)} / {fmt(stream['max_ms'])} ms; {stream['over_50ms']}; "
            f"{fmt(stream['longest_gap_ms'])} ms |")
    lines.append(f"| Queries dropped by the kernel, meshdns's socket buffer full "
                 f"(no churn / churn; the probes' queries included) "
                 f"| {base.get('kernel_drops', 0)} / {during['kernel_drops']} |")
    lines += [
        f"| RSS after sync / at the end / peak (VmHWM) | {after['VmRSS']:.0f} / "
        f"{end['VmRSS']:.0f} / {end['VmHWM']:.0f} MiB |",
        f"| CoreDNS's sizing for the same cluster, (Pods + Services) / 1000 + 54 "
        f"| {coredns:.0f} MB |",
        "",
        "| Target (issue 18, item 4) | Figure | Verdict |",
        "|---|---|---|",
        f"| Initial sync < {TARGETS['sync_s']:.0f} s | {sync['ready_s']:.2f} s "
        f"| {verdict(sync['ready_s'], TARGETS['sync_s'], 's')} |",
        f"| Change to answer p99 < {TARGETS['p99_change_s']:.0f} s "
        f"| {fmt(everything['p99_ms'] / 1000, 3)} s "
        f"| {verdict(everything['p99_ms'] / 1000, TARGETS['p99_change_s'], 's')} |",
        f"| No reactor stall > {TARGETS['stall_ms']:.0f} ms (slowest query during churn) "
        f"| {fmt(during['max_ms'])} ms "
        f"| {verdict(during['max_ms'], TARGETS['stall_ms'], 'ms')} |",
        f"| Steady RSS < {TARGETS['steady_rss_mib']:.0f} MB | {end['VmRSS']:.0f} MiB "
        f"| {verdict(end['VmRSS'], TARGETS['steady_rss_mib'], 'MiB')} |",
        f"| Peak RSS < {TARGETS['peak_rss_mib']:.0f} MB | {end['VmHWM']:.0f} MiB "
        f"| {verdict(end['VmHWM'], TARGETS['peak_rss_mib'], 'MiB')} |",
    ]
    return "\n".join(lines) + "\n"


def add_to_readme(readme: Path, section: str, host: dict[str, str]) -> None:
    """Put C{section} first under "## Results", the newest first as the others are."""
    text = readme.read_text()
    heading = (f"### {host['date']}: Kubernetes API source, freshness and memory "
               "(issue 18, `bench/kube_freshness.py`)\n\n")
    marker = "## Results\n\n"
    at = text.index(marker) + len(marker)
    readme.write_text(text[:at] + heading + section + "\n" + text[at:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=20_000)
    parser.add_argument("--service-entries", type=int, default=2_000)
    parser.add_argument("--namespaces", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0, help="changes a second")
    parser.add_argument("--churn-seconds", type=float, default=60.0)
    parser.add_argument("--baseline-seconds", type=float, default=15.0)
    parser.add_argument("--settle-seconds", type=float, default=3.0,
                        help="quiet time before the last memory reading")
    parser.add_argument("--qps", type=float, default=500.0, help="the query stream's rate")
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--no-install", dest="install", action="store_false",
                        help="use meshdns as installed now (default: reinstall from this tree)")
    parser.add_argument("--no-readme", dest="readme", action="store_false",
                        help="do not add the report to bench/README.md")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--keep-log", help="copy meshdns's log here")
    parser.add_argument("--py-spy", metavar="FOLDER",
                        help="profile the sync and the churn with py-spy into FOLDER")
    parser.add_argument("--tracemalloc", metavar="FILE",
                        help="run meshdns under tracemalloc (slow: the times mean nothing) "
                             "and write its biggest allocation sites to FILE")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    results = run(args)
    host = machine()
    results["machine"] = host
    text = report(results, host)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    if args.readme:
        add_to_readme(ROOT / "bench" / "README.md", text, host)
    return 0


if __name__ == "__main__":
    sys.exit(main())
