"""
The test Kubernetes API server (L{tests.support.kubeapi}) checked by a real
peer: Debian's C{kubectl} (package kubernetes-client, which test.sh unpacks
into C{.cache/kubectl/}) reads its discovery, lists, server-side tables,
watches and error bodies as it reads a real cluster's.
"""

from __future__ import annotations

import os
import queue
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support import kubeobjects
from tests.support.kubeapi import DEFAULT_USER, FakeKubeAPI
from tests.support.paths import REPO_ROOT
from tests.support.required import unavailable

KUBECTL = REPO_ROOT / ".cache" / "kubectl" / "root" / "usr" / "bin" / "kubectl"


class Kubectl:
    """Debian's kubectl with a kubeconfig for the server and its own HOME (its cache)."""

    def __init__(self, api: FakeKubeAPI, folder: Path) -> None:
        self.kubeconfig = api.write_kubeconfig(folder / "kubeconfig")
        home = folder / "home"
        home.mkdir()
        self.env = {**os.environ, "HOME": str(home)}

    def command(self, *args: str) -> list[str]:
        return [str(KUBECTL), "--kubeconfig", str(self.kubeconfig), *args]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(*args), env=self.env, capture_output=True,
                              text=True, timeout=30)

    def yaml(self, *args: str) -> list[dict]:
        done = self.run(*args, "-o", "yaml")
        assert done.returncode == 0, done.stderr
        listed = yaml.safe_load(done.stdout)
        assert listed["kind"] == "List"
        return listed["items"]


@pytest.fixture
def api() -> Iterator[FakeKubeAPI]:
    if not KUBECTL.is_file():
        unavailable(f"Debian's kubectl is not unpacked at {KUBECTL} (test.sh does it)")
    with FakeKubeAPI() as server:
        yield server


@pytest.fixture
def kubectl(api: FakeKubeAPI, tmp_path: Path) -> Kubectl:
    return Kubectl(api, tmp_path)


def test_kubectl_is_debians() -> None:
    if not KUBECTL.is_file():
        unavailable(f"Debian's kubectl is not unpacked at {KUBECTL} (test.sh does it)")
    version = subprocess.run([str(KUBECTL), "version", "--client"], capture_output=True,
                             text=True, timeout=30)
    assert 'GitVersion:"v1.20' in version.stdout


def test_get_services_as_yaml(api: FakeKubeAPI, kubectl: Kubectl) -> None:
    api.create(kubeobjects.service("ns1", "productpage", ("10.96.0.10",)))
    api.create(kubeobjects.service("ns2", "dual", ("10.96.0.20", "fd00::20")))
    api.create(kubeobjects.service("ns2", "headless", "None"))
    items = kubectl.yaml("get", "services", "-A")
    assert {(s["metadata"]["namespace"], s["metadata"]["name"]): s["spec"]["clusterIPs"]
            for s in items} == {("ns1", "productpage"): ["10.96.0.10"],
                                ("ns2", "dual"): ["10.96.0.20", "fd00::20"],
                                ("ns2", "headless"): ["None"]}
    assert {s["kind"] for s in items} == {"Service"}


def test_get_endpointslices_as_yaml(api: FakeKubeAPI, kubectl: Kubectl) -> None:
    api.create(kubeobjects.endpoint_slice("ns1", "headless", ("10.1.0.1", "10.1.0.2"),
                                          hostnames=True))
    [slice_] = kubectl.yaml("get", "endpointslices", "-A")
    assert slice_["metadata"]["labels"]["kubernetes.io/service-name"] == "headless"
    assert [(e["addresses"], e["hostname"]) for e in slice_["endpoints"]] == [
        (["10.1.0.1"], "headless-0"), (["10.1.0.2"], "headless-1")]


def test_get_serviceentries_as_yaml(api: FakeKubeAPI, kubectl: Kubectl) -> None:
    api.create(kubeobjects.service_entry("ns1", "ext", ("api.example.com",), ("192.0.2.7",)))
    [entry] = kubectl.yaml("get", "serviceentries.networking.istio.io", "-A")
    assert (entry["apiVersion"], entry["kind"]) == ("networking.istio.io/v1", "ServiceEntry")
    assert entry["spec"]["hosts"] == ["api.example.com"]
    assert entry["spec"]["addresses"] == ["192.0.2.7"]
    assert [r.path for r in api.requests if "serviceentries" in r.path] == [
        "/apis/networking.istio.io/v1/serviceentries"]


def output_lines(process: subprocess.Popen[str]) -> queue.Queue:
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    return lines


def wait_for_line(lines: queue.Queue, text: str, timeout: float = 10.0) -> str:
    """The first line of C{lines} containing C{text}, within C{timeout} seconds."""
    seen = []
    deadline = threading.Event()
    timer = threading.Timer(timeout, deadline.set)
    timer.start()
    try:
        while not deadline.is_set():
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                continue
            seen.append(line)
            if text in line:
                return line
    finally:
        timer.cancel()
    pytest.fail(f"kubectl printed no line with {text!r} in {timeout} s: {seen}")


def test_watch_table_shows_a_new_service(api: FakeKubeAPI, kubectl: Kubectl) -> None:
    api.create(kubeobjects.service("ns1", "first", ("10.96.0.1",)))
    process = subprocess.Popen(kubectl.command("get", "services", "-A", "--watch"),
                               env=kubectl.env, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    try:
        lines = output_lines(process)
        assert wait_for_line(lines, "CLUSTER-IP").split()[:4] == [
            "NAMESPACE", "NAME", "TYPE", "CLUSTER-IP"]
        assert wait_for_line(lines, "first").split()[:4] == [
            "ns1", "first", "ClusterIP", "10.96.0.1"]
        assert api.wait_for(lambda: api.open_watches == 1, 10)
        api.create(kubeobjects.service("ns2", "second", ("10.96.0.2",), ports=(80, 443)))
        assert wait_for_line(lines, "second").split()[:6] == [
            "ns2", "second", "ClusterIP", "10.96.0.2", "<none>", "80/TCP,443/TCP"]
    finally:
        process.kill()
        process.wait(timeout=10)
    listed, watched = [r for r in api.requests if r.path == "/api/v1/services"]
    assert not listed.watch and watched.watch
    assert int(watched.query["resourceVersion"]) == api.resource_version - 1


def test_kubectl_reads_the_forbidden_status(api: FakeKubeAPI, kubectl: Kubectl) -> None:
    api.fail("services", 403)
    done = kubectl.run("get", "services", "-n", "ns1")
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f'Error from server (Forbidden): services is forbidden: User "{DEFAULT_USER}" '
        'cannot list resource "services" in API group "" in the namespace "ns1"')


def test_kubectl_reads_the_unauthorized_status(api: FakeKubeAPI, kubectl: Kubectl) -> None:
    api.rotate_token("rotated")
    done = kubectl.run("get", "services", "-A")
    assert done.returncode == 1
    assert "error: You must be logged in to the server (Unauthorized)" in done.stderr
