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

#: Where each public name is defined.
_HOMES = {
    "Config": "meshdns_plugin.config",
    "ConfigError": "meshdns_plugin.config",
    "EntriesError": "meshdns_plugin.mesh.model",
    "cachingForwarder": "meshdns_plugin.api",
    "loadConfig": "meshdns_plugin.api",
    "meshAuthority": "meshdns_plugin.api",
    "meshService": "meshdns_plugin.api",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


__all__ = sorted(_HOMES)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
