"""
Packaging rules that Twisted plugins get wrong easily, checked for real: twistd
finds the plugin, there is no C{twisted/plugins/__init__.py}, the wheel carries
no C{dropin.cache} but does carry the default config, and the code is
ruff-clean.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.support.paths import REPO_ROOT
from tests.support.processes import TWISTD

ROOT = REPO_ROOT


def _twistd_help() -> str:
    result = subprocess.run(
        [*TWISTD, "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    return result.stdout


def test_twistd_lists_meshdns() -> None:
    assert "meshdns" in _twistd_help()


def test_no_plugins_init() -> None:
    """An __init__.py there would replace Twisted's own on install."""
    assert not (ROOT / "twisted" / "plugins" / "__init__.py").exists()
    assert not (ROOT / "twisted" / "__init__.py").exists()


def test_wheel_contents(tmp_path: Path) -> None:
    _twistd_help()  # writes twisted/plugins/dropin.cache in the source tree
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("meshdns-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "twisted/plugins/meshdns_plugin.py" in names
    assert "meshdns_plugin/conf/meshdns.yaml" in names
    assert not any(n.endswith("dropin.cache") for n in names)
    assert not any(n.startswith("twisted/") and n.endswith("__init__.py") for n in names)


def test_dropin_cache_ignored_by_git() -> None:
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "twisted/plugins/dropin.cache"], cwd=ROOT, timeout=30
    )
    assert ignored.returncode == 0


def test_ruff_clean() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "."],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
