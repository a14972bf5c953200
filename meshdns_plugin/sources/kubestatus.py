# -*- test-case-name: tests.integration.test_kubernetes_source -*-
"""
What the Kubernetes API source says of itself: each watched collection's
state (C{/debug/kubernetes}, the C{meshdns_kubernetes_*} metrics), its
invalid objects as the loader's problems read, and one line per fault that
says what to do about it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshdns_plugin.mesh.model import DocumentKey, Problem
from meshdns_plugin.sources.apiobjects import API_SOURCE
from meshdns_plugin.sources.kubeclient import KubeError
from meshdns_plugin.sources.reflector import Resource


@dataclass
class KindStatus:
    """
    What one watched collection is doing, for C{/debug/kubernetes} and the
    metrics.

    @ivar state: C{starting} (before the first list), C{listing} (again,
        after 410 Gone), C{watching}, C{backoff}, or C{absent} (Istio's CRDs
        are not installed).
    @ivar refused: the first list was refused (401, 403): tables are built
        without the kind meanwhile, but the source is not ready.
    @ivar version: the last C{resourceVersion} seen.
    @ivar last_event: wall-clock time of the last change, or 0.
    @ivar events: change type (C{ADDED}, ...) -> count.
    @ivar errors: failure reason (C{network}, C{Forbidden}, C{Expired}, ...)
        -> count.
    """

    resource: Resource
    state: str = "starting"
    synced: bool = False
    refused: bool = False
    version: str = ""
    last_event: float = 0.0
    lists: int = 0
    relists: int = 0
    events: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    last_error: str = ""


def problems(invalid: Mapping[DocumentKey, str]) -> tuple[Problem, ...]:
    """The invalid objects the source holds, as the loader's problems read."""
    return tuple(
        Problem(API_SOURCE, None, None, line, key) for key, line in sorted(invalid.items())
    )


def document(
    statuses: Iterable[KindStatus], held: Mapping[str, Mapping[DocumentKey, Any]]
) -> list[dict[str, Any]]:
    """
    Each watched collection's state, JSON-able: what C{/debug/kubernetes}
    shows and the metrics count.

    @param held: the source's valid objects, by kind.
    """
    return [
        {
            "kind": status.resource.kind,
            "resource": str(status.resource),
            "path": status.resource.path,
            "state": status.state,
            "synced": status.synced,
            "objects": len(held.get(status.resource.kind, {})),
            "resourceVersion": status.version,
            "last_event": status.last_event or None,
            "lists": status.lists,
            "relists": status.relists,
            "events": dict(status.events),
            "errors": dict(status.errors),
            "last_error": status.last_error or None,
        }
        for status in sorted(statuses, key=lambda s: str(s.resource))
    ]


def fault_line(resource: Resource, error: KubeError) -> str:
    """One line for a failure the server answered, saying what to do about it."""
    verb = error.verb
    group = resource.group or '"" (core)'
    if error.status in (401, 403):
        need = (
            f"RBAC must allow get, list and watch of {resource.plural} in API group {group}"
            if error.status == 403
            else "the credentials are not accepted"
        )
        return f"Kubernetes API: cannot {verb} {resource}: {error} ({need})"
    return f"Kubernetes API: {verb} {resource} failed: {error}"
