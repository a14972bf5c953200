"""
What to do when a test cannot run here: skip it on a developer's machine, but
fail it as root or on CI, where C{test.sh} installs every Debian package the
tests need and network namespaces can be made, so that a missing tool or a
broken set-up shows as a failure instead of a quietly skipped capture test.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest


def must_run() -> bool:
    """True as root or when C{CI} is set: there, every test must be able to run."""
    return os.geteuid() == 0 or bool(os.environ.get("CI"))


def unavailable(reason: str) -> NoReturn:
    """Fail the calling test (as root or on CI) or skip it, saying C{reason}."""
    if must_run():
        who = "root" if os.geteuid() == 0 else "CI"
        pytest.fail(f"{reason}; as {who} this test must run (test.sh installs it)", pytrace=False)
    pytest.skip(reason)


def require_command(command: str, package: str) -> None:
    """L{unavailable} unless C{command} (from Debian's C{package}) is on the path."""
    if shutil.which(command) is None:
        unavailable(f"{command} is not installed (apt-get install {package})")
