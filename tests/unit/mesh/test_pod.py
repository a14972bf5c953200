"""
Tests for L{meshdns_plugin.mesh.kinds.pod}: whether a Pod's DNS settings are
its own, as the Kubernetes Pod API defines C{spec.dnsPolicy} and
C{spec.dnsConfig} ("DNS for Services and Pods": C{ClusterFirst} is the
default; C{Default} inherits the node's resolv.conf; C{None} takes
C{dnsConfig} alone; C{dnsConfig.searches} are appended to the policy's list
and its C{options} override the policy's, C{ndots} among them).
"""

from __future__ import annotations

from typing import Any

import pytest

from meshdns_plugin.mesh.kinds import pod


def read(spec: Any) -> pod.Pod | None:
    raw = {
        "metadata": {"name": "p", "namespace": "shop"},
        "spec": spec,
        "status": {"podIP": "10.244.1.5"},
    }
    return pod.read(raw, "pods.yaml", 0)


def own_dns(spec: Any) -> bool:
    found = read(spec)
    assert found is not None and found.addresses == ("10.244.1.5",)
    return found.own_dns


@pytest.mark.parametrize(
    "spec",
    [
        {},
        {"dnsPolicy": "ClusterFirst"},
        # For a pod on the pod network, ClusterFirstWithHostNet writes the
        # cluster's list as ClusterFirst does.
        {"dnsPolicy": "ClusterFirstWithHostNet"},
        # Nameservers and options other than ndots change no searched name.
        {"dnsConfig": {"nameservers": ["192.0.2.53"]}},
        {"dnsConfig": {"options": [{"name": "edns0"}, {"name": "timeout", "value": "2"}]}},
        {"dnsConfig": {"searches": []}},
        "not a mapping",
    ],
)
def test_cluster_first_list(spec: Any) -> None:
    assert not own_dns(spec)


@pytest.mark.parametrize(
    "spec",
    [
        {"dnsPolicy": "Default"},
        {"dnsPolicy": "None", "dnsConfig": {"nameservers": ["192.0.2.53"]}},
        {"dnsPolicy": "ClusterFirst", "dnsConfig": {"searches": ["example.test"]}},
        {"dnsConfig": {"options": [{"name": "ndots", "value": "2"}]}},
        # A policy this reader does not know, or a dnsConfig of an odd shape:
        # the list is not known to be the cluster's.
        {"dnsPolicy": "Cluster"},
        {"dnsConfig": "ndots:2"},
        {"dnsConfig": {"searches": "example.test"}},
        {"dnsConfig": {"options": "ndots:2"}},
    ],
)
def test_own_list(spec: Any) -> None:
    assert own_dns(spec)


def test_host_network_pods_are_no_clients() -> None:
    """Whatever their policy: their address is their node's."""
    for policy in ("ClusterFirstWithHostNet", "ClusterFirst", "Default"):
        assert read({"hostNetwork": True, "dnsPolicy": policy}) is None
