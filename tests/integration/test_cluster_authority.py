"""
The cluster authority and autopath with the Kubernetes API source, against a
running C{twistd -n meshdns} (sidecar style, on loopback) fed by the test
API server, forwarding to the fake upstream, whose counts say what went
upstream.

Expected answers: the Kubernetes DNS specification's (a Service's name
answers its cluster IP) and CoreDNS kubernetes' for absent names (NXDOMAIN,
AA, C{<zone> SOA ns.dns.<zone> hostmaster.<zone> ... 5}); the client's
search list is kubelet's for a pod of C{shop} on a node whose search line
is C{node.test}.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from tests.support.kubeapi import FakeKubeAPI
from tests.support.kubeobjects import service
from tests.support.processes import MeshdnsProcess, UpstreamProcess
from tests.support.waiting import wait_until

SEARCH = ["shop.svc.cluster.local", "svc.cluster.local", "cluster.local", "node.test"]


@pytest.fixture
def api() -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI(bookmark_interval=0.5) as server:
        server.create(service("shop", "web", "10.96.0.10"))
        yield server


@pytest.fixture
def meshdns(
    api: FakeKubeAPI,
    upstream: UpstreamProcess,
    start_meshdns: Callable[..., MeshdnsProcess],
    tmp_path: Path,
) -> Callable[..., MeshdnsProcess]:
    def start(**kubernetes: Any) -> MeshdnsProcess:
        process = start_meshdns(
            {
                "mesh": {"namespace": "shop", "search": SEARCH, "autopath": True},
                "upstream": {"servers": [upstream.server]},
                "kubernetes": {
                    "enabled": True,
                    "kubeconfig": str(api.write_kubeconfig(tmp_path / "kubeconfig")),
                    **kubernetes,
                },
            }
        )
        wait_until(
            lambda: process.query("web.shop.svc.cluster.local.").answer, "the API's Services"
        )
        return process

    return start


def synced(mesh: MeshdnsProcess) -> None:
    """
    Wait until absent names are answered here: a new name each time, since
    the NXDOMAIN of one asked upstream before is served from the cache.
    """
    names = (f"absent-{i}.shop.svc.cluster.local." for i in range(1000))
    wait_until(lambda: local_nxdomain(mesh.query(next(names))), "the cluster authority")


def local_nxdomain(reply: dns.message.Message) -> bool:
    return bool(
        reply.rcode() == dns.rcode.NXDOMAIN
        and reply.flags & dns.flags.AA
        and reply.authority
        and reply.authority[0][0].mname.to_text() == "ns.dns.cluster.local."
    )


def test_absent_cluster_names_answered_here(
    meshdns: Callable[..., MeshdnsProcess], upstream: UpstreamProcess, api: FakeKubeAPI
) -> None:
    mesh = meshdns()
    synced(mesh)
    upstream.reset()
    for name, rdtype in (
        ("cart.shop.svc.cluster.local.", "TXT"),
        # Not under the first search domain: autopath leaves it alone.
        ("cart.other.svc.cluster.local.", "AAAA"),
        ("www.example.test.cluster.local.", "A"),
    ):
        reply = mesh.query(name, rdtype)
        assert local_nxdomain(reply), (name, rdtype, reply)
        soa = reply.authority[0]
        assert soa.ttl == 5 and soa[0].rname.to_text() == "hostmaster.cluster.local."
    assert upstream.counts() == {}
    # What exists, and kube-dns's own names, are asked upstream (kube-dns's job).
    for name, rdtype in (
        ("_p80._tcp.web.shop.svc.cluster.local.", "SRV"),
        ("web.shop.svc.cluster.local.", "TXT"),
        ("shop.svc.cluster.local.", "A"),
        ("dns-version.cluster.local.", "TXT"),
        ("10-0-0-1.shop.pod.cluster.local.", "A"),
    ):
        mesh.query(name, rdtype)
        assert upstream.count(name, rdtype) == 1, name
    # A Service created now exists at once.
    api.create(service("shop", "cart", "10.96.0.11"))
    wait_until(lambda: mesh.query("cart.shop.svc.cluster.local.").answer, "cart")
    assert not local_nxdomain(mesh.query("cart.shop.svc.cluster.local.", "TXT"))
    assert upstream.count("cart.shop.svc.cluster.local.", "TXT") == 1


def test_autopath_asks_upstream_outside_the_cluster_domain_only(
    meshdns: Callable[..., MeshdnsProcess], upstream: UpstreamProcess
) -> None:
    mesh = meshdns()
    synced(mesh)
    upstream.reset()
    for rdtype, address in (("A", "127.0.0.10"), ("AAAA", "::10")):
        reply = mesh.query("www.upstream.test.shop.svc.cluster.local.", rdtype)
        cname, records = reply.answer
        assert cname.rdtype == dns.rdatatype.CNAME
        assert cname[0].target.to_text() == "www.upstream.test."
        assert records[0].address == address
    assert upstream.counts() == {
        (name, rdtype, "udp"): 1
        for name in ("www.upstream.test.node.test.", "www.upstream.test.")
        for rdtype in ("A", "AAAA")
    }


def test_watching_some_namespaces_claims_nothing(
    meshdns: Callable[..., MeshdnsProcess], upstream: UpstreamProcess
) -> None:
    mesh = meshdns(namespaces=["shop"])
    upstream.reset()
    reply = mesh.query("cart.shop.svc.cluster.local.", "TXT")
    assert not reply.flags & dns.flags.AA
    assert upstream.count("cart.shop.svc.cluster.local.", "TXT") == 1
