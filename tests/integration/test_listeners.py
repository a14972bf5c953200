"""
The VIP listeners for real: binding sockets (an address not yet local too), and a real
C{twistd -n meshdns} relaying to TCP echo servers across a reload.
"""

from __future__ import annotations

import errno
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meshdns_plugin.ops.listeners.service import bind_socket, routed_here
from tests.support.processes import (
    FAKE_UPSTREAM,
    LOOPBACK,
    TCP_ECHO,
    MeshdnsProcess,
    UpstreamProcess,
    child_env,
    free_port,
    stop_process,
)
from tests.support.samples import service_entry


def test_bind_socket_listens() -> None:
    with bind_socket(LOOPBACK, 0) as sock:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        assert not sock.getblocking()
        port = sock.getsockname()[1]
        with pytest.raises(OSError) as caught:
            bind_socket(LOOPBACK, port)
        assert caught.value.errno == errno.EADDRINUSE


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="IP_FREEBIND is Linux's")
def test_bind_socket_binds_an_address_not_yet_local() -> None:
    """A VIP binds before its route exists (nothing is sent: it only listens)."""
    with bind_socket("192.0.2.1", 0) as sock:
        assert sock.getsockname()[0] == "192.0.2.1"


def test_routed_here() -> None:
    assert routed_here("127.0.0.1")
    assert routed_here("127.0.0.42")
    assert not routed_here("192.0.2.1")


def start_echo(prefix: str, address: str = LOOPBACK) -> tuple[subprocess.Popen[str], int]:
    """A L{TCP_ECHO} server on a free port of C{address}; the process and port."""
    process = subprocess.Popen(
        [sys.executable, str(TCP_ECHO), address, "0", prefix],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("ready "), line
    return process, int(line.split()[1])


def start_upstream_with(log_path: Path, *records: str) -> UpstreamProcess:
    """The fake upstream with C{--record NAME=IP} for each of C{records}."""
    args = [sys.executable, str(FAKE_UPSTREAM), "--port", "0", "--address", LOOPBACK]
    for record in records:
        args += ["--record", record]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=child_env())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and process.poll() is None:
        for line in log_path.read_text().splitlines():
            if line.startswith("READY "):
                return UpstreamProcess(LOOPBACK, int(line.split()[1].split("=")[1]), process)
        time.sleep(0.05)
    stop_process(process)
    pytest.fail(f"fake upstream did not start:\n{log_path.read_text()}")


def exchange(address: str, port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send C{data}, shut down the writing side, read until EOF."""
    with socket.create_connection((address, port), timeout=timeout) as conn:
        conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := conn.recv(4096):
            received += chunk
        return received


def wait_for(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def refused(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.fixture
def echoes() -> Iterator[dict[str, int]]:
    """Two TCP echo servers on loopback: prefix -> port."""
    started = [start_echo("one"), start_echo("two")]
    yield {"one": started[0][1], "two": started[1][1]}
    for process, _ in started:
        stop_process(process)
        assert process.stdout is not None
        process.stdout.close()


def test_forwarding_and_reload_with_twistd(
    tmp_path: Path, start_meshdns: Callable[..., MeshdnsProcess], echoes: dict[str, int]
) -> None:
    """
    Listeners on loopback addresses (no VIP routes needed): resolution DNS
    through the fake upstream, STATIC endpoints with their port; then a reload
    that removes one listener and adds another while a connection is open.
    """
    upstream = start_upstream_with(tmp_path / "upstream.log", "echo-one.example=127.0.0.1")
    try:
        dns_port, static_port, new_port = (free_port(f"127.0.0.{n}") for n in (41, 42, 43))
        dns_entry = service_entry(
            "dns",
            f"hosts: [echo-one.example]\naddresses: [127.0.0.41]\nresolution: DNS\n"
            f"ports: [{{number: {dns_port}, name: tcp, targetPort: {echoes['one']}}}]",
        )
        static_entry = service_entry(
            "static",
            f"hosts: [echo-two.example]\naddresses: [127.0.0.42]\nresolution: STATIC\n"
            f"ports: [{{number: {static_port}, name: tcp}}]\n"
            f"endpoints: [{{address: 127.0.0.1, ports: {{tcp: {echoes['two']}}}}}]",
        )
        meshdns = start_meshdns(
            {
                "upstream": {"servers": [upstream.server]},
                "admin": {"port": 0},
                "mesh": {"search": []},
                "reload": {"poll_interval": 0.2, "debounce": 0.05},
                "vip_listeners": {"enabled": True},
            },
            {"entries/se.yaml": dns_entry + "---\n" + static_entry},
        )
        assert exchange("127.0.0.41", dns_port, b"hello") == b"one hello"
        assert exchange("127.0.0.42", static_port, b"hello") == b"two hello"

        # A connection that stays open across the reload.
        kept = socket.create_connection(("127.0.0.41", dns_port), timeout=5)
        kept.sendall(b"before")
        assert kept.recv(100) == b"one before"

        new_entry = service_entry(
            "new",
            f"hosts: [echo-new.example]\naddresses: [127.0.0.43]\nresolution: STATIC\n"
            f"ports: [{{number: {new_port}, targetPort: {echoes['one']}}}]\n"
            f"endpoints: [{{address: 127.0.0.1}}]",
        )
        (tmp_path / "entries" / "se.yaml").write_text(dns_entry + "---\n" + new_entry)
        wait_for(lambda: "Reloaded:" in meshdns.log(), "the reload")
        assert exchange("127.0.0.43", new_port, b"hi") == b"one hi"
        assert refused("127.0.0.42", static_port)
        kept.sendall(b"after")
        assert kept.recv(100) == b"one after"
        kept.close()
        assert exchange("127.0.0.41", dns_port, b"again") == b"one again"
    finally:
        upstream.stop()


def test_unreachable_backend_closes_the_client(
    tmp_path: Path, start_meshdns: Callable[..., MeshdnsProcess], upstream: UpstreamProcess
) -> None:
    """nxname.upstream.test does not exist: the client is closed, the failure logged."""
    port = free_port("127.0.0.44")
    meshdns = start_meshdns(
        {
            "upstream": {"servers": [upstream.server]},
            "admin": {"port": 0},
            "mesh": {"search": []},
            "vip_listeners": {"enabled": True},
        },
        {
            "se.yaml": service_entry(
                "gone",
                f"hosts: [nxname.upstream.test]\naddresses: [127.0.0.44]\nresolution: DNS\n"
                f"ports: [{{number: {port}}}]",
            )
        },
    )
    assert exchange("127.0.0.44", port, b"anyone?") == b""
    wait_for(lambda: "cannot forward: nxname.upstream.test: no such name" in meshdns.log(),
             "the failure line")
