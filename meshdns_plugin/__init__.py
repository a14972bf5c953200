# -*- test-case-name: tests.unit.test_api -*-
"""
meshdns: a mesh-aware DNS proxy built as a plugin for Twisted Names.

The public API is L{meshdns_plugin.api}'s: L{meshAuthority},
L{cachingForwarder}, L{meshService}, L{loadConfig}, with L{Config},
L{ConfigError} and L{EntriesError}. Its names are imported when first used,
so that importing one part of the package (the pure C{mesh} model, the
C{meshdns} command) does not load the rest (Twisted Names, twisted.web,
prometheus_client).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "Config",
    "ConfigError",
    "EntriesError",
    "cachingForwarder",
    "loadConfig",
    "meshAuthority",
    "meshService",
]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module("meshdns_plugin.api"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
