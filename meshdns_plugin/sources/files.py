# -*- test-case-name: tests.unit.mesh.test_entries -*-
"""
Entry files and folders -> L{Entries}: every document of every file read by
the reader of its kind (L{meshdns_plugin.mesh.kinds}), every problem kept.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from meshdns_plugin.mesh import yamltext
from meshdns_plugin.mesh.documents import Document, Invalid, check_metadata
from meshdns_plugin.mesh.model import DocumentKey, Entries, EntriesError, Pod, Problem

ENTRY_FILE_SUFFIXES = (".yaml", ".yml", ".json")


class _Collector:
    """Accumulates model objects, notes and problems over many files."""

    def __init__(self, max_file_size: int = yamltext.MAX_FILE_SIZE) -> None:
        self.max_file_size = max_file_size
        self.service_entries: list[ServiceEntry] = []
        self.services: list[Service] = []
        self.endpoint_slices: list[EndpointSlice] = []
        self.sidecars: list[Sidecar] = []
        self.notes: list[str] = []
        self.problems: list[Problem] = []
        self.missing: list[str] = []
        self.pods: list[Pod] = []

    def document(self, raw: Any, file: str, index: int, prefix: str = "") -> None:
        """Read one document (or, recursively, the items of a C{kind: List})."""
        if raw is None:
            return
        if not isinstance(raw, dict):
            self.problems.append(Problem(file, index, prefix or None, "expected a mapping"))
            return
        doc = Document(raw, prefix)
        key = _key(raw)
        try:
            kind = doc.text("kind")
            api = doc.text("apiVersion")
            if kind == "List" or kind.endswith("List") and isinstance(raw.get("items"), list):
                for path, item in doc.items("items"):
                    self.document(item, file, index, path + ".")
                return
            if kind == "Pod" and api == "v1":
                pod = _pod(raw, file, index)
                if pod is not None:
                    self.pods.append(pod)
                return
            metadata = doc.mapping("metadata")
            origin = Origin(
                file, index, kind, metadata.text("namespace") or "default", metadata.text("name")
            )
            known = (
                (kind == "ServiceEntry" and api in SERVICE_ENTRY_APIS)
                or (kind == "Sidecar" and api in SIDECAR_APIS)
                or (kind == "Service" and api == "v1")
                or (kind == "EndpointSlice" and api == "discovery.k8s.io/v1")
            )
            if known:
                # Names become DNS names and keys: an empty or odd one would
                # put a bogus name (even the root) in the table.
                check_metadata(origin)
            if kind == "ServiceEntry" and api in SERVICE_ENTRY_APIS:
                entry, warnings = _service_entry(doc, origin)
                self.service_entries.append(entry)
                self.notes.extend(f"{file}: document {index}: {w}" for w in warnings)
            elif kind == "Service" and api == "v1":
                self.services.append(_service(doc, origin))
            elif kind == "Sidecar" and api in SIDECAR_APIS:
                self.sidecars.append(_sidecar(doc, origin))
            elif kind == "EndpointSlice" and api == "discovery.k8s.io/v1":
                endpoint_slice = _endpoint_slice(doc, origin)
                if endpoint_slice is None:
                    self.notes.append(
                        f"{file}: document {index}: skipped EndpointSlice {origin.name} "
                        "(addressType FQDN: host names, not addresses)"
                    )
                else:
                    self.endpoint_slices.append(endpoint_slice)
            else:
                self.notes.append(f"{file}: document {index}: skipped {api or '?'} {kind or '?'}")
        except Invalid as e:
            path, message = e.args
            if prefix and not path.startswith(prefix):
                path = prefix + path
            self.problems.append(Problem(file, index, path, message, key))

    def text(self, text: str, file: str) -> None:
        """Read every document of one file's text."""
        index = 0
        try:
            for index, raw in enumerate(yamltext.load_all(text)):  # noqa: B007
                self.document(raw, file, index)
        except yaml.YAMLError as e:
            self.problems.append(Problem(file, None, None, yamltext.describe(e, text)))

    def path(self, path: str) -> None:
        """Read a file, or every entry file directly inside a folder."""
        if os.path.isdir(path):
            for name in sorted(os.listdir(path)):
                child = os.path.join(path, name)
                if name.startswith(".") or not name.endswith(ENTRY_FILE_SUFFIXES):
                    continue
                if os.path.isfile(child):
                    self.file(child)
        elif os.path.exists(path):
            self.file(path)
        else:
            self.missing.append(path)

    def file(self, path: str) -> None:
        try:
            text = yamltext.read_text(path, self.max_file_size)
        except OSError as e:
            self.problems.append(Problem(path, None, None, f"cannot read: {e.strerror}"))
            return
        except ValueError as e:
            self.problems.append(Problem(path, None, None, str(e)))
            return
        self.text(text, path)

    def result(self) -> Entries:
        return Entries(
            tuple(self.service_entries),
            tuple(self.services),
            tuple(self.endpoint_slices),
            tuple(self.notes),
            tuple(self.sidecars),
            tuple(self.problems),
            tuple(self.missing),
            tuple(self.pods),
        )


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


def load_entries(paths: Iterable[str], max_file_size: int = yamltext.MAX_FILE_SIZE) -> Entries:
    """
    Read every entry file and folder, leaving out what is invalid.

    Every invalid document (and unreadable or unparsable file) is one
    L{Problem} in the result, and everything else is read: in a folder of
    many teams' files, one team's mistake must not take the rest down. A path
    that does not exist contributes nothing (it is one of C{missing}):
    deleting every entry file is a valid, empty mesh.

    @param max_file_size: bytes; a larger file is one error, and is not read.
    """
    collector = _Collector(max_file_size)
    for path in paths:
        collector.path(path)
    return collector.result()


def parse_entries(text: str, file: str = "<string>") -> Entries:
    """
    Read the documents of one YAML text, strictly (for tests and the
    embedding API, whose callers want to hear about their own mistakes).

    @raise EntriesError: listing every problem, if any document is invalid.
    """
    collector = _Collector()
    collector.text(text, file)
    if collector.problems:
        raise EntriesError(collector.problems)
    return collector.result()
