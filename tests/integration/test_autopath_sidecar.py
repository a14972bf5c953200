"""
Autopath in the sidecar shape, with glibc's own resolver: C{twistd -n
meshdns} inside a pod's network namespace, on 127.0.0.1:53, the pod's
resolv.conf as kubelet writes it for a ClusterFirst pod of C{team-a} on a
node whose search line is C{node.test} (and C{mesh.search} the same list, as
a sidecar reads it from that file)::

    nameserver 127.0.0.1
    search team-a.svc.cluster.local svc.cluster.local cluster.local node.test
    options ndots:5

The pod's questions are counted in meshdns's query log, the upstream's in
the fake upstream's own counts; the same pod without autopath is the
reference (issue 21, "Done when": one sidecar-style meshdns).
"""

from __future__ import annotations

import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.integration.test_autopath import (
    INTRANET,
    NODE_DOMAIN,
    UPSTREAM,
    Node,
    assert_searched,
    search_line,
    under_every_domain,
)
from tests.support.cluster import service
from tests.support.netns import network_namespace, require_netns
from tests.support.processes import FAKE_UPSTREAM, TWISTD, child_env, outside_the_source_tree
from tests.support.required import require_command

#: The pod's own address: with only C{lo}, glibc's AI_ADDRCONFIG would make
#: C{getent ahosts} skip DNS altogether.
POD = "10.97.0.11"


class Sidecar(Node):
    def questions(self) -> Counter[str]:
        """The pod's questions in meshdns's query log: C{"name TYPE"} -> count."""
        found: Counter[str] = Counter()
        for line in self.log.read_text().splitlines():
            if "Query from 127.0.0.1:" in line:
                found[line.split("): ", 1)[1].split(" -> ", 1)[0]] += 1
        return found


@pytest.fixture(params=[True, False], ids=["autopath", "without"])
def sidecar(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Sidecar]:
    require_netns()
    require_command("getent", "libc-bin")
    with ExitStack() as stack:
        pod = stack.enter_context(network_namespace())
        pod.run(["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0"])
        pod.run(["ip", "addr", "add", f"{POD}/24", "dev", "eth0"])
        pod.run(["ip", "link", "set", "peer0", "up"])
        pod.run(["ip", "link", "set", "eth0", "up"])
        search = search_line("team-a")
        etc = Path("/etc/netns") / pod.name
        etc.mkdir(parents=True)
        stack.callback(shutil.rmtree, etc, ignore_errors=True)
        (etc / "resolv.conf").write_text(
            f"nameserver 127.0.0.1\nsearch {' '.join(search)}\n"
            "options ndots:5 timeout:2 attempts:1\n"
        )
        upstream = pod.popen(
            [
                sys.executable,
                str(FAKE_UPSTREAM),
                "--address",
                UPSTREAM,
                "--port",
                "53",
                "--record",
                f"{INTRANET[0]}.{NODE_DOMAIN}={INTRANET[1]}",
            ],
            env=child_env(),
            cwd=outside_the_source_tree(),
        )
        assert upstream.stdout is not None and upstream.stdout.readline().startswith("READY ")
        entry_file = tmp_path / "entries.yaml"
        entry_file.write_text(service("team-a", "web", "10.96.1.1"))
        (tmp_path / "resolv.conf").write_text("")
        config = tmp_path / "meshdns.yaml"
        config.write_text(
            "listen: {address: 127.0.0.1, port: 53}\n"
            f"upstream: {{servers: ['{UPSTREAM}:53'], resolv_conf: {tmp_path}/resolv.conf}}\n"
            f"mesh: {{namespace: team-a, search: {search}, "
            f"autopath: {str(request.param).lower()}}}\n"
            "log: {queries: true}\n"
            "admin: {port: 0}\n"
            f"entries: [{entry_file}]\n"
        )
        log = tmp_path / "meshdns.log"
        pod.popen(
            [*TWISTD, "--logfile", str(log), "meshdns", "--config", str(config)],
            env=child_env(),
            cwd=outside_the_source_tree(),
        )
        found = Sidecar(pod, [pod], log)
        deadline = time.monotonic() + 20
        while found.getent(0, "web.team-a.svc.cluster.local.") != (0, ["10.96.1.1"]):
            if time.monotonic() > deadline:
                raise AssertionError(log.read_text() if log.exists() else "no log")
            time.sleep(0.2)
        found.settle()
        yield found


def test_an_external_name(sidecar: Sidecar, request: pytest.FixtureRequest) -> None:
    """One A and one AAAA from the pod with autopath; each candidate upstream once."""
    before, pod_before = sidecar.upstream_questions(), sidecar.questions()
    assert sidecar.getent(0, "www.upstream.test") == (0, ["127.0.0.10", "::10"])
    sidecar.settle()
    assert_searched(
        under_every_domain("www.upstream.test", "team-a"),
        sidecar.questions() - pod_before,
        sidecar.upstream_questions() - before,
        "autopath" in request.node.callspec.id,
    )


def test_a_name_under_the_node_domain(sidecar: Sidecar) -> None:
    assert sidecar.getent(0, INTRANET[0]) == (0, [INTRANET[1]])


def test_a_name_that_exists_nowhere(sidecar: Sidecar) -> None:
    assert sidecar.getent(0, "nx-nowhere.test") == (2, [])


def test_a_service_name_is_answered_by_the_mesh(sidecar: Sidecar) -> None:
    before = sidecar.upstream_questions()
    assert sidecar.getent(0, "web") == (0, ["10.96.1.1"])
    assert sidecar.upstream_questions() - before == Counter()
