"""
Start-up faults of the real C{twistd -n meshdns}: each ends with exactly one
line on stderr naming the address and port (or the file and key, or the
option) and exit code 1, with no traceback and no twistd usage text.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

from tests.support.processes import LOOPBACK, TWISTD, child_env, free_port, launch_meshdns


def start(directory: Path, args: Sequence[str]) -> tuple[int, str, str]:
    """Run C{twistd -n meshdns ARGS} until it exits: its code, stdout, stderr."""
    result = subprocess.run(
        [*TWISTD, "meshdns", *args],
        cwd=directory,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    return result.returncode, result.stdout, result.stderr


def write_config(directory: Path, port: int) -> Path:
    """A config on loopback C{port}, no admin, a loopback upstream, no resolv.conf."""
    resolv_conf = directory / "resolv.conf"
    resolv_conf.write_text("")
    config = directory / "meshdns.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": {"address": LOOPBACK, "port": port},
                "admin": {"port": 0},
                "upstream": {"servers": [f"{LOOPBACK}:9"], "resolv_conf": str(resolv_conf)},
                "entries": [],
            }
        )
    )
    return config


@pytest.mark.parametrize(
    ("kind", "protocol"), [(socket.SOCK_DGRAM, "UDP"), (socket.SOCK_STREAM, "TCP")]
)
def test_port_in_use(tmp_path: Path, kind: int, protocol: str) -> None:
    port = free_port()
    config = write_config(tmp_path, port)
    with socket.socket(socket.AF_INET, kind) as taken:
        taken.bind((LOOPBACK, port))
        if kind == socket.SOCK_STREAM:
            taken.listen()
        code, out, err = start(tmp_path, ["--config", str(config)])
    line = f"meshdns: cannot listen on {LOOPBACK} port {port} ({protocol}): Address already in use"
    assert (code, err) == (1, line + "\n")
    assert "Traceback" not in out and "serving on" not in out


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["--config", "missing.yaml"],
            "meshdns: missing.yaml: cannot read: No such file or directory",
        ),
        (["--config", "."], "meshdns: .: cannot read: Is a directory"),
        (["--bogus"], "meshdns: option --bogus not recognized"),
        (["--port", "http"], "meshdns: --port: 'http' is not a port number (0-65535)"),
    ],
)
def test_unusable_config_or_option(tmp_path: Path, args: list[str], line: str) -> None:
    code, out, err = start(tmp_path, args)
    assert (code, err) == (1, line + "\n")
    assert out == ""


def test_bad_key(tmp_path: Path) -> None:
    config = tmp_path / "meshdns.yaml"
    config.write_text("listen: {port: 99999}\n")
    code, _, err = start(tmp_path, ["--config", str(config)])
    assert (code, err) == (1, f"meshdns: {config}: listen.port: 99999 is out of range 0..65535\n")


def test_missing_entries_path_is_a_warning(tmp_path: Path) -> None:
    meshdns = launch_meshdns(tmp_path, {"entries": ["typo/entries"]})
    try:
        warning = (
            f"[meshdns_plugin.mesh.loader#warn] Entries path {tmp_path}/typo/entries does not exist"
        )
        assert warning in meshdns.log()
    finally:
        meshdns.stop()
