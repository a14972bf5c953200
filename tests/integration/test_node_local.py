"""
Node-local mode end to end: one C{twistd -n meshdns} with
C{mesh.per_client_views} on a "node" network namespace, and "pod"
namespaces on a bridge of the node, each with its own address and a
C{resolv.conf} as kubelet writes it for a pod of its namespace
(C{search <ns>.svc.cluster.local svc.cluster.local cluster.local}).

Expected answers are Kubernetes DNS's for a pod of that namespace: C{web}
is the pod's own namespace's Service, and a ServiceEntry host that two
namespaces define is the pod's own namespace's (Istio's sidecar scope),
reached here through the first search domain, as glibc asks it. Every
address lives inside the namespaces this test makes; the upstream is a
fake one on the node's loopback.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.cluster import pods_slice, service, service_entry
from tests.support.netns import Netns, node_with_pods, require_netns
from tests.support.processes import FAKE_UPSTREAM, TWISTD, child_env, outside_the_source_tree

NODE = "10.99.0.1"
#: Pod addresses and the Kubernetes namespace of each; the last is in no
#: entry, so it gets the view of mesh.namespace ("default").
PODS = (("10.99.0.11", "team-a"), ("10.99.0.12", "team-b"), ("10.99.0.13", "default"))
UPSTREAM = "127.0.0.53"

#: Asks NODE for NAME (absolute: no search list) over UDP; prints the addresses or the rcode.
ASK = """
import sys, dns.message, dns.query, dns.rcode
reply = dns.query.udp(dns.message.make_query(sys.argv[2], "A"), sys.argv[1], timeout=2)
found = [r.address for rrset in reply.answer for r in rrset if r.rdtype == 1]
print(*(found or [dns.rcode.to_text(reply.rcode())]))
"""


def entries(team_a: tuple[str, ...], team_b: tuple[str, ...]) -> str:
    """The mesh, with the given pod addresses in team-a's and team-b's EndpointSlices."""
    return "".join(
        [
            service("default", "web", "10.96.0.1"),
            service("team-a", "web", "10.96.1.1"),
            service("team-b", "web", "10.96.2.1"),
            pods_slice("team-a", "web", *team_a),
            pods_slice("team-b", "web", *team_b),
            service_entry("team-a", "db-a", "db.example.com", "192.0.2.1"),
            service_entry("team-b", "db-b", "db.example.com", "192.0.2.2"),
        ]
    )


@dataclass
class Cluster:
    node: Netns
    pods: list[Netns]
    entries: Path

    def getent(self, pod: int, name: str) -> str:
        """The first address C{getent hosts NAME} gives in pod C{pod} (empty: none)."""
        result = self.pods[pod].run(["getent", "hosts", name], check=False)
        return result.stdout.split()[0] if result.stdout.strip() else ""

    def ask(self, pod: int, name: str) -> str:
        result = self.pods[pod].run(
            [sys.executable, "-c", ASK, NODE, name], check=False, env=child_env()
        )
        return result.stdout.strip() or result.stderr.strip()[-200:]

    def wait(self, pod: int, name: str, expected: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while (found := self.ask(pod, name)) != expected:
            assert time.monotonic() < deadline, f"pod {pod}: {name} is {found!r}, not {expected!r}"
            time.sleep(0.1)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    require_netns()
    if shutil.which("getent") is None:
        pytest.skip("getent is not installed")
    with ExitStack() as stack:
        search = ("svc.cluster.local", "cluster.local")
        node, pods = node_with_pods(
            stack, NODE, [(a, (f"{ns}.svc.cluster.local", *search)) for a, ns in PODS]
        )
        upstream = node.popen(
            [sys.executable, str(FAKE_UPSTREAM), "--address", UPSTREAM, "--port", "53"],
            env=child_env(),
            cwd=outside_the_source_tree(),
        )
        assert upstream.stdout is not None and upstream.stdout.readline().startswith("READY ")
        entry_file = tmp_path / "entries.yaml"
        entry_file.write_text(entries((PODS[0][0],), (PODS[1][0],)))
        (tmp_path / "empty-resolv.conf").write_text("# nothing\n")
        config = tmp_path / "meshdns.yaml"
        config.write_text(
            f"listen: {{address: {NODE}, port: 53, allow: [10.99.0.0/24]}}\n"
            f"upstream: {{servers: ['{UPSTREAM}:53'], resolv_conf: {tmp_path}/empty-resolv.conf}}\n"
            "mesh: {per_client_views: true, namespace: default}\n"
            "admin: {port: 0}\n"
            "reload: {poll_interval: 0.5}\n"
            f"entries: [{entry_file}]\n"
        )
        log = tmp_path / "meshdns.log"
        node.popen(
            [*TWISTD, "--logfile", str(log), "meshdns", "--config", str(config)],
            env=child_env(),
            cwd=outside_the_source_tree(),
        )
        found = Cluster(node, pods, entry_file)
        try:
            found.wait(0, "web.team-a.svc.cluster.local.", "10.96.1.1")
        except AssertionError:
            raise AssertionError(log.read_text() if log.exists() else "no log") from None
        yield found


def test_each_pod_gets_its_namespaces_view(cluster: Cluster) -> None:
    """getent (search list) and a bare name: the pod's own namespace's Service and host."""
    for pod, web, db in ((0, "10.96.1.1", "192.0.2.1"), (1, "10.96.2.1", "192.0.2.2")):
        assert cluster.getent(pod, "web") == web
        assert cluster.ask(pod, "web.") == web
        # db.example.com.<ns>.svc.cluster.local, the first name glibc asks:
        # the search-suffix shortcut of the pod's own view.
        assert cluster.getent(pod, "db.example.com") == db
        assert cluster.ask(pod, f"db.example.com.{PODS[pod][1]}.svc.cluster.local.") == db
    # The other namespace's search suffix is not this pod's.
    assert cluster.ask(0, "db.example.com.team-b.svc.cluster.local.") == "NXDOMAIN"


def test_an_unlisted_client_gets_the_default_view(cluster: Cluster) -> None:
    assert cluster.getent(2, "web") == "10.96.0.1"
    assert cluster.ask(2, "web.") == "10.96.0.1"
    # Neither team-a nor team-b defines it for "default": the first in name order.
    assert cluster.getent(2, "db.example.com") == "192.0.2.1"


def test_a_reload_moves_a_pod_to_another_namespace(cluster: Cluster) -> None:
    assert cluster.ask(0, "web.") == "10.96.1.1"
    replacement = cluster.entries.with_suffix(".new")
    replacement.write_text(entries((), (PODS[0][0], PODS[1][0])))
    os.replace(replacement, cluster.entries)
    cluster.wait(0, "web.", "10.96.2.1")
    assert cluster.getent(0, "db.example.com") == "192.0.2.2"
    assert cluster.ask(1, "web.") == "10.96.2.1"
