"""
The Kubernetes API source against a running C{twistd -n meshdns}, fed by
the test API server (L{tests.support.kubeapi}) over HTTPS with a bearer
token: the initial sync and readiness, create, modify and delete of each
kind, a 410 during a burst of changes, the server down and back, a watch cut
in the middle of an event, token rotation, RBAC refusing one kind, and
Istio's CRDs absent (issue 18, items 1 to 8).

Expected answers are those of the Kubernetes DNS specification (a Service's
C{<svc>.<ns>.svc.cluster.local} answers its cluster IP; a headless one its
ready endpoints; C{<hostname>.<svc>.<ns>.svc.cluster.local} a pod's
address) and of DESIGN.md for ServiceEntries.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from tests.support.kubeapi import FakeKubeAPI, make_certificates
from tests.support.kubeobjects import endpoint_slice, pod, service, service_entry, sidecar
from tests.support.processes import MeshdnsProcess, free_port
from tests.support.scrape import parse, scrape, value
from tests.support.waiting import wait_until

NAMESPACE = "shop"
VIPS = ipaddress.ip_network("240.240.0.0/16")


@pytest.fixture
def api() -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI(bookmark_interval=0.5) as server:
        yield server


class Meshdns:
    """A meshdns fed by the test API server, with its admin port."""

    def __init__(self, process: MeshdnsProcess, admin: int) -> None:
        self.process = process
        self.admin = admin

    def addresses(self, name: str, rdtype: str = "A") -> list[str]:
        """The addresses meshdns answers itself (AA=1) for C{name}; [] otherwise."""
        reply = self.process.query(name, rdtype)
        if reply.rcode() != dns.rcode.NOERROR or not reply.flags & dns.flags.AA:
            return []
        return sorted(r.address for rrset in reply.answer for r in rrset if hasattr(r, "address"))

    def wait_for(self, name: str, expected: list[str], timeout: float = 10.0) -> None:
        wait_until(
            lambda: self.addresses(name) == expected, f"{name} -> {expected}", timeout=timeout
        )

    def metrics(self) -> Any:
        return parse(scrape(self.admin)[1])

    def ready(self) -> int:
        return scrape(self.admin, "/readyz")[0]


@pytest.fixture
def meshdns(
    api: FakeKubeAPI, start_meshdns: Callable[..., MeshdnsProcess], tmp_path: Path
) -> Callable[..., Meshdns]:
    def start(
        kubeconfig: Path | None = None, per_client_views: bool = False, **kubernetes: Any
    ) -> Meshdns:
        if kubeconfig is None:
            kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        admin = free_port("127.0.0.1")
        process = start_meshdns(
            {
                "mesh": {"namespace": NAMESPACE, "per_client_views": per_client_views},
                "admin": {"port": admin},
                "kubernetes": {"enabled": True, "kubeconfig": str(kubeconfig), **kubernetes},
            }
        )
        return Meshdns(process, admin)

    return start


def test_initial_sync_then_each_kind_created_modified_deleted(
    api: FakeKubeAPI, meshdns: Callable[..., Meshdns]
) -> None:
    api.create(service(NAMESPACE, "web", "10.96.0.10"))
    api.create(service(NAMESPACE, "db", "None"))
    api.create(endpoint_slice(NAMESPACE, "db", ("10.244.1.1", "10.244.1.2"), hostnames=True))
    api.create(service_entry(NAMESPACE, "pay", ("pay.example.com",), ("192.0.2.7",)))
    api.create(service_entry(NAMESPACE, "auto", ("auto.example.com",)))
    mesh = meshdns()
    wait_until(lambda: mesh.ready() == 200, "/readyz 200 after the first sync")
    assert mesh.addresses("web.shop.svc.cluster.local") == ["10.96.0.10"]
    assert mesh.addresses("web") == ["10.96.0.10"]
    assert mesh.addresses("db.shop.svc.cluster.local") == ["10.244.1.1", "10.244.1.2"]
    assert mesh.addresses("db-1.db.shop.svc.cluster.local") == ["10.244.1.2"]
    assert mesh.addresses("pay.example.com") == ["192.0.2.7"]
    (vip,) = mesh.addresses("auto.example.com")
    assert ipaddress.ip_address(vip) in VIPS

    # Service: created, modified, deleted.
    api.create(service("other", "cart", "10.96.0.20"))
    mesh.wait_for("cart.other.svc.cluster.local", ["10.96.0.20"])
    api.update(service("other", "cart", "10.96.0.21"))
    mesh.wait_for("cart.other", ["10.96.0.21"])
    api.delete("Service", "other", "cart")
    mesh.wait_for("cart.other.svc.cluster.local", [])

    # EndpointSlice: a pod added, one not ready, the slice deleted.
    api.update(endpoint_slice(NAMESPACE, "db", ("10.244.1.1", "10.244.1.3"), hostnames=True))
    mesh.wait_for("db.shop.svc.cluster.local", ["10.244.1.1", "10.244.1.3"])
    api.update(
        endpoint_slice(NAMESPACE, "db", ("10.244.1.1", "10.244.1.3"), hostnames=True, ready=False)
    )
    mesh.wait_for("db.shop.svc.cluster.local", [])
    api.update(endpoint_slice(NAMESPACE, "db", ("10.244.1.4",), hostnames=True))
    mesh.wait_for("db-0.db.shop.svc.cluster.local", ["10.244.1.4"])
    api.delete("EndpointSlice", NAMESPACE, "db-x7k2p")
    mesh.wait_for("db.shop.svc.cluster.local", [])

    # ServiceEntry: created, modified, deleted.
    api.create(service_entry("other", "mail", ("mail.example.com",), ("192.0.2.9",)))
    mesh.wait_for("mail.example.com", ["192.0.2.9"])
    api.update(service_entry("other", "mail", ("mail.example.com",), ("192.0.2.10",)))
    mesh.wait_for("mail.example.com", ["192.0.2.10"])
    api.delete("ServiceEntry", "other", "mail")
    mesh.wait_for("mail.example.com", [])

    # Sidecar: the proxy's namespace imports only its own hosts, then all again.
    api.create(service("other", "cart", "10.96.0.22"))
    mesh.wait_for("cart.other.svc.cluster.local", ["10.96.0.22"])
    api.create(sidecar(NAMESPACE, hosts=("./*",)))
    mesh.wait_for("cart.other.svc.cluster.local", [])
    assert mesh.addresses("web.shop.svc.cluster.local") == ["10.96.0.10"]
    api.delete("Sidecar", NAMESPACE, "default")
    mesh.wait_for("cart.other.svc.cluster.local", ["10.96.0.22"])

    samples = mesh.metrics()
    assert value(samples, "meshdns_kubernetes_events_total", kind="Service", type="ADDED") >= 2
    assert value(samples, "meshdns_kubernetes_events_total", kind="Sidecar", type="DELETED") == 1
    assert value(samples, "meshdns_kubernetes_objects", kind="Service") == 3
    assert value(samples, "meshdns_kubernetes_relists_total", kind="Service") == 0


def test_invalid_service_entry_keeps_its_last_valid_version(
    api: FakeKubeAPI, meshdns: Callable[..., Meshdns]
) -> None:
    """Issue 18 item 3: one line naming kind, namespace, name and field; the old one serves."""
    api.create(service_entry(NAMESPACE, "pay", ("pay.example.com",), ("192.0.2.7",)))
    mesh = meshdns()
    wait_until(lambda: mesh.ready() == 200, "ready")
    assert mesh.addresses("pay.example.com") == ["192.0.2.7"]
    broken = service_entry(NAMESPACE, "pay", ("pay.example.com",), ("192.0.2.8",))
    broken["spec"]["ports"][0]["number"] = 70000
    api.update(broken)
    line = "ServiceEntry shop/pay: spec.ports[0].number: 70000 is not a port number"
    wait_until(lambda: line in mesh.process.log(), "the invalid object's line")
    api.create(service(NAMESPACE, "after", "10.96.0.30"))
    mesh.wait_for("after.shop.svc.cluster.local", ["10.96.0.30"])
    assert mesh.addresses("pay.example.com") == ["192.0.2.7"]
    assert mesh.process.log().count(line) == 1


def services_answered(mesh: Meshdns, names: list[str]) -> bool:
    return all(mesh.addresses(f"{n}.burst.svc.cluster.local") for n in names)


def test_gone_during_a_burst_relists_and_loses_nothing(
    api: FakeKubeAPI, meshdns: Callable[..., Meshdns]
) -> None:
    """
    A watch resumed from a version the server compacted away gets 410 Gone:
    meshdns lists again, and every change of the burst is answered, the
    deletions included (API concepts: "410 Gone ... clients must relist").
    """
    for index in range(20):
        api.create(service("burst", f"old-{index}", f"10.96.1.{index + 1}"))
    mesh = meshdns()
    wait_until(lambda: mesh.ready() == 200, "ready")
    mesh.wait_for("old-0.burst.svc.cluster.local", ["10.96.1.1"])
    api.fail("/api/v1/services", 503, verbs=("watch",))
    api.cut_watches(mid_event=False)
    for index in range(50):
        api.create(service("burst", f"new-{index}", f"10.96.2.{index + 1}"))
    for index in range(10):
        api.delete("Service", "burst", f"old-{index}")
    api.compact()
    api.clear_failures()
    wait_until(
        lambda: services_answered(mesh, [f"new-{i}" for i in range(50)]), "all 50 new Services"
    )
    for index in range(10):
        assert mesh.addresses(f"old-{index}.burst.svc.cluster.local") == []
    assert mesh.addresses("old-15.burst.svc.cluster.local") == ["10.96.1.16"]
    assert value(mesh.metrics(), "meshdns_kubernetes_relists_total", kind="Service") >= 1
    assert "listing services.core again" in mesh.process.log()


def test_watch_cut_in_the_middle_of_an_event_resumes_without_relisting(
    api: FakeKubeAPI, meshdns: Callable[..., Meshdns]
) -> None:
    mesh = meshdns()
    wait_until(lambda: mesh.ready() == 200, "ready")
    lists_before = [r for r in api.requests if not r.watch and r.path == "/api/v1/services"]
    assert api.cut_watches(mid_event=True) >= 4
    api.create(service(NAMESPACE, "later", "10.96.0.40"))
    mesh.wait_for("later.shop.svc.cluster.local", ["10.96.0.40"])
    lists_after = [r for r in api.requests if not r.watch and r.path == "/api/v1/services"]
    assert lists_after == lists_before
    resumed = api.watches("services")[-1]
    assert resumed.query["resourceVersion"] not in ("", "0")
    assert (
        value(mesh.metrics(), "meshdns_kubernetes_errors_total", kind="Service", reason="stream")
        >= 1
    )


def test_api_server_down_20_seconds_and_back(
    api: FakeKubeAPI, meshdns: Callable[..., Meshdns]
) -> None:
    """Serving goes on; one line when it goes, one when it is back, none per retry."""
    api.create(service(NAMESPACE, "web", "10.96.0.10"))
    mesh = meshdns()
    wait_until(lambda: mesh.ready() == 200, "ready")
    api.stop()
    deadline = 20.0
    started = time.monotonic()
    while time.monotonic() - started < deadline:
        assert mesh.addresses("web.shop.svc.cluster.local") == ["10.96.0.10"]
        time.sleep(1.0)
    api.start()
    api.create(service(NAMESPACE, "back", "10.96.0.50"))
    mesh.wait_for("back.shop.svc.cluster.local", ["10.96.0.50"], timeout=60.0)
    log = mesh.process.log()
    assert log.count("unreachable") == 1, log
    assert log.count("is reachable again") == 1, log
    assert mesh.ready() == 200


def test_token_rotation(api: FakeKubeAPI, meshdns: Callable[..., Meshdns], tmp_path: Path) -> None:
    """
    The token file is re-read when the server refuses the old token, as
    client-go re-reads a kubeconfig's tokenFile (and the kubelet rotates a
    projected service account token).
    """
    token_file = tmp_path / "token"
    token_file.write_text("first-token")
    api.rotate_token("first-token")
    mesh = meshdns(api.write_kubeconfig(tmp_path / "kubeconfig", token_file=token_file))
    wait_until(lambda: mesh.ready() == 200, "ready")
    token_file.write_text("second-token")
    api.rotate_token("second-token")
    api.cut_watches(mid_event=False)
    api.create(service(NAMESPACE, "rotated", "10.96.0.60"))
    mesh.wait_for("rotated.shop.svc.cluster.local", ["10.96.0.60"], timeout=30.0)
    assert any(r.token == "second-token" for r in api.requests)
    assert any(r.status == 401 for r in api.requests)


def test_rbac_forbids_one_kind(api: FakeKubeAPI, meshdns: Callable[..., Meshdns]) -> None:
    """
    One line naming the kind and the verb RBAC is missing; the other kinds
    serve; not ready until the kind can be listed.
    """
    api.create(service(NAMESPACE, "web", "10.96.0.10"))
    api.fail("endpointslices", 403)
    mesh = meshdns()
    mesh.wait_for("web.shop.svc.cluster.local", ["10.96.0.10"])
    assert mesh.ready() == 503
    log = mesh.process.log()
    lines = [line for line in log.splitlines() if "cannot list endpointslices" in line]
    assert len(lines) == 1, log
    assert (
        "RBAC must allow get, list and watch of endpointslices in API group discovery.k8s.io"
        in lines[0]
    )
    api.clear_failures()
    wait_until(lambda: mesh.ready() == 200, "ready once the kind can be listed", timeout=60.0)


def test_istio_crds_absent(meshdns: Callable[..., Meshdns], tmp_path: Path) -> None:
    with FakeKubeAPI(istio=False) as bare:
        bare.create(service(NAMESPACE, "web", "10.96.0.10"))
        mesh = meshdns(bare.write_kubeconfig(tmp_path / "bare-kubeconfig"))
        wait_until(lambda: mesh.ready() == 200, "ready without Istio's CRDs")
        assert mesh.addresses("web.shop.svc.cluster.local") == ["10.96.0.10"]
        log = mesh.process.log()
        assert log.count("Istio's CRDs are absent") == 1, log
        assert not [r for r in bare.requests if "serviceentries" in r.path]


def test_istio_v1beta1_only(meshdns: Callable[..., Meshdns], tmp_path: Path) -> None:
    """Where v1 is not served, ServiceEntries are watched at v1beta1."""
    with FakeKubeAPI(istio_versions=("v1beta1",)) as old:
        old.create(
            service_entry(NAMESPACE, "pay", ("pay.example.com",), ("192.0.2.7",), version="v1beta1")
        )
        mesh = meshdns(old.write_kubeconfig(tmp_path / "old-kubeconfig"))
        mesh.wait_for("pay.example.com", ["192.0.2.7"])
        assert [
            r for r in old.requests if r.path == "/apis/networking.istio.io/v1beta1/serviceentries"
        ]


def test_tls_verification_failure_names_the_server_and_the_ca(
    api: FakeKubeAPI, meshdns: Callable[..., Meshdns], tmp_path: Path
) -> None:
    """One line naming the API server and the CA that did not verify it; DNS still serves."""
    other = tmp_path / "other-ca"
    other.mkdir()
    wrong_ca, _, _ = make_certificates(other)
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    kubeconfig.write_text(kubeconfig.read_text().replace(str(api.ca_path), str(wrong_ca)))
    mesh = meshdns(kubeconfig)
    wait_until(
        lambda: (
            value(mesh.metrics(), "meshdns_kubernetes_errors_total", kind="Service", reason="tls")
            >= 3
        ),
        "three failed attempts",
    )
    lines = [line for line in mesh.process.log().splitlines() if "TLS verification" in line]
    assert len(lines) == 1, lines
    assert api.url in lines[0] and str(wrong_ca) in lines[0]
    assert mesh.ready() == 503
    assert mesh.process.query("anything.example.", "A").rcode() == dns.rcode.SERVFAIL


def ask_from(mesh: Meshdns, source: str, name: str) -> list[str]:
    """The addresses meshdns answers itself for C{name}, asked from C{source}."""
    query = dns.message.make_query(name, "A")
    reply = dns.query.udp(
        query, mesh.process.address, port=mesh.process.port, timeout=5, source=source
    )
    if not reply.flags & dns.flags.AA:
        return []
    return sorted(r.address for rrset in reply.answer for r in rrset)


def test_per_client_views_follow_pods_and_services_without_a_rebuild(
    api: FakeKubeAPI, meshdns: Callable[..., Meshdns]
) -> None:
    """
    Node-local mode: each client gets its Pod's namespace's view (a Service's
    bare name answers in its own namespace only); a Pod that moves and a
    Service that changes are applied without a whole build.
    """
    api.create(pod("a", "client-a", ips=("127.0.0.2",)))
    api.create(pod("b", "client-b", ips=("127.0.0.4",)))
    api.create(service("a", "web", "10.96.0.1"))
    api.create(service("b", "web", "10.96.0.2"))
    mesh = meshdns(per_client_views=True)
    wait_until(lambda: mesh.ready() == 200, "ready")
    wait_until(lambda: ask_from(mesh, "127.0.0.2", "web") == ["10.96.0.1"], "a's view")
    assert ask_from(mesh, "127.0.0.4", "web") == ["10.96.0.2"]
    assert ask_from(mesh, "127.0.0.3", "web") == []
    reloads = value(mesh.metrics(), "meshdns_reloads_total", result="success")
    api.update(service("a", "web", "10.96.0.11"))
    wait_until(lambda: ask_from(mesh, "127.0.0.2", "web") == ["10.96.0.11"], "a's changed web")
    api.delete("Pod", "a", "client-a")
    api.create(pod("b", "client-a2", ips=("127.0.0.2",)))
    wait_until(lambda: ask_from(mesh, "127.0.0.2", "web") == ["10.96.0.2"], "the pod now in b")
    assert value(mesh.metrics(), "meshdns_reloads_total", result="success") == reloads
