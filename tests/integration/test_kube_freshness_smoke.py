"""
The Kubernetes freshness benchmark's smoke run: C{bench/kube_freshness.py}
at a tiny size (200 Services, 5 s of churn) against a real C{twistd meshdns}
and the test API server, so CI notices when the benchmark rots or a change
stops reaching answers. It checks that every change made is seen and every
query answered, not how fast: CI machines are too noisy for a number.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.paths import REPO_ROOT

BENCH = REPO_ROOT / "bench" / "kube_freshness.py"
KINDS = {f"{kind} {verb}" for kind in ("Service", "EndpointSlice", "ServiceEntry")
         for verb in ("ADDED", "MODIFIED", "DELETED")}


def test_smoke_run_sees_every_change(tmp_path: Path) -> None:
    """Every change of every kind answered, no query lost, the report printed."""
    figures = tmp_path / "figures.json"
    result = subprocess.run(
        [sys.executable, str(BENCH), "--services", "200", "--service-entries", "40",
         "--namespaces", "10", "--rate", "30", "--churn-seconds", "5",
         "--baseline-seconds", "1", "--settle-seconds", "0.5",
         "--no-install", "--no-readme", "--json", str(figures)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout
    assert "| Initial sync < 5 s |" in result.stdout
    run = json.loads(figures.read_text())
    changes = run["changes"]
    assert set(changes) == KINDS | {"all"}, result.stdout
    assert changes["all"]["count"] == run["changes_made"] >= 120, result.stdout
    assert changes["all"]["unseen"] == 0, result.stdout
    for stream in (run["baseline"], run["during_churn"]):
        assert stream["lost"] == 0 and stream["answered"] == stream["sent"] > 0, result.stdout
    assert run["alive"], result.stdout
    assert 0 < run["memory_end"]["VmRSS"] <= run["memory_end"]["VmHWM"]
