"""
What importing loads, in a fresh interpreter: the mesh model's loader and the
C{meshdns} command (C{meshdns check}, C{meshdns table --json}) need neither
Twisted Names, twisted.web nor prometheus_client. The rules on the source are
in C{tests.unit.test_layout}; this is the same promise as Python keeps it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support.paths import REPO_ROOT

HEAVY = ("twisted.names", "twisted.web", "prometheus_client")
LOADED = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(sys.modules)))
"""


@pytest.mark.parametrize("module", ["meshdns_plugin.mesh.loader", "meshdns_plugin.cli"])
def test_light_imports(module: str) -> None:
    """The source tree's module, imported alone, loads none of L{HEAVY}."""
    result = subprocess.run(
        [sys.executable, "-c", LOADED, module],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    loaded = json.loads(result.stdout)
    assert module in loaded
    heavy = [m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY)]
    assert heavy == []
