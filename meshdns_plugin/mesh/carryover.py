# -*- test-case-name: tests.unit.mesh.test_carryover -*-
"""
Last valid versions: what keeps serving while someone's file is broken.

Many teams' files share one folder (often one ConfigMap). When a document
that was valid becomes invalid, the mesh it described must not disappear
until its owner fixes it: its last valid version keeps serving. A document
that was removed, or fixed, is simply what the files say now.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import TypeVar

from meshdns_plugin.mesh.model import DocumentKey, Entries, Origin, Problem

_T = TypeVar("_T")


def _broken(
    problems: Iterable[Problem],
) -> tuple[set[str], set[tuple[str, int]], set[DocumentKey]]:
    """What the problems make unreadable: whole files, documents, and keys."""
    files: set[str] = set()
    documents: set[tuple[str, int]] = set()
    keys: set[DocumentKey] = set()
    for problem in problems:
        if problem.document is None:
            files.add(problem.file)
        elif problem.key is not None:
            keys.add(problem.key)
        else:
            documents.add((problem.file, problem.document))
    return files, documents, keys


def carry_over(current: Entries, previous: Entries | None) -> Entries:
    """
    C{current}, plus the last valid version of every document of
    C{previous} that is unreadable now: in a file that does not parse at all,
    a document whose kind, namespace and name match an invalid document's,
    or (when those could not be read) the same document of the same file.
    A document that is valid now, under the same key, is never shadowed by
    its old version. Each version kept is a note.
    """
    if previous is None or not current.problems:
        return current
    files, documents, keys = _broken(current.problems)
    present = {
        o.origin.key
        for group in (
            current.service_entries,
            current.services,
            current.endpoint_slices,
            current.sidecars,
        )
        for o in group
    }
    notes = list(current.notes)

    def kept(old: Iterable[_T], new: tuple[_T, ...]) -> tuple[_T, ...]:
        result = list(new)
        for item in old:
            origin: Origin = item.origin  # type: ignore[attr-defined]
            if origin.key in present:
                continue
            if (
                origin.file in files
                or origin.key in keys
                or (origin.file, origin.document) in documents
            ):
                result.append(item)
                present.add(origin.key)
                notes.append(
                    f"{origin.file}: document {origin.document}: {origin} is invalid now; "
                    "its last valid version keeps serving"
                )
        return tuple(result)

    return dataclasses.replace(
        current,
        service_entries=kept(previous.service_entries, current.service_entries),
        services=kept(previous.services, current.services),
        endpoint_slices=kept(previous.endpoint_slices, current.endpoint_slices),
        sidecars=kept(previous.sidecars, current.sidecars),
        notes=tuple(notes),
    )
