# -*- test-case-name: tests.unit.mesh.test_entries,tests.unit.mesh.test_entries_validation -*-
"""
One reader per kind of document, shared by every source: a document from a
file and the same object from the Kubernetes API are judged alike.

L{read_object} takes one object as YAML or JSON gives it (a C{dict}), finds
the reader of its kind and API version, and turns it into model objects;
a C{kind: List} (what C{kubectl get -o yaml} prints) is read item by item.
It reads them the way the API server and Istio's webhook validate them:
every problem names the file, the document index and the field, and an
invalid document is left out while the others are still read, so one team's
mistake never hides another team's services.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from sys import intern
from typing import Any

from meshdns_plugin.mesh.documents import Document, Invalid, check_metadata
from meshdns_plugin.mesh.kinds import endpointslice, pod, service, serviceentry, sidecar
from meshdns_plugin.mesh.model import (
    DocumentKey,
    EndpointSlice,
    Origin,
    Pod,
    Problem,
    Service,
    ServiceEntry,
    Sidecar,
)

Model = ServiceEntry | Service | EndpointSlice | Sidecar | Pod


@dataclass
class ReadResult:
    """
    What one object gave.

    @ivar objects: the model objects read (several for a C{kind: List}).
    @ivar notes: worth a log line, not errors: skipped kinds, C{FQDN}
        slices, Istio's warnings.
    @ivar problems: the invalid documents, each with file, index, field path
        and key.
    """

    objects: list[Model] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def read_object(raw: Any, file: str, index: int, prefix: str = "") -> ReadResult:
    """
    Read one parsed object (or, item by item, a C{kind: List}).

    @param raw: the object as YAML or JSON gives it; L{None} (an empty
        YAML document) gives nothing.
    @param file: where it came from, for messages and origins: a path, or
        the name of a source such as C{kubernetes}.
    @param index: the document's index in its file.
    @param prefix: the field path of C{raw} inside its document (C{items[3].}
        for an item of a list).
    """
    result = ReadResult()
    _read_into(result, raw, file, index, prefix)
    return result


def _read_into(result: ReadResult, raw: Any, file: str, index: int, prefix: str) -> None:
    if raw is None:
        return
    if not isinstance(raw, dict):
        result.problems.append(Problem(file, index, prefix or None, "expected a mapping"))
        return
    doc = Document(raw, prefix)
    try:
        kind = doc.text("kind")
        api = doc.text("apiVersion")
        if kind == "List" or kind.endswith("List") and isinstance(raw.get("items"), list):
            for path, item in doc.items("items"):
                _read_into(result, item, file, index, path + ".")
            return
        if kind == "Pod" and api in pod.APIS:
            found = pod.read(raw, file, index)
            if found is not None:
                result.objects.append(found)
            return
        metadata = doc.mapping("metadata")
        # Kinds and namespaces repeat in every document: one copy of each
        # (thousands of objects share a handful of namespaces).
        origin = Origin(
            file,
            index,
            intern(kind),
            intern(metadata.text("namespace") or "default"),
            metadata.text("name"),
        )
        if kind == "ServiceEntry" and api in serviceentry.APIS:
            # Names become DNS names and keys: an empty or odd one would
            # put a bogus name (even the root) in the table.
            check_metadata(origin)
            entry, warnings = serviceentry.read(doc, origin)
            result.objects.append(entry)
            result.notes.extend(f"{file}: document {index}: {w}" for w in warnings)
        elif kind == "Service" and api in service.APIS:
            check_metadata(origin)
            result.objects.append(service.read(doc, origin))
        elif kind == "Sidecar" and api in sidecar.APIS:
            check_metadata(origin)
            result.objects.append(sidecar.read(doc, origin))
        elif kind == "EndpointSlice" and api in endpointslice.APIS:
            check_metadata(origin)
            endpoint_slice = endpointslice.read(doc, origin)
            if endpoint_slice is None:
                result.notes.append(
                    f"{file}: document {index}: skipped EndpointSlice {origin.name} "
                    "(addressType FQDN: host names, not addresses)"
                )
            else:
                result.objects.append(endpoint_slice)
        else:
            result.notes.append(f"{file}: document {index}: skipped {api or '?'} {kind or '?'}")
    except Invalid as e:
        path, message = e.args
        if prefix and not path.startswith(prefix):
            path = prefix + path
        result.problems.append(Problem(file, index, path, message, _key(raw)))


def _key(raw: Mapping[str, Any]) -> DocumentKey | None:
    """
    A document's kind, namespace and name, read leniently (before its fields
    are checked), or L{None} when they are not all plain strings.
    """
    metadata = raw.get("metadata")
    if not isinstance(metadata, dict):
        return None
    kind, namespace, name = (
        raw.get("kind"),
        metadata.get("namespace") or "default",
        metadata.get("name"),
    )
    if not all(isinstance(part, str) for part in (kind, namespace, name)):
        return None
    return (kind, namespace, name)
