# -*- test-case-name: tests.unit.mesh.test_yamltext -*-
"""
Reading YAML files for people: every failure becomes one line that says
where, and no file can cost more time or memory than its size.

PyYAML's errors span several lines, and its reader errors (control
characters, bad encodings) carry a character position instead of a line; the
config and the entry files both report through L{describe}.

Entry files come from many hands, so reading one is bounded:
  - its size, checked before it is read (L{read_text}, L{MAX_FILE_SIZE} by
    default: far above any real file);
  - its nesting, L{MAX_DEPTH} levels (entries are a handful deep);
  - the nodes a walk of a document visits, L{MAX_NODES} per file. Aliases
    are kept, since Kubernetes accepts them (C{kubectl} reads anchors and
    aliases), but never expanded into copies: an alias shares its node's
    object. What the entry reader walks is still the expanded tree, so its
    size is what is counted (an alias as many times as it is used), before
    anything is built: a "billion laughs" file of a few hundred bytes is
    refused at once, in linear time, instead of growing into gigabytes or
    into minutes of walking. A recursive alias (to its own ancestor) is
    refused too: nothing downstream could walk it.

Scalars are read as Kubernetes reads them (C{kubectl} and Istio use
C{sigs.k8s.io/yaml}, whose YAML is go-yaml's): C{1:20} or C{1:2:3:4:5:6:7:8}
are strings, not YAML 1.1 base-60 numbers, and dates stay strings; in a flow
sequence, C{[001:db8::]} is the string C{001:db8::}, where libyaml fails.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

#: The default largest file, in bytes (config key C{limits.max_file_size}).
MAX_FILE_SIZE = 64 * 1024 * 1024
#: Nesting deeper than this is refused (a ServiceEntry is about 6 deep).
MAX_DEPTH = 100
#: Nodes a walk of a file may visit, aliases counted as often as they are used.
MAX_NODES = 20_000_000

_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_BLANKS = "\0 \t\r\n\x85\u2028\u2029"
#: libyaml's complaint about C{x:} before C{,[]{}} in a flow collection,
#: which go-yaml (and so Kubernetes) reads as part of the scalar.
_FLOW_COLON = "found unexpected ':'"
#: Longer problems (quoting a huge tag, say) are cut here.
_LONGEST_PROBLEM = 200
#: libyaml's own nesting limit (1000), met before L{MAX_DEPTH} is checked.
_LIBYAML_DEPTH = "exceeded maximum nesting depth"

#: YAML 1.1's implicit types without those go-yaml does not have:
#: base-60 integers and floats, and timestamps.
_INT = re.compile(
    r"""^(?:[-+]?0b[0-1_]+
    |[-+]?0[0-7_]+
    |[-+]?(?:0|[1-9][0-9_]*)
    |[-+]?0x[0-9a-fA-F_]+)$""",
    re.X,
)
_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
    |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_REPLACED = {"tag:yaml.org,2002:int": _INT, "tag:yaml.org,2002:float": _FLOAT}
_DROPPED = {"tag:yaml.org,2002:timestamp"}


def _kubernetes_resolvers() -> dict[str | None, list[tuple[str, re.Pattern[str]]]]:
    """PyYAML's implicit resolvers, with L{_REPLACED} and without L{_DROPPED}."""
    resolvers: dict[str | None, list[tuple[str, re.Pattern[str]]]] = {}
    for first, pairs in yaml.resolver.Resolver.yaml_implicit_resolvers.items():
        kept = [
            (tag, _REPLACED.get(tag, regexp)) for tag, regexp in pairs if tag not in _DROPPED
        ]
        if kept:
            resolvers[first] = kept
    return resolvers


_KUBERNETES_RESOLVERS = _kubernetes_resolvers()


class _Resolving:
    """
    PyYAML's resolver, for loaders without path resolvers (both of ours): the
    same tags, found without the bookkeeping of path resolvers or a new list
    per scalar. A file of 100k ServiceEntries has 3 million scalars, and
    PyYAML's own version took a fifth of its parse.
    """

    yaml_implicit_resolvers = _KUBERNETES_RESOLVERS
    #: First character -> the resolvers to try, wildcard ones included.
    _by_first = {
        first: pairs + _KUBERNETES_RESOLVERS.get(None, [])
        for first, pairs in _KUBERNETES_RESOLVERS.items()
        if first is not None
    }
    _wildcard = _KUBERNETES_RESOLVERS.get(None, [])

    def descend_resolver(self, current_node: Any, current_index: Any) -> None:
        pass

    def ascend_resolver(self) -> None:
        pass

    def resolve(self, kind: type, value: Any, implicit: tuple[bool, bool]) -> str:
        if kind is ScalarNode:
            if implicit[0]:
                for tag, regexp in self._by_first.get(value[:1], self._wildcard):
                    if regexp.match(value):
                        return tag
            return _STR_TAG
        return super().resolve(kind, value, implicit)  # type: ignore[misc]


class LimitError(yaml.MarkedYAMLError):
    """
    A document is over one of the limits; C{problem} says which, C{problem_mark}
    where.
    """


class _Unusual(Exception):
    """A node the direct constructor leaves to PyYAML's generic one."""


def _children(node: Node) -> list[Node]:
    if node.__class__ is SequenceNode:
        return node.value
    if node.__class__ is MappingNode:
        return [child for pair in node.value for child in pair]
    return []


def measure(root: Node) -> None:
    """
    Refuse a document whose walk would visit more than L{MAX_NODES} nodes,
    go deeper than L{MAX_DEPTH}, or never end (a recursive alias).

    Each node is looked at once, whatever the number of aliases to it (its
    expanded size and height are remembered), and without recursion, so that
    the check itself is linear and bounded.

    @raise LimitError: naming the limit and where it is exceeded.
    """
    done: dict[Node, tuple[int, int]] = {}
    on_path: set[Node] = set()
    # Frames: [node, its children, next child index, expanded size, height].
    stack: list[list[Any]] = []

    def enter(node: Node) -> None:
        if len(stack) >= MAX_DEPTH:
            raise LimitError(
                problem=_too_deep(),
                problem_mark=node.start_mark,
            )
        on_path.add(node)
        stack.append([node, _children(node), 0, 1, 1])

    enter(root)
    while stack:
        frame = stack[-1]
        node, children, index = frame[0], frame[1], frame[2]
        if index == len(children):
            stack.pop()
            on_path.discard(node)
            done[node] = (frame[3], frame[4])
            if stack:
                parent = stack[-1]
                parent[3] += frame[3]
                parent[4] = max(parent[4], frame[4] + 1)
                if parent[3] > MAX_NODES:
                    raise LimitError(
                        problem=f"expands to more than {MAX_NODES} nodes through aliases "
                        "(the limit)",
                        problem_mark=parent[0].start_mark,
                    )
            continue
        frame[2] = index + 1
        child = children[index]
        if child in on_path:
            raise LimitError(
                problem="an alias refers to a node that contains it (a recursive structure)",
                problem_mark=child.start_mark,
            )
        known = done.get(child)
        if known is None:
            enter(child)
            continue
        size, height = known
        if len(stack) + height > MAX_DEPTH:
            raise LimitError(
                problem=_too_deep(),
                problem_mark=child.start_mark,
            )
        frame[3] += size
        frame[4] = max(frame[4], height + 1)
        if frame[3] > MAX_NODES:
            raise LimitError(
                problem=f"expands to more than {MAX_NODES} nodes through aliases (the limit)",
                problem_mark=node.start_mark,
            )


class _Bounded:
    """
    The constructor shared by both loaders: a direct, recursive one for plain
    mappings, sequences and scalars, within the limits above.

    The generic constructor goes through generators to support recursive
    structures; entry files are shallow trees, and building them directly
    halves the time to load 100k ServiceEntries. Merge keys and other tags
    fall back to the generic constructor, so the result is always the same.

    A file without C{&} has no anchors, hence no aliases: its nodes form a
    tree whose size the file size bounds, and only its depth needs checking,
    which the direct constructor does as it goes. A file with anchors is
    measured first (L{measure}), and an aliased node is built once.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)  # type: ignore[call-arg]
        self._anchored = "&" in stream
        self._built: dict[Node, Any] = {}

    def construct_document(self, node: Node) -> Any:
        if self._anchored:
            measure(node)
        self._built = {}
        try:
            data = self._direct(node, 0)
        except _Unusual:
            if not self._anchored:
                measure(node)
            data = super().construct_document(node)  # type: ignore[misc]
        self.constructed_objects = {}
        self.recursive_objects = {}
        self._built = {}
        return data

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        """
        PyYAML's, with a value its tag cannot read (C{!!int abc}) as a
        L{yaml.YAMLError} of one short line, not the C{ValueError} that
        quotes the whole value.
        """
        try:
            return super().construct_object(node, deep)  # type: ignore[misc]
        except (ValueError, TypeError, OverflowError):
            raise _unreadable(node) from None

    def _direct(self, node: Any, depth: int) -> Any:
        if depth >= MAX_DEPTH:
            raise LimitError(
                problem=_too_deep(),
                problem_mark=node.start_mark,
            )
        kind = node.__class__
        if kind is ScalarNode:
            if node.tag == _STR_TAG:
                return node.value
            construct = self.yaml_constructors.get(node.tag)
            if construct is None:
                raise _Unusual
            try:
                return construct(self, node)
            except (ValueError, TypeError, OverflowError):
                raise _unreadable(node) from None
        if self._anchored and node in self._built:
            return self._built[node]
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
            data: Any = mapping
        elif kind is SequenceNode and node.tag == _SEQ_TAG:
            data = [self._direct(item, depth + 1) for item in node.value]
        else:
            raise _Unusual
        if self._anchored:
            self._built[node] = data
        return data


def _unreadable(node: Node) -> yaml.constructor.ConstructorError:
    """The error for a scalar that its tag cannot read, quoting a short prefix."""
    value = node.value if isinstance(node.value, str) else ""
    shown = repr(value) if len(value) <= 40 else repr(value[:40]) + "..."
    tag = node.tag.rsplit(":", 1)[-1]
    return yaml.constructor.ConstructorError(
        None, None, f"{shown} is not a valid {tag}", node.start_mark
    )


class _GoScanner:
    """
    PyYAML's scanner, ending plain scalars where go-yaml does: at C{:} only
    when a blank follows, in flow collections too (PyYAML also ends them at
    C{:} before C{,[]{}}), so that C{[001:db8::]} is one address.
    """

    def scan_plain(self: Any) -> yaml.tokens.ScalarToken:
        chunks: list[str] = []
        start_mark = end_mark = self.get_mark()
        indent = self.indent + 1
        spaces: list[str] = []
        while self.peek() != "#":
            length = 0
            while True:
                ch = self.peek(length)
                if (
                    ch in _BLANKS
                    or (ch == ":" and self.peek(length + 1) in _BLANKS)
                    or (self.flow_level and ch in ",[]{}")
                    or (self.flow_level and ch == "?" and self.peek(length + 1) in _BLANKS)
                ):
                    break
                length += 1
            if length == 0:
                break
            self.allow_simple_key = False
            chunks.extend(spaces)
            chunks.append(self.prefix(length))
            self.forward(length)
            end_mark = self.get_mark()
            spaces = self.scan_plain_spaces(indent, start_mark)
            if not spaces or self.peek() == "#" or (not self.flow_level and self.column < indent):
                break
        return yaml.tokens.ScalarToken("".join(chunks), True, start_mark, end_mark)


class _PythonLoader(_Bounded, _Resolving, _GoScanner, yaml.SafeLoader):
    """PyYAML's pure-Python safe loader, with L{_GoScanner} and the bounds."""


_CLoader = getattr(yaml, "CSafeLoader", None)

if _CLoader is not None:

    class _FastLoader(_Bounded, _Resolving, _CLoader):  # type: ignore[misc, valid-type]
        """libyaml's parser, with the bounds and Kubernetes's scalars."""

    _LOADERS: tuple[type, ...] = (_FastLoader, _PythonLoader)
else:
    _LOADERS = (_PythonLoader,)


def _documents(text: str, loader: type) -> Iterator[Any]:
    documents = yaml.load_all(text, Loader=loader)
    try:
        yield from documents
    except RecursionError:
        raise LimitError(problem=_too_deep()) from None


def load_all(text: str) -> Iterator[Any]:
    """
    Every YAML document in C{text}, in order.

    libyaml reads it unless it meets what only go-yaml accepts (C{x:} before
    C{,]}} in a flow collection); then the whole text is read again by the
    pure-Python loader, and the documents already given are not repeated.

    @raise yaml.YAMLError: if it is not YAML; L{LimitError} if it is over a limit.
    """
    given = 0
    try:
        for document in _documents(text, _LOADERS[0]):
            yield document
            given += 1
    except yaml.scanner.ScannerError as e:
        if len(_LOADERS) == 1 or e.problem != _FLOW_COLON:
            raise
        for index, document in enumerate(_documents(text, _LOADERS[-1])):
            if index >= given:
                yield document


def load(text: str) -> Any:
    """
    The single YAML document in C{text} (L{None} if there is none), read as
    L{load_all} reads it.

    @raise yaml.YAMLError: if it is not YAML, or holds several documents;
        L{LimitError} if it is over a limit.
    """
    try:
        return _single(text, _LOADERS[0])
    except yaml.scanner.ScannerError as e:
        if len(_LOADERS) == 1 or e.problem != _FLOW_COLON:
            raise
    return _single(text, _LOADERS[-1])


def _single(text: str, loader_type: type) -> Any:
    loader = loader_type(text)
    try:
        return loader.get_single_data()
    except RecursionError:
        raise LimitError(problem=_too_deep()) from None
    finally:
        loader.dispose()


def describe(error: yaml.YAMLError, text: str) -> str:
    """
    C{"line N: invalid YAML: what"} for an error met while parsing C{text}
    (C{"line N: what"} for a limit), never longer than one short line of it.
    """
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    if mark is not None:
        line = mark.line + 1
    elif isinstance(error, yaml.reader.ReaderError):
        line = text.count("\n", 0, error.position) + 1
    else:
        line = None
    where = f"line {line}: " if line is not None else ""
    if isinstance(error, yaml.reader.ReaderError):
        return f"{where}invalid YAML: {error.reason} ({error.character!r})"
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    if len(problem) > _LONGEST_PROBLEM:
        problem = problem[:_LONGEST_PROBLEM] + "..."
    if isinstance(error, LimitError):
        return f"{where}{problem}"
    if problem == _LIBYAML_DEPTH:
        return f"{where}nested more than {MAX_DEPTH} levels deep (the limit)"
    return f"{where}invalid YAML: {problem}"


def read_text(path: str, max_size: int = MAX_FILE_SIZE) -> str:
    """
    The text of a UTF-8 file of at most C{max_size} bytes.

    The size is checked before anything is read, and no more than
    C{max_size} bytes are ever read (a file may grow while it is read).

    @raise OSError: if it cannot be read.
    @raise ValueError: one line, if it is too large or not UTF-8.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_size:
            raise ValueError(_too_large(size, max_size))
        data = f.read(max_size + 1)
    if len(data) > max_size:
        raise ValueError(_too_large(len(data), max_size))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 (byte {e.start} is {data[e.start]:#04x})") from None


def _too_deep() -> str:
    return f"nested more than {MAX_DEPTH} levels deep (the limit)"


def _too_large(size: int, max_size: int) -> str:
    return (
        f"{size} bytes, over the limit of {max_size} bytes "
        "(limits.max_file_size); not read"
    )
