"""
Memory stays flat across reloads (issue 13): a real meshdns reloaded many
times under query load ends within 1.3x the RSS it had after its first
reload. C{bench/reload_memory.py} runs the large version (5,000 entries, 100
reloads); this is the small one.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.paths import REPO_ROOT


def test_rss_is_flat_across_reloads_under_load() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "reload_memory.py"),
         "--entries", "400", "--reloads", "40"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    figures = json.loads(result.stdout)
    assert figures["queries"] > 100  # the reloads really ran under load
    assert figures["ratio"] <= 1.3, figures
