"""
Autopath end to end, with glibc's own resolver: one C{twistd -n meshdns}
with per-client views on a "node" network namespace, and two "pod"
namespaces of different Kubernetes namespaces, each with the resolv.conf
kubelet writes for a ClusterFirst pod on a node whose own search line is
C{node.test}::

    nameserver <node>
    search <ns>.svc.cluster.local svc.cluster.local cluster.local node.test
    options ndots:5

A third pod, of C{team-a}, has DNS settings of its own (its Pod object's
C{spec.dnsConfig.searches: [corp.test]}, which kubelet appends to the
ClusterFirst list): autopath must leave it alone.

C{getent ahosts NAME} asks for A and AAAA of NAME under each search domain
in turn, then NAME alone (NAME has fewer than 5 dots). The pod's questions
are counted in meshdns's query log, the upstream's in the fake upstream's
own counts. The same cluster without autopath is the reference: the
addresses and NXDOMAINs must be the same, only the questions fewer.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.cluster import pods_slice, service
from tests.support.netns import Netns, node_with_pods, require_netns
from tests.support.processes import FAKE_UPSTREAM, TWISTD, child_env, outside_the_source_tree
from tests.support.required import require_command

NODE = "10.98.0.1"
#: Each pod: address, namespace, its dnsConfig search domains.
PODS = (
    ("10.98.0.11", "team-a", ()),
    ("10.98.0.12", "team-b", ()),
    ("10.98.0.13", "team-a", ("corp.test",)),
)
UPSTREAM = "127.0.0.53"
NODE_DOMAIN = "node.test"
#: A host only the node's search domain finds (the fake upstream's --record).
INTRANET = ("intranet", "192.0.2.50")

#: Prints the fake upstream's counts as JSON (run inside the node's namespace).
COUNTS = (
    "import json, sys; sys.path.insert(0, sys.argv[1]); from fakeupstream import read_counts;"
    "print(json.dumps([[*k, v] for k, v in read_counts(sys.argv[2], 53).items()]))"
)


@dataclass
class Node:
    node: Netns
    pods: list[Netns]
    log: Path

    def getent(self, pod: int, name: str) -> tuple[int, list[str]]:
        """C{getent ahosts NAME} in pod C{pod}: its exit code and addresses (first of each)."""
        result = self.pods[pod].run(["getent", "ahosts", name], check=False)
        addresses = sorted({line.split()[0] for line in result.stdout.splitlines() if line})
        return result.returncode, addresses

    def pod_questions(self, pod: int) -> Counter[str]:
        """The questions of pod C{pod} in meshdns's query log: C{"name TYPE"} -> count."""
        prefix = f"Query from {PODS[pod][0]}:"
        found: Counter[str] = Counter()
        for line in self.log.read_text().splitlines():
            if prefix in line:
                question = line.split("): ", 1)[1].split(" -> ", 1)[0]
                found[question] += 1
        return found

    def upstream_questions(self) -> Counter[str]:
        """The fake upstream's questions so far: C{"name TYPE"} -> count."""
        result = self.node.run(
            [sys.executable, "-c", COUNTS, str(FAKE_UPSTREAM.parent), UPSTREAM], env=child_env()
        )
        found: Counter[str] = Counter()
        for name, rdtype, _, count in json.loads(result.stdout):
            found[f"{name} {rdtype}"] += count
        return found

    def settle(self) -> None:
        """Wait (bounded) until the query log stops growing: every reply is logged."""
        deadline = time.monotonic() + 3
        size = -1
        while self.log.stat().st_size != size and time.monotonic() < deadline:
            size = self.log.stat().st_size
            time.sleep(0.2)


def search_line(namespace: str, searches: tuple[str, ...] = ()) -> list[str]:
    """The search line kubelet writes for a ClusterFirst pod with C{dnsConfig.searches}."""
    domains = [f"{namespace}.svc.cluster.local", "svc.cluster.local", "cluster.local", NODE_DOMAIN]
    return domains + list(searches)


def under_every_domain(name: str, namespace: str, searches: tuple[str, ...] = ()) -> list[str]:
    """What glibc asks for C{name} in a pod of C{namespace}, in order."""
    return [f"{name}.{domain}." for domain in search_line(namespace, searches)] + [f"{name}."]


def pod_object(name: str, address: str, namespace: str, searches: tuple[str, ...]) -> str:
    """A running Pod's document, with its dnsConfig search domains."""
    return (
        f"\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {namespace}}}\n"
        f"spec: {{dnsConfig: {{searches: {list(searches)}}}}}\n"
        f"status: {{phase: Running, podIP: {address}}}\n"
    )


def assert_searched(
    asked: list[str], questions: Counter[str], upstream: Counter[str], autopath: bool
) -> None:
    """
    Every name of C{asked} (glibc's order) went upstream once, A and AAAA;
    the pod asked only the first with autopath, every one without.
    """
    every = {f"{name} {rdtype}": 1 for name in asked for rdtype in ("A", "AAAA")}
    assert upstream == every
    if autopath:
        assert questions == {f"{asked[0]} A": 1, f"{asked[0]} AAAA": 1}
    else:
        assert questions == every


@pytest.fixture(params=[True, False], ids=["autopath", "without"])
def node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Node]:
    require_netns()
    require_command("getent", "libc-bin")
    with ExitStack() as stack:
        node, pods = node_with_pods(
            stack, NODE, [(a, search_line(ns, searches)) for a, ns, searches in PODS]
        )
        upstream = node.popen(
            [
                sys.executable, str(FAKE_UPSTREAM), "--address", UPSTREAM, "--port", "53",
                "--record", f"{INTRANET[0]}.{NODE_DOMAIN}={INTRANET[1]}",
            ],
            env=child_env(),
            cwd=outside_the_source_tree(),
        )
        assert upstream.stdout is not None and upstream.stdout.readline().startswith("READY ")
        entry_file = tmp_path / "entries.yaml"
        entry_file.write_text(
            service("team-a", "web", "10.96.1.1")
            + service("team-b", "web", "10.96.2.1")
            + pods_slice("team-a", "web", PODS[0][0])
            + pods_slice("team-b", "web", PODS[1][0])
            + pod_object("own-dns", *PODS[2])
        )
        # The node's own resolv.conf: its search line ends every pod's list.
        (tmp_path / "resolv.conf").write_text(f"search {NODE_DOMAIN}\n")
        config = tmp_path / "meshdns.yaml"
        config.write_text(
            f"listen: {{address: {NODE}, port: 53, allow: [10.98.0.0/24]}}\n"
            f"upstream: {{servers: ['{UPSTREAM}:53'], resolv_conf: {tmp_path}/resolv.conf}}\n"
            f"mesh: {{per_client_views: true, autopath: {str(request.param).lower()}}}\n"
            "log: {queries: true}\n"
            "admin: {port: 0}\n"
            f"entries: [{entry_file}]\n"
        )
        log = tmp_path / "meshdns.log"
        node.popen(
            [*TWISTD, "--logfile", str(log), "meshdns", "--config", str(config)],
            env=child_env(),
            cwd=outside_the_source_tree(),
        )
        found = Node(node, pods, log)
        deadline = time.monotonic() + 20
        while found.getent(0, "web.team-a.svc.cluster.local.") != (0, ["10.96.1.1"]):
            if time.monotonic() > deadline:
                raise AssertionError(log.read_text() if log.exists() else "no log")
            time.sleep(0.2)
        found.settle()
        yield found


def test_an_external_name(node: Node, request: pytest.FixtureRequest) -> None:
    """One A and one AAAA from the pod with autopath; each candidate upstream once."""
    before, pod_before = node.upstream_questions(), node.pod_questions(0)
    assert node.getent(0, "www.upstream.test") == (0, ["127.0.0.10", "::10"])
    node.settle()
    asked = under_every_domain("www.upstream.test", "team-a")
    assert_searched(
        asked,
        node.pod_questions(0) - pod_before,
        node.upstream_questions() - before,
        "autopath" in request.node.callspec.id,
    )
    # The other namespace's pod: its own first domain, the rest from the cache.
    before = node.upstream_questions()
    assert node.getent(1, "www.upstream.test") == (0, ["127.0.0.10", "::10"])
    first = under_every_domain("www.upstream.test", "team-b")[0]
    assert node.upstream_questions() - before == {f"{first} A": 1, f"{first} AAAA": 1}


def test_a_name_under_the_node_domain(node: Node) -> None:
    assert node.getent(0, INTRANET[0]) == (0, [INTRANET[1]])


def test_a_name_that_exists_nowhere(node: Node) -> None:
    # getent's exit code 2: the name was not found.
    assert node.getent(1, "nx-nowhere.test") == (2, [])


def test_a_service_name_is_answered_by_the_mesh(node: Node) -> None:
    before = node.upstream_questions()
    assert node.getent(0, "web") == (0, ["10.96.1.1"])
    assert node.getent(1, "web") == (0, ["10.96.2.1"])
    assert node.upstream_questions() - before == Counter()


def test_a_pod_with_its_own_dns_settings(node: Node) -> None:
    """
    Its resolv.conf's whole search, with or without autopath: the pod asks
    every candidate of its own list, and each goes upstream once.
    """
    before, pod_before = node.upstream_questions(), node.pod_questions(2)
    assert node.getent(2, "www.upstream.test") == (0, ["127.0.0.10", "::10"])
    node.settle()
    asked = under_every_domain("www.upstream.test", "team-a", PODS[2][2])
    every = {f"{name} {rdtype}": 1 for name in asked for rdtype in ("A", "AAAA")}
    assert node.pod_questions(2) - pod_before == every
    assert node.upstream_questions() - before == every
