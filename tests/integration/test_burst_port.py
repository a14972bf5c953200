"""
L{BurstUDPPort}: every datagram waiting on the socket is read and answered,
and the replies are sent after the burst, on a real loopback socket (the
port is driven by hand: C{doRead} is what the reactor calls when the socket
is readable).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import dns.message
import pytest
from twisted.internet.testing import MemoryReactorClock

from meshdns_plugin.dns import protocols as protocols_module
from meshdns_plugin.dns.protocols import BurstUDPPort, MeshDNSDatagramProtocol
from tests.support.samples import make_table
from tests.support.servers import MemoryServer


def query(name: str, ident: int) -> bytes:
    message = dns.message.make_query(name, "A")
    message.id = ident
    return message.to_wire()


@pytest.fixture
def served() -> Iterator[tuple[BurstUDPPort, socket.socket, MemoryServer]]:
    memory = MemoryServer(make_table())
    port = BurstUDPPort(
        0,
        MeshDNSDatagramProtocol(memory.factory),
        interface="127.0.0.1",
        reactor=MemoryReactorClock(),
    )
    port.startListening()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(2)
    client.connect(("127.0.0.1", port.getHost().port))
    yield port, client, memory
    client.close()
    port.socket.close()


def replies(client: socket.socket, count: int) -> list[dns.message.Message]:
    return [dns.message.from_wire(client.recv(4096)) for _ in range(count)]


def test_every_waiting_datagram_is_answered(served) -> None:
    port, client, _ = served
    names = ["productpage.ns1", "ipv4only.example"] * 5
    for ident, name in enumerate(names):
        client.send(query(name, ident))
    port.doRead()
    answered = replies(client, len(names))
    assert [m.id for m in answered] == list(range(len(names)))
    assert [m.question[0].name.to_text() for m in answered] == [n + "." for n in names]
    assert all(m.answer for m in answered)
    # The repeats came from the memo, and were counted all the same.
    assert len(port.protocol.controller.fastpath.memo) == 2
    assert sum(port.protocol.controller.stats.queries.values()) == len(names)


def test_a_burst_is_bounded(served, monkeypatch) -> None:
    port, client, _ = served
    monkeypatch.setattr(protocols_module, "MAX_BURST", 4)
    for ident in range(6):
        client.send(query("productpage.ns1", ident))
    port.doRead()
    assert [m.id for m in replies(client, 4)] == [0, 1, 2, 3]
    client.settimeout(0.2)
    with pytest.raises(TimeoutError):
        client.recv(4096)
    port.doRead()
    assert [m.id for m in replies(client, 2)] == [4, 5]


def test_one_failing_datagram_costs_no_other(served, monkeypatch) -> None:
    port, client, _ = served
    factory = port.protocol.controller
    answer = factory.packetReceived

    def failing(data: bytes, proto, address=None) -> None:
        if data[:2] == b"\x00\x01":
            raise RuntimeError("boom")
        answer(data, proto, address)

    monkeypatch.setattr(factory, "packetReceived", failing)
    for ident, name in enumerate(["productpage.ns1", "ipv4only.example", "many.example"]):
        client.send(query(name, ident))
    port.doRead()
    assert [m.id for m in replies(client, 2)] == [0, 2]


def test_replies_outside_a_burst_leave_together_at_the_end_of_the_turn(served) -> None:
    port, client, _ = served
    # Upstream answers arrive between bursts: they wait for the end of the
    # reactor's turn, then leave together.
    for ident in (7, 8):
        port.protocol.writeBytes(query("late.example", ident), client.getsockname())
    client.settimeout(0.2)
    with pytest.raises(TimeoutError):
        client.recv(512)
    port.reactor.advance(0)
    assert [m.id for m in replies(client, 2)] == [7, 8]
