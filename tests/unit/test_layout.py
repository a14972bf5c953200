"""
The layout's rules, read from the source with C{ast} (nothing is imported):
sources -> mesh -> dns -> ops, with no import cycle; the mesh model loads
neither the reactor, Twisted Names, twisted.web nor the sources, the DNS and
operations code; the DNS path reaches into neither the sources nor
operations; no module grows past 600 lines; and each
module's C{test-case-name} names test modules that exist. Importing in a fresh
interpreter is checked in C{tests.integration.test_imports}.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

from tests.support.paths import REPO_ROOT

PACKAGE = REPO_ROOT / "meshdns_plugin"
MAX_LINES = 600
#: What each part of the code must not import (by module name or name prefix).
FORBIDDEN = {
    "meshdns_plugin.mesh": (
        "twisted.internet",
        "twisted.names",
        "twisted.web",
        "meshdns_plugin.sources",
        "meshdns_plugin.dns",
        "meshdns_plugin.ops",
        "meshdns_plugin.service",
    ),
    "meshdns_plugin.dns": ("meshdns_plugin.ops", "meshdns_plugin.sources"),
}
TEST_CASE_NAME = re.compile(r"^# -\*- test-case-name: (\S+) -\*-$")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


@cache
def imported(name: str) -> frozenset[str]:
    """Every module C{name} imports, anywhere in its body (lazy imports too)."""
    found = set()
    package = name if is_package(name) else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(MODULES[name].read_text(), str(MODULES[name]))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # "from package import module" imports the module.
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return frozenset(found)


def internal_imports(name: str) -> set[str]:
    """The modules of this package that C{name} imports, by their most specific name."""
    return {other for other in imported(name) if other in MODULES and other != name}


def test_every_module_is_read() -> None:
    assert {"meshdns_plugin.mesh.loader", "meshdns_plugin.dns.server", "meshdns_plugin.cli",
            "meshdns_plugin.ops.listeners.relay"} <= set(MODULES)


@pytest.mark.parametrize("part", list(FORBIDDEN))
def test_what_each_part_does_not_import(part: str) -> None:
    wrong = {
        (name, other)
        for name in MODULES
        if name == part or name.startswith(part + ".")
        for other in imported(name)
        for banned in FORBIDDEN[part]
        if other == banned or other.startswith(banned + ".")
    }
    assert not wrong, f"{part} must not import: {sorted(wrong)}"


def test_no_import_cycle() -> None:
    """
    No module reaches itself through the modules it imports. A package's
    C{__init__} counts only for what it imports itself, not as a parent that
    every submodule import runs.
    """
    graph = {
        name: {other for other in internal_imports(name) if not name.startswith(other + ".")}
        for name in MODULES
    }
    cycles = []
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = "open"
        stack.append(name)
        for other in sorted(graph[name]):
            if state.get(other) == "open":
                cycles.append(stack[stack.index(other):] + [other])
            elif other not in state:
                visit(other)
        stack.pop()
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("name", list(MODULES))
def test_no_module_over_600_lines(name: str) -> None:
    assert len(MODULES[name].read_text().splitlines()) <= MAX_LINES


@pytest.mark.parametrize("name", list(MODULES))
def test_test_case_names_exist(name: str) -> None:
    """
    Every module with code names its tests (C{trial}'s and editors'
    C{test-case-name}), and every test module named exists.
    """
    first = MODULES[name].read_text().splitlines()[:1]
    match = TEST_CASE_NAME.match(first[0]) if first else None
    if match is None:
        assert is_package(name), f"{name} has no test-case-name line"
        return
    for test_module in match.group(1).split(","):
        assert (REPO_ROOT / (test_module.replace(".", "/") + ".py")).is_file(), test_module
