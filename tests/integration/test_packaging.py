"""
Packaging rules that Twisted plugins get wrong easily, checked for real: twistd
finds the plugin as installed, there is no C{twisted/plugins/__init__.py}, the
wheel carries what C{twistd meshdns} needs (the plugin file, every module, the
embedded default config and the guide's entries) but no C{dropin.cache}, child
processes run the installed package rather than the source tree, and the code
is ruff-clean.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from tests.support.paths import REPO_ROOT, SHIPPED_ENTRIES
from tests.support.processes import TWISTD, child_env, outside_the_source_tree

ROOT = REPO_ROOT
#: Where this interpreter installs pure-Python packages: test.sh installs the wheel there.
SITE_PACKAGES = Path(sysconfig.get_paths()["purelib"]).resolve()
#: Prints where a child finds the package and the twistd plugin that names meshdns.
WHERE = """
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
import meshdns_plugin
import twisted.plugins.meshdns_plugin as drop_in
(maker,) = [m for m in getPlugins(IServiceMaker) if m.tapname == "meshdns"]
print(meshdns_plugin.__file__)
print(drop_in.__file__)
print(sys.modules[type(maker).__module__].__file__)
"""


def _twistd_help() -> str:
    """C{twistd --help} as a child process runs it: installed, outside the source tree."""
    result = subprocess.run(
        [*TWISTD, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=outside_the_source_tree(),
        env=child_env(),
    )
    return result.stdout


def test_twistd_lists_meshdns() -> None:
    assert "meshdns" in _twistd_help()


def test_children_run_the_installed_package() -> None:
    """
    What the integration tests start imports C{meshdns_plugin}, the drop-in
    and the service maker from site-packages, not from this checkout.
    """
    result = subprocess.run(
        [sys.executable, "-c", "import sys\n" + WHERE],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=outside_the_source_tree(),
        env=child_env(),
        check=True,
    )
    for line in result.stdout.splitlines():
        path = Path(line).resolve()
        assert path.is_relative_to(SITE_PACKAGES), f"{path} is not installed in {SITE_PACKAGES}"


def test_no_plugins_init() -> None:
    """An __init__.py there would replace Twisted's own on install."""
    assert not (ROOT / "twisted" / "plugins" / "__init__.py").exists()
    assert not (ROOT / "twisted" / "__init__.py").exists()


def _write_dropin_cache_in_the_source_tree() -> None:
    """Twisted writes C{dropin.cache} beside the plugins it scanned: here, the checkout's."""
    subprocess.run(
        [sys.executable, "-c",
         "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"],
        check=True,
        timeout=120,
        cwd=ROOT,
        capture_output=True,
    )


def test_wheel_contents(tmp_path: Path) -> None:
    """The wheel holds every module, the drop-in, the embedded config and entries, no cache."""
    _write_dropin_cache_in_the_source_tree()
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
    entries = {f"meshdns_plugin/conf/entries/{p.name}" for p in SHIPPED_ENTRIES.iterdir()}
    assert entries and entries <= names
    modules = {
        str(path.relative_to(ROOT)) for path in (ROOT / "meshdns_plugin").rglob("*.py")
    }
    assert modules <= names, sorted(modules - names)
    for package in ("mesh", "dns", "ops", "ops/listeners"):
        assert f"meshdns_plugin/{package}/__init__.py" in names
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "meshdns = meshdns_plugin.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
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
