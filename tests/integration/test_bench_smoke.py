"""
The benchmark's smoke mode: C{bench/run.sh --smoke} runs dnsperf against a
real C{twistd meshdns} for 2 seconds on loopback, so CI notices when the
benchmark rots or the fast path starts losing or failing queries. It checks
that it works, not how fast: CI machines are too noisy for a number.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.paths import REPO_ROOT
from tests.support.required import require_command

RUN = REPO_ROOT / "bench" / "run.sh"



def test_smoke_run_answers_every_query(tmp_path: Path) -> None:
    """2 s at saturation and 1 s at 300 qps: every query answered NOERROR."""
    require_command("dnsperf", "dnsperf")
    figures = tmp_path / "figures.json"
    env = dict(os.environ, PYTHON=sys.executable)
    result = subprocess.run(
        ["bash", str(RUN), "--smoke", "--json", str(figures)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout
    (local,) = json.loads(figures.read_text())["results"]
    assert (local["server"], local["workload"]) == ("meshdns", "local")
    for run in (local["saturation"], local["light"]):
        assert run["lost"] == 0, result.stdout
        assert run["rcodes"] == {"NOERROR": run["sent"]}, result.stdout
    assert local["saturation"]["qps"] > 1000, result.stdout
    assert local["problems"] == []
