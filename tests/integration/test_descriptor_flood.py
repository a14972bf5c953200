"""
A TCP flood past the open files limit (issue 19, items 6 and 7), against the
real C{twistd -n meshdns} started with a hard RLIMIT_NOFILE of L{LIMIT} and
C{listen.tcp_max_connections} far above it: the flood once took every
descriptor, so that forwarded UDP queries failed (each upstream query needs
a socket of its own), the log gained a "Too many open files" line per
connection and the entry watcher raised tracebacks.

The expected cap is the README's rule ("keeping 64 descriptors plus one per
C{upstream.max_concurrent}"): 256 - 64 - 64 = 128 connections. The witnesses
are the connections meshdns closed, the fake upstream's query log, the
answers and meshdns's log. Loopback only; the flood is L{FLOOD} connections.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from tests.support.processes import MeshdnsProcess, UpstreamProcess
from tests.support.samples import entry
from tests.support.waiting import wait_until

#: The hard (and soft) RLIMIT_NOFILE meshdns starts with.
LIMIT = 256
MAX_CONCURRENT = 64
#: The README's rule: the limit less 64 and one per question in flight.
EXPECTED_CAP = LIMIT - 64 - MAX_CONCURRENT
#: Client connections opened and held: more than the limit itself.
FLOOD = LIMIT + 64
#: Distinct names forwarded at once while the flood is held.
FORWARDED = 40
#: The line meshdns logs when the cap bites (dns/server.py).
CAP_LINE = "TCP connections open, the most allowed"


def _flood(meshdns: MeshdnsProcess, sockets: contextlib.ExitStack) -> list[socket.socket]:
    """Open L{FLOOD} TCP connections to meshdns, one after the other."""
    opened = []
    for _ in range(FLOOD):
        sock = sockets.enter_context(
            socket.create_connection((meshdns.address, meshdns.port), timeout=5)
        )
        opened.append(sock)
    return opened


def _closed_by_server(opened: list[socket.socket]) -> int:
    """How many of C{opened} meshdns has closed (readable, with EOF)."""
    closed = 0
    for sock in opened:
        readable, _, _ = select.select([sock], [], [], 0)
        if readable:
            try:
                data = sock.recv(1, socket.MSG_PEEK)
            except ConnectionResetError:
                data = b""
            closed += data == b""
    return closed


def _forward_at_once(meshdns: MeshdnsProcess, names: list[str]) -> dict[str, dns.message.Message]:
    """Send a UDP query for each of C{names} at once; the replies within 5 s."""
    queries = {}
    replies: dict[str, dns.message.Message] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for name in names:
            query = dns.message.make_query(name, "A")
            queries[query.id] = query
            sock.sendto(query.to_wire(), (meshdns.address, meshdns.port))
        deadline = time.monotonic() + 5.0
        while len(replies) < len(names) and time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                wire, _ = sock.recvfrom(65535)
            except TimeoutError:
                break
            reply = dns.message.from_wire(wire)
            query = queries.get(reply.id)
            if query is not None and query.is_response(reply):
                replies[str(query.question[0].name)] = reply
    return replies


def _addresses(reply: dns.message.Message) -> list[str]:
    return sorted(
        r.address for rrset in reply.answer if rrset.rdtype == dns.rdatatype.A for r in rrset
    )


def test_forwarding_and_reloads_survive_a_tcp_flood(
    start_meshdns, upstream: UpstreamProcess
) -> None:
    meshdns = start_meshdns(
        {
            "listen": {"tcp_max_connections": 10 * LIMIT, "tcp_idle_timeout": 120},
            "upstream": {
                "servers": [upstream.server],
                "timeout": 2,
                "max_concurrent": MAX_CONCURRENT,
            },
            "mesh": {"search": []},
            "reload": {"poll_interval": 600, "debounce": 0.05},
        },
        {"se.yaml": entry("a.example", "192.0.2.1")},
        open_files=LIMIT,
    )
    with contextlib.ExitStack() as sockets:
        opened = _flood(meshdns, sockets)
        wait_until(
            lambda: _closed_by_server(opened) >= FLOOD - EXPECTED_CAP,
            "meshdns closing the connections past its cap", 10.0,
        )
        time.sleep(0.5)  # any further close would be a cap too low
        assert _closed_by_server(opened) == FLOOD - EXPECTED_CAP

        # A held connection is served.
        held = opened[0]
        held.settimeout(5)
        dns.query.send_tcp(held, dns.message.make_query("a.example.", "A"))
        reply, _ = dns.query.receive_tcp(held)
        assert _addresses(reply) == ["192.0.2.1"]

        # Forwarded UDP queries, all in flight at once, each on an upstream
        # socket of its own.
        names = [f"flood-{i}.upstream.test." for i in range(FORWARDED)]
        replies = _forward_at_once(meshdns, names)
        assert sorted(replies) == sorted(names), meshdns.log()[-3000:]
        for name, reply in replies.items():
            assert reply.rcode() == dns.rcode.NOERROR, (name, reply)
            assert _addresses(reply) == ["127.0.0.10"], name
            assert upstream.count(name) == 1, name

        # The entry watcher still reloads.
        (meshdns.directory / "se.yaml").write_text(entry("a.example", "192.0.2.2"))
        wait_until(
            lambda: _addresses(meshdns.query("a.example.", timeout=2)) == ["192.0.2.2"],
            "the edited entry answered", 10.0,
        )

    log = meshdns.log()
    assert log.count(CAP_LINE) == 1, log
    assert f"{EXPECTED_CAP} {CAP_LINE}" in log
    assert "Too many open files" not in log
    assert "Traceback" not in log
