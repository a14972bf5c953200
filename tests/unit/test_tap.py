"""
Tests for L{meshdns_plugin.tap}: the options of C{twistd meshdns}, parsed in
process (no service is built, no socket opened); every refusal is one
line, C{meshdns: ...}, as the L{SystemExit} that twistd lets through
(instead of its usage text and a line).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from meshdns_plugin.config import Config
from meshdns_plugin.tap import Options


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "meshdns.yaml"
    path.write_text("listen: {address: [127.0.0.1, '::1'], port: 5300}\n")
    return path


def parse(config_path: Path, *argv: str) -> Config:
    """C{twistd meshdns --config CONFIG_PATH ARGV} -> the config it would serve."""
    options = Options()
    options.parseOptions(["--config", str(config_path), *argv])
    return options["meshConfig"]


def refusal(config_path: Path, *argv: str) -> str:
    """The one line (without C{meshdns: }) that refuses C{argv}."""
    with pytest.raises(SystemExit) as caught:
        parse(config_path, *argv)
    line = str(caught.value.code)
    assert "\n" not in line and line.startswith("meshdns: ")
    return line.removeprefix("meshdns: ")


def test_the_config_decides_without_options(config_path: Path) -> None:
    listen = parse(config_path).listen
    assert (listen.addresses, listen.port) == (("127.0.0.1", "::1"), 5300)


def test_one_interface_replaces_every_address(config_path: Path) -> None:
    assert parse(config_path, "--interface", "127.0.0.2").listen.addresses == ("127.0.0.2",)


def test_interface_given_several_times(config_path: Path) -> None:
    """Repeated, long or short, in the order given; --port applies to them all."""
    listen = parse(config_path, "-i", "0:0::1", "--interface", "127.0.0.3", "-p", "5301").listen
    assert (listen.addresses, listen.port) == (("::1", "127.0.0.3"), 5301)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--interface", "localhost"], "--interface: 'localhost' is not an IP address"),
        (["-i", "::1", "-i", "127.0.0.1", "-i", "0::1"], "--interface: ::1 is listed twice"),
        (
            ["-i", "0.0.0.0", "-i", "127.0.0.1"],
            "--interface: 0.0.0.0 already listens on every IPv4 address, 127.0.0.1 included: "
            "list one or the other",
        ),
        (["--port", "65536"], "--port: '65536' is not a port number (0-65535)"),
    ],
)
def test_bad_options(config_path: Path, argv: list[str], message: str) -> None:
    assert refusal(config_path, *argv) == message


def test_port_0_with_several_addresses(config_path: Path) -> None:
    """From the file's addresses or from --interface: one line naming listen.port."""
    expected = (
        f"{config_path}: listen.port: 0 (any free port) needs a single listen address, not 2: "
        "each would get a different port"
    )
    assert refusal(config_path, "--port", "0") == expected
    assert refusal(config_path, "-p", "0", "-i", "127.0.0.1", "-i", "127.0.0.2") == expected
    assert parse(config_path, "-p", "0", "-i", "::1").listen.port == 0


def test_an_interface_beyond_loopback_needs_allow(config_path: Path) -> None:
    assert refusal(config_path, "-i", "127.0.0.1", "-i", "192.0.2.7") == (
        f"{config_path}: listen.allow: required when listening on 192.0.2.7, which is not "
        "loopback (list the client networks, e.g. [10.0.0.0/8])"
    )
