# -*- test-case-name: tests.unit.mesh.test_entries -*-
"""
Entry files and folders -> L{Entries}: every document of every file read by
the reader of its kind (L{meshdns_plugin.mesh.kinds}), every problem kept; a
large file is parsed apart (L{meshdns_plugin.sources.entryfile}).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from meshdns_plugin.mesh import yamltext
from meshdns_plugin.mesh.kinds import ReadResult
from meshdns_plugin.mesh.model import (
    EndpointSlice,
    Entries,
    EntriesError,
    Pod,
    Problem,
    Service,
    ServiceEntry,
    Sidecar,
)
from meshdns_plugin.sources import entryfile

#: The files of a folder that are read (others, and dot files, are not).
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
        self._lists: dict[type, list[Any]] = {
            ServiceEntry: self.service_entries,
            Service: self.services,
            EndpointSlice: self.endpoint_slices,
            Sidecar: self.sidecars,
            Pod: self.pods,
        }

    def add(self, read: ReadResult) -> None:
        """Keep what one file (or text) gave."""
        for found in read.objects:
            self._lists[type(found)].append(found)
        self.notes.extend(read.notes)
        self.problems.extend(read.problems)

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
        self.add(entryfile.read_file(path, self.max_file_size))

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
    collector.add(entryfile.read_text(text, file))
    if collector.problems:
        raise EntriesError(collector.problems)
    return collector.result()
