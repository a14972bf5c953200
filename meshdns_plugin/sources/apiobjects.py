# -*- test-case-name: tests.unit.sources.test_apiobjects -*-
"""
One object from the Kubernetes API, read by the same per-kind readers and
the same validation as a document of an entry file, so that C{meshdns
check}, a file reload and an API event judge it alike. Only the model
object is kept: the JSON it came from is dropped as soon as it is read.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from meshdns_plugin.mesh.kinds import read_object
from meshdns_plugin.mesh.model import DocumentKey

#: The C{file} of every model object that came from the API (its
#: L{meshdns_plugin.mesh.model.Origin}): what tells it from a file's.
API_SOURCE = "kubernetes"


@dataclass(frozen=True, slots=True)
class ApiObject:
    """
    One API object, read.

    @ivar key: kind, namespace and name.
    @ivar model: the model object, or L{None}: invalid (see C{problem}), or
        nothing meshdns answers from (a Pod that is no client, an
        EndpointSlice of host names).
    @ivar problem: one line naming kind, namespace, name and field, for an
        invalid object; else L{None}.
    @ivar notes: what deserves a log line (Istio's warnings).
    """

    key: DocumentKey
    model: Any
    problem: str | None = None
    notes: tuple[str, ...] = ()


def _key(raw: dict[str, Any]) -> DocumentKey:
    metadata = raw.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    namespace = metadata.get("namespace") or "default"
    name = metadata.get("name")
    return (
        sys.intern(str(raw.get("kind") or "")),
        sys.intern(namespace if isinstance(namespace, str) else str(namespace)),
        name if isinstance(name, str) else str(name),
    )


def read_api_object(raw: dict[str, Any]) -> ApiObject:
    """
    Read one object (C{kind} and C{apiVersion} set, as the reflector sets
    them on list items).
    """
    key = _key(raw)
    result = read_object(raw, API_SOURCE, 0)
    kind, namespace, name = key
    if result.problems:
        problem = result.problems[0]
        where = f"{problem.field}: " if problem.field else ""
        return ApiObject(key, None, f"{kind} {namespace}/{name}: {where}{problem.message}")
    notes = tuple(
        note.replace(f"{API_SOURCE}: document 0: ", "", 1)
        for note in result.notes
        if "skipped" not in note
    )
    found = result.objects
    return ApiObject(key, found[0] if found else None, None, notes)
