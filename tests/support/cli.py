"""Running the C{meshdns} command in this process, as its console script would."""

from __future__ import annotations

import pytest

from meshdns_plugin.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err
