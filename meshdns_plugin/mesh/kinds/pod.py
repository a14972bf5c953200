# -*- test-case-name: tests.unit.mesh.test_pod,tests.unit.mesh.test_views -*-
"""
The Kubernetes C{Pod}, as far as per-client views need it: its namespace,
addresses, and whether its DNS settings are its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from sys import intern
from typing import Any

from meshdns_plugin.mesh.documents import Invalid, is_k8s_label, read_ip
from meshdns_plugin.mesh.model import Origin, Pod

APIS = frozenset({"v1"})
#: Pod phases whose addresses are released: a finished pod's address may
#: already be another pod's.
_FINISHED_PHASES = ("Succeeded", "Failed")
#: The C{dnsPolicy} values whose resolv.conf kubelet writes with the cluster's
#: search list (C{ClusterFirstWithHostNet} is C{ClusterFirst} for any pod;
#: C{ClusterFirst} itself is C{Default} for a host-network pod, never a client).
_CLUSTER_FIRST = ("ClusterFirst", "ClusterFirstWithHostNet")


def own_dns(spec: Mapping[str, Any]) -> bool:
    """
    Whether a Pod's resolv.conf differs from the one kubelet writes for a
    C{ClusterFirst} pod in the searches a stub resolver makes: another
    C{dnsPolicy} (C{Default}: the node's file; C{None}: C{dnsConfig} alone),
    or C{dnsConfig} search domains (appended to the cluster's) or an
    C{ndots} option. Nameservers and other options leave the searched names
    as they are. A C{dnsConfig} of an unexpected shape counts as the pod's
    own: its list is then not known.
    """
    if spec.get("dnsPolicy", "ClusterFirst") not in _CLUSTER_FIRST:
        return True
    config = spec.get("dnsConfig")
    if config is None:
        return False
    if not isinstance(config, dict):
        return True
    searches, options = config.get("searches"), config.get("options")
    if searches is not None and searches != []:
        return True
    if options is None:
        return False
    if not isinstance(options, list):
        return True
    return any(not isinstance(o, dict) or o.get("name") == "ndots" for o in options)


def read(raw: Mapping[str, Any], file: str, index: int) -> Pod | None:
    """
    A Pod document's namespace and addresses, read leniently: anything odd
    (or a host-network pod, whose address is its node's, or a finished one)
    makes it no client rather than a problem, since meshdns reads Pods for
    nothing else. It takes the raw object rather than a L{Document} and an
    L{Origin}, as the other kinds do, since even metadata that is not a
    mapping must make no problem here.
    """
    metadata, spec, status = (raw.get(k) for k in ("metadata", "spec", "status"))
    if not isinstance(metadata, dict) or not isinstance(status, dict):
        return None
    namespace, name = metadata.get("namespace") or "default", metadata.get("name")
    if not isinstance(namespace, str) or not is_k8s_label(namespace) or not isinstance(name, str):
        return None
    if not isinstance(spec, dict):
        spec = {}
    if spec.get("hostNetwork") is True:
        return None
    if status.get("phase") in _FINISHED_PHASES:
        return None
    found = []
    pod_ips = status.get("podIPs")
    for item in pod_ips if isinstance(pod_ips, list) else ():
        if isinstance(item, dict):
            found.append(item.get("ip"))
    found.append(status.get("podIP"))
    addresses = []
    for value in found:
        try:
            addresses.append(read_ip("", value))
        except Invalid:
            continue
    if not addresses:
        return None
    origin = Origin(file, index, "Pod", intern(namespace), name)
    return Pod(origin, tuple(dict.fromkeys(addresses)), own_dns(spec))
