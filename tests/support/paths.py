"""Where the repository's files are, for tests that read them (not for running meshdns)."""

from __future__ import annotations

from pathlib import Path

#: The checkout: C{tests/support/paths.py} is two folders below it.
REPO_ROOT = Path(__file__).resolve().parents[2]
#: The shipped default config and the Istio guide's ServiceEntries.
SHIPPED_CONFIG = REPO_ROOT / "conf" / "meshdns.yaml"
SHIPPED_ENTRIES = REPO_ROOT / "conf" / "entries"
