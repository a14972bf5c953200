"""
L{meshdns_plugin.mesh.carryover} in a real C{twistd -n meshdns}: a multi-team folder with
broken files starts and serves the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.support.samples import TEAM_A, TEAM_B, TEAM_C


def test_twistd_starts_with_invalid_documents_and_serves_the_rest(
    start_meshdns: Callable[..., Any], upstream: Any
) -> None:
    """The real process: no traceback, one error line per invalid document."""
    meshdns = start_meshdns(
        {"upstream": {"servers": [upstream.server]}, "mesh": {"search": []}},
        {"team_a.yaml": TEAM_A, "team_b.yaml": TEAM_B, "team_c.yaml": TEAM_C},
    )
    reply = meshdns.query("maps.example.com")
    assert [r.to_text() for rrset in reply.answer for r in rrset] == ["192.0.2.10"]
    reply = meshdns.query("ledger.team-b.svc.cluster.local")
    assert [r.to_text() for rrset in reply.answer for r in rrset] == ["10.96.1.1"]
    log = meshdns.log()
    assert "Traceback" not in log
    invalid = [line for line in log.splitlines() if "Invalid, left out" in line]
    assert len(invalid) == 2
    assert any("team_b.yaml: document 1: spec.addresses[0]" in line for line in invalid)
    assert any("team_c.yaml" in line for line in invalid)
