# -*- test-case-name: tests.test_config -*-
"""
Reading YAML files for people: every failure becomes one line that says where.

PyYAML's errors span several lines, and its reader errors (control
characters, bad encodings) carry a character position instead of a line; the
config and the entry files both report through L{describe}.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
#: Nesting beyond which the generic constructor takes over (entries are shallow).
_MAX_DIRECT_DEPTH = 64


class _Unusual(Exception):
    """A node the direct constructor leaves to PyYAML's generic one."""


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """
    PyYAML's safe loader (libyaml's parser when available), with a direct,
    recursive constructor for plain mappings, sequences and scalars.

    The generic constructor goes through generators to support recursive
    structures; entry files are shallow trees, and building them directly
    halves the time to load 100k ServiceEntries. Merge keys and deep nesting
    fall back to the generic constructor, so the result is always the same.
    """

    def construct_document(self, node: Any) -> Any:
        try:
            data = self._direct(node, 0)
        except _Unusual:
            return super().construct_document(node)
        self.constructed_objects = {}
        self.recursive_objects = {}
        return data

    def _direct(self, node: Any, depth: int) -> Any:
        if depth > _MAX_DIRECT_DEPTH:
            raise _Unusual
        kind = node.__class__
        if kind is ScalarNode:
            if node.tag == _STR_TAG:
                return node.value
            construct = self.yaml_constructors.get(node.tag)
            if construct is None:
                raise _Unusual
            return construct(self, node)
        if kind is MappingNode and node.tag == _MAP_TAG:
            mapping = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG:
                    raise _Unusual
                key = self._direct(key_node, depth + 1)
                try:
                    hash(key)
                except TypeError:
                    raise _Unusual from None
                mapping[key] = self._direct(value_node, depth + 1)
            return mapping
        if kind is SequenceNode and node.tag == _SEQ_TAG:
            return [self._direct(item, depth + 1) for item in node.value]
        raise _Unusual


def load(text: str) -> Any:
    """The single YAML document in C{text}."""
    return yaml.load(text, Loader=_Loader)


def load_all(text: str) -> Iterator[Any]:
    """Every YAML document in C{text}, in order."""
    return yaml.load_all(text, Loader=_Loader)


def describe(error: yaml.YAMLError, text: str) -> str:
    """
    C{"line N: invalid YAML: what"} for an error met while parsing C{text}.
    """
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    if mark is not None:
        line = mark.line + 1
    elif isinstance(error, yaml.reader.ReaderError):
        line = text.count("\n", 0, error.position) + 1
    else:
        line = None
    if isinstance(error, yaml.reader.ReaderError):
        problem = f"{error.reason} ({error.character!r})"
    else:
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    where = f"line {line}: " if line is not None else ""
    return f"{where}invalid YAML: {problem}"


def read_text(path: str) -> str:
    """
    The text of a UTF-8 file.

    @raise OSError: if it cannot be read.
    @raise ValueError: one line, if it is not UTF-8.
    """
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 (byte {e.start} is {data[e.start]:#04x})") from None
