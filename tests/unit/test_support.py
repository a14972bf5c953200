"""
The test helpers' own rule for tests that cannot run here
(L{tests.support.required}): skipped on a developer's machine, failed as root
or on CI, where C{.ci/run} must not pass with the capture tests skipped.
"""

from __future__ import annotations

import pytest

from tests.support import required


@pytest.mark.parametrize(
    ("uid", "ci", "outcome"),
    [
        (1000, "", pytest.skip.Exception),
        (0, "", pytest.fail.Exception),
        (1000, "true", pytest.fail.Exception),
    ],
)
def test_unavailable_skips_only_where_it_may(
    monkeypatch: pytest.MonkeyPatch, uid: int, ci: str, outcome: type[BaseException]
) -> None:
    monkeypatch.setattr(required.os, "geteuid", lambda: uid)
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="iptables-that-is-not-there is not installed"):
        required.require_command("iptables-that-is-not-there", "iptables")
