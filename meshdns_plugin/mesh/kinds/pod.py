# -*- test-case-name: tests.unit.mesh.test_views -*-
"""
The Kubernetes C{Pod}, as far as per-client views need it: its namespace and
addresses.
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
    if isinstance(spec, dict) and spec.get("hostNetwork") is True:
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
    return Pod(origin, tuple(dict.fromkeys(addresses)))
