"""
The C{meshdns} command over real sockets: against a running C{twistd -n
meshdns}, against a silent loopback port, and as the installed console script.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from meshdns_plugin.cli import main
from tests.support.cli import run
from tests.support.paths import SHIPPED_CONFIG
from tests.support.processes import free_port
from tests.support.samples import entry


def test_table_and_listeners_ask_the_running_meshdns(
    capsys, start_meshdns: Callable[..., object], upstream
) -> None:
    admin = free_port()
    meshdns = start_meshdns(
        {"upstream": {"servers": [upstream.server]}, "admin": {"port": admin}},
        {"entries.yaml": entry("served.example", "192.0.2.44")},
    )
    config = str(meshdns.config_path)
    code, out, err = run(capsys, "table", "-c", config)
    assert code == 0
    assert f"from the running meshdns at http://127.0.0.1:{admin}/debug/table" in err
    assert out.splitlines()[1].split()[:3] == ["served.example", "A", "192.0.2.44"]
    code, out, err = run(capsys, "listeners", "-c", config)
    assert code == 0 and "from the running meshdns" in err
    # vip_listeners is off in that config: the server opens none.
    assert out.split() == ["ADDRESSES", "PORT", "MATCH", "DESTINATION"]
    meshdns.stop()
    code, out, err = run(capsys, "table", "-c", config)
    assert code == 0 and "from the files of" in err
    assert out.splitlines()[1].split()[:3] == ["served.example", "A", "192.0.2.44"]


def test_query_prints_like_dig(capsys, start_meshdns: Callable[..., object], upstream) -> None:
    meshdns = start_meshdns(
        {"upstream": {"servers": [upstream.server]}, "admin": {"port": 0}},
        {"entries.yaml": entry("address.internal", "198.51.100.1")},
    )
    server = f"127.0.0.1:{meshdns.port}"
    code, out, _ = run(capsys, "query", "address.internal", "--server", server)
    assert code == 0
    assert "status: NOERROR" in out and ";; flags: qr aa rd ra;" in out
    assert "address.internal.\t30\tIN\tA\t198.51.100.1" in out
    assert f";; SERVER: 127.0.0.1#{meshdns.port}(udp)" in out
    code, out, _ = run(capsys, "query", "nxname.upstream.test", "AAAA", "--server", server, "--tcp")
    assert code == 0
    assert "status: NXDOMAIN" in out and "(tcp)" in out
    # Without --server: the listen address of the config.
    code, out, _ = run(capsys, "query", "address.internal", "-c", str(meshdns.config_path))
    assert code == 0 and "198.51.100.1" in out


def test_console_script(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "meshdns"
    result = subprocess.run(
        [str(script), "check", "--config", str(SHIPPED_CONFIG)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK ")


def test_query_errors_are_one_line(capsys) -> None:
    port = free_port()
    silent = f"127.0.0.1:{port}"
    code, _, err = run(capsys, "query", "a.example", "--server", silent, "--timeout", "0.2")
    assert (code, err) == (1, f"meshdns: no answer from 127.0.0.1#{port} within 0.2 s\n")
    code, _, err = run(capsys, "query", "a.example", "BOGUS", "--server", silent)
    assert (code, err) == (1, "meshdns: 'BOGUS' is not a DNS query type\n")
    code, _, err = run(capsys, "query", "a..example", "--server", silent)
    assert code == 1 and err.startswith("meshdns: 'a..example' is not a domain name")
    with pytest.raises(SystemExit) as exited:
        main(["query", "a.example", "--server", "localhost"])
    assert exited.value.code == 2
    assert "is not IP, IP:PORT or [IPv6]:PORT" in capsys.readouterr().err
