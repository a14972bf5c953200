"""
Reliability of the real C{twistd -n meshdns} process: an open resolver is refused at
start-up, failing and down upstreams, serve-stale, TCP limits and hostile packets over
real sockets (the same packets on the in-memory server are in
C{tests.unit.dns.test_server}).
"""

from __future__ import annotations

import socket
import struct
import time

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from tests.support.processes import free_port, run_twistd
from tests.support.samples import CONF_ENTRIES, HOSTILE
from tests.support.waiting import wait_until


def test_refuses_open_resolver(tmp_path) -> None:
    config = tmp_path / "meshdns.yaml"
    config.write_text("listen: {address: 0.0.0.0, port: 0}\n")
    code, output = run_twistd(["--config", str(config)])
    assert code != 0 and "Traceback" not in output
    assert "listen.allow: required when listening on 0.0.0.0" in output.splitlines()[-1]
    code, output = run_twistd(["--interface", "0.0.0.0"])
    assert code != 0 and "listen.allow" in output.splitlines()[-1]


def test_any_answered_minimally(start_meshdns, upstream) -> None:
    meshdns = start_meshdns({"upstream": {"servers": [upstream.server]}})
    for name in ("address.internal", "anything.upstream.test"):
        reply = meshdns.query(name, "ANY")
        assert reply.rcode() == dns.rcode.NOERROR
        assert [r.rdtype for r in reply.answer] == [dns.rdatatype.HINFO]
    assert upstream.count("anything.upstream.test.", "ANY") == 0


@pytest.mark.parametrize(
    ("mode", "name"),
    [
        ("drop-all", "x.upstream.test"),
        ("servfail-all", "x.upstream.test"),
        ("wrong-id", "x.upstream.test"),
        (None, "slow.upstream.test"),
        (None, "blackhole.upstream.test"),
    ],
)
def test_failing_upstream_servfail_in_time(start_meshdns, upstream_factory, mode, name) -> None:
    bad = upstream_factory(mode)
    meshdns = start_meshdns({"upstream": {"servers": [bad.server], "timeout": 1}})
    started = time.monotonic()
    reply = meshdns.query(name, timeout=5)
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert time.monotonic() - started < 1.8
    # Not cached: the next query goes upstream again.
    before = bad.count(name + ".")
    meshdns.query(name, timeout=5)
    assert bad.count(name + ".") == before + 1


def test_down_upstream_then_failover(start_meshdns, upstream) -> None:
    dead = f"127.0.0.1:{free_port()}"
    meshdns = start_meshdns({"upstream": {"servers": [dead, dead], "timeout": 1}})
    started = time.monotonic()
    assert meshdns.query("x.upstream.test").rcode() == dns.rcode.SERVFAIL
    assert time.monotonic() - started < 1.8


def test_servfail_fails_over_to_second(start_meshdns, upstream_factory) -> None:
    first = upstream_factory("servfail-all")
    second = upstream_factory()
    meshdns = start_meshdns({"upstream": {"servers": [first.server, second.server], "timeout": 2}})
    assert [r.address for r in meshdns.query("ok.upstream.test").answer[0]] == ["127.0.0.10"]
    assert first.count("ok.upstream.test.") == 1 and second.count("ok.upstream.test.") == 1


def test_serve_stale(start_meshdns, upstream) -> None:
    meshdns = start_meshdns(
        {"upstream": {"servers": [upstream.server], "timeout": 1}, "cache": {"serve_stale": 60}}
    )
    assert meshdns.query("ttl5.upstream.test").answer[0].ttl == 5
    upstream.stop()
    # Once its 5 s are over the cached answer is stale, and served as such.
    reply = wait_until(
        lambda: (r := meshdns.query("ttl5.upstream.test", timeout=5)).answer
        and r.answer[0].ttl == 30
        and r,
        "the cached answer of ttl5.upstream.test to be served stale",
        timeout=5.2,
    )
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.answer[0].ttl == 30
    assert meshdns.query("never-seen.upstream.test", timeout=5).rcode() == dns.rcode.SERVFAIL


def _tcp_connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    return sock


def _tcp_query(sock: socket.socket, name: str) -> dns.message.Message:
    data = dns.message.make_query(name, "A").to_wire()
    sock.sendall(struct.pack("!H", len(data)) + data)
    length = struct.unpack("!H", _recv_exact(sock, 2))[0]
    return dns.message.from_wire(_recv_exact(sock, length))


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_tcp_limits(start_meshdns) -> None:
    meshdns = start_meshdns(
        {
            "listen": {"tcp_idle_timeout": 1, "tcp_max_connections": 4, "tcp_max_queries": 3},
            "entries": [CONF_ENTRIES],
        }
    )
    # Idle, and stalled in the middle of a length prefix: closed after ~1 s.
    idle = _tcp_connect(meshdns.port)
    stalled = _tcp_connect(meshdns.port)
    stalled.sendall(b"\x00")
    assert _closed_within(idle, 3) and _closed_within(stalled, 3)
    # Queries per connection.
    sock = _tcp_connect(meshdns.port)
    for _ in range(3):
        assert _tcp_query(sock, "address.internal").answer
    with pytest.raises(ConnectionError):
        _tcp_query(sock, "address.internal")
    # Concurrent connections: the fifth is closed at once; UDP still answers.
    held = [_tcp_connect(meshdns.port) for _ in range(4)]
    for connection in held:  # each one answered: all four are meshdns's now
        assert _tcp_query(connection, "address.internal").answer
    extra = _tcp_connect(meshdns.port)
    assert _closed_within(extra, 0.8)
    assert meshdns.query("address.internal").answer
    for s in (*held, sock, idle, stalled, extra):
        s.close()


def test_hostile_packets_real_process(start_meshdns) -> None:
    """Junk over real UDP and TCP (including a lying length prefix), then a valid query."""
    meshdns = start_meshdns({"listen": {"tcp_idle_timeout": 1}, "entries": [CONF_ENTRIES]})
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        for data in HOSTILE:
            udp.sendto(data, ("127.0.0.1", meshdns.port))
    liar = _tcp_connect(meshdns.port)
    liar.sendall(b"\xff\xff" + b"short")
    for data in HOSTILE:
        with _tcp_connect(meshdns.port) as sock:
            sock.sendall(struct.pack("!H", len(data)) + data)
    assert meshdns.query("address.internal").answer
    assert _closed_within(liar, 3)
    assert meshdns.process.poll() is None
    assert "Traceback" not in meshdns.log()
