"""
Tests for L{meshdns_plugin.ops.listeners.service} and
L{meshdns_plugin.ops.listeners.relay} on Twisted's fakes: the listener service
opens, reloads and closes its ports, and the relaying protocols pass data,
half-closes and failures on (real sockets and C{twistd meshdns} are in
C{tests.integration.test_listeners}).
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet import error as net_error
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.names import dns, error
from twisted.python.failure import Failure

from meshdns_plugin.config import load_config
from meshdns_plugin.mesh.loader import TableLoader
from meshdns_plugin.ops.listeners.plan import (
    Backend,
    ListenerPlan,
    ListenerSpec,
)
from meshdns_plugin.ops.listeners.service import VipListeners
from meshdns_plugin.sources.files import load_entries
from tests.support.samples import service_entry

# --- the plan -----------------------------------------------------------------


















# --- the service, on fakes -----------------------------------------------------


class FakePort:
    """An adopted listening port that remembers being closed."""

    def __init__(self, factory: Any) -> None:
        self.factory = factory
        self.closed = False

    def stopListening(self) -> None:
        self.closed = True


class ListeningReactor(MemoryReactorClock):
    """A fake reactor whose adopted ports are L{FakePort}s, kept by address."""

    def __init__(self) -> None:
        super().__init__()
        self.ports: list[FakePort] = []

    def adoptStreamPort(self, fileno: int, addressFamily: int, factory: Any) -> FakePort:
        super().adoptStreamPort(fileno, addressFamily, factory)
        self.ports.append(FakePort(factory))
        return self.ports[-1]


class FakeResolver:
    """Answers from a dict: name -> addresses (IPv4 and IPv6), or an exception."""

    def __init__(self, names: dict[str, Any]) -> None:
        self.names = names
        self.asked: list[tuple[str, int]] = []

    def _lookup(self, name: str, rtype: int) -> defer.Deferred[Any]:
        self.asked.append((name, rtype))
        found = self.names.get(name, error.DNSNameError(name))
        if isinstance(found, Exception):
            return defer.fail(found)
        records = []
        for address in found:
            if rtype == dns.A and ":" not in address:
                records.append(dns.RRHeader(name, dns.A, payload=dns.Record_A(address)))
            elif rtype == dns.AAAA and ":" in address:
                records.append(dns.RRHeader(name, dns.AAAA, payload=dns.Record_AAAA(address)))
        return defer.succeed((records, [], []))

    def lookupAddress(self, name: str) -> defer.Deferred[Any]:
        return self._lookup(name, dns.A)

    def lookupIPV6Address(self, name: str) -> defer.Deferred[Any]:
        return self._lookup(name, dns.AAAA)


class Binder:
    """Stands in for L{bind_socket}: a real, unbound socket, or a given error."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.refuse: dict[tuple[str, int], OSError] = {}

    def __call__(self, address: str, port: int) -> socket.socket:
        self.calls.append((address, port))
        if (address, port) in self.refuse:
            raise self.refuse[(address, port)]
        return socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)


def spec(address: str, port: int, *backends: Backend, host: str = "svc.example") -> ListenerSpec:
    return ListenerSpec(address, port, host, "ServiceEntry default/x", backends)


def messages(events: list[dict[str, Any]]) -> list[str]:
    return [formatEvent(event) for event in events]


@pytest.fixture
def rig() -> tuple[VipListeners, ListeningReactor, Binder, FakeResolver]:
    reactor = ListeningReactor()
    binder = Binder()
    resolver = FakeResolver({"svc.example": ["127.0.0.5", "127.0.0.6"]})
    listeners = VipListeners(resolver, 3.0, reactor, bind=binder)
    return listeners, reactor, binder, resolver


A = spec("127.0.0.1", 9000, Backend("svc.example", 9000))
B = spec("127.0.0.2", 9000, Backend("127.0.0.9", 80))


def test_opens_when_started_not_before(rig) -> None:
    listeners, reactor, binder, _ = rig
    listeners.update(ListenerPlan((A, B)))
    assert binder.calls == []
    listeners.privilegedStartService()
    listeners.startService()
    assert binder.calls == [A.key, B.key]
    assert set(listeners.factories) == {A.key, B.key}
    assert listeners.stats.listening == 2


def test_reload_adds_removes_and_keeps(rig) -> None:
    listeners, reactor, binder, _ = rig
    listeners.update(ListenerPlan((A, B)))
    listeners.startService()
    kept = listeners.factories[A.key]
    port_a, port_b = reactor.ports
    a2 = spec("127.0.0.1", 9000, Backend("127.0.0.7", 9001))
    c = spec("127.0.0.3", 443, Backend("127.0.0.8", 443))
    with capturedLogs() as events:
        listeners.update(ListenerPlan((a2, c)))
    # A's socket (and so its open connections) stays, with the new target.
    assert listeners.factories[A.key] is kept and kept.spec == a2
    assert not port_a.closed
    assert port_b.closed
    assert binder.calls == [A.key, B.key, c.key]
    assert listeners.stats.listening == 2
    text = "\n".join(messages(events))
    assert "127.0.0.1:9000 (svc.example): now forwards to 127.0.0.7:9001" in text
    assert "127.0.0.2:9000 (svc.example): closed" in text


def test_a_failed_bind_leaves_the_others(rig) -> None:
    listeners, reactor, binder, _ = rig
    binder.refuse[A.key] = OSError(errno.EADDRINUSE, "Address already in use")
    with capturedLogs() as events:
        listeners.update(ListenerPlan((A, B)))
        listeners.startService()
    assert set(listeners.factories) == {B.key}
    assert listeners.stats.bind_failures == 1
    errors = [formatEvent(e) for e in events if e["log_level"].name == "error"]
    assert errors == [
        "VIP listener 127.0.0.1:9000 (svc.example): cannot listen: Address already in use; "
        "retried at the next reload"
    ]
    # Retried at the next reload, and it works now.
    del binder.refuse[A.key]
    listeners.update(ListenerPlan((A, B)))
    assert set(listeners.factories) == {A.key, B.key}


def test_privileged_start_binds_once(rig) -> None:
    """twistd calls privilegedStartService as root, then startService: one bind each."""
    listeners, _, binder, _ = rig
    listeners.update(ListenerPlan((A,)))
    listeners.privilegedStartService()
    listeners.startService()
    assert binder.calls == [A.key]


def test_stop_closes_everything(rig) -> None:
    listeners, reactor, binder, _ = rig
    listeners.update(ListenerPlan((A, B)))
    listeners.startService()
    listeners.stopService()
    assert all(port.closed for port in reactor.ports)
    assert listeners.stats.listening == 0
    listeners.update(ListenerPlan((A,)))  # a late reload opens nothing
    assert binder.calls == [A.key, B.key]


def test_unrouted_address_is_reported(rig) -> None:
    listeners, _, _, _ = rig
    unrouted = spec("192.0.2.1", 9000, Backend("127.0.0.9", 80))
    with capturedLogs() as events:
        listeners.update(ListenerPlan((unrouted,)))
        listeners.startService()
    assert any("192.0.2.1 is not routed to this host" in m for m in messages(events))


def test_follows_a_prepared_load(tmp_path: Path) -> None:
    """The TableLoader observer hook: the listeners of a load, VIPs included."""
    (tmp_path / "e.yaml").write_text(
        service_entry("a", "hosts: [a.example]\nresolution: DNS\nports: [{number: 80}]")
    )
    (tmp_path / "m.yaml").write_text(
        "entries: [e.yaml]\nmesh: {search: []}\nvip_listeners: {enabled: true}\n"
    )
    config = load_config(str(tmp_path / "m.yaml"))
    loader = TableLoader(config, load_entries)
    listeners = VipListeners.forConfig(config, FakeResolver({}), ListeningReactor())
    loader.observers.append(listeners.follow)
    loader.load()
    vips = loader.prepare().allocation.vips["a.example"]
    assert [s.address for s in listeners.plan.listeners] == [vips.ipv4, vips.ipv6]


# --- relaying, on fakes --------------------------------------------------------


class HalfCloseTransport(StringTransport):
    """A string transport that records a shutdown of its writing side."""

    writeClosed = False

    def loseWriteConnection(self) -> None:
        self.writeClosed = True


def accept(listeners: VipListeners, key: tuple[str, int]) -> tuple[Any, HalfCloseTransport]:
    """A client connection accepted by the listener at C{key}."""
    server = listeners.factories[key].buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = HalfCloseTransport()
    server.makeConnection(transport)
    return server, transport


def backend_connects(reactor: MemoryReactorClock) -> tuple[Any, HalfCloseTransport]:
    """Complete the oldest pending backend connect; its protocol and transport."""
    _, _, factory, _, _ = reactor.tcpClients.pop(0)
    protocol = factory.buildProtocol(None)
    transport = HalfCloseTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def test_relays_both_ways_with_flow_control(rig) -> None:
    listeners, reactor, _, _ = rig
    listeners.update(ListenerPlan((B,)))
    listeners.startService()
    client, client_transport = accept(listeners, B.key)
    # Nothing is read from the client until the backend is there.
    assert client_transport.producerState == "paused"
    host, port, _, timeout, _ = reactor.tcpClients[0]
    assert (host, port, timeout) == ("127.0.0.9", 80, 3.0)
    backend, backend_transport = backend_connects(reactor)
    assert client_transport.producerState == "producing"
    # Each side is the producer of the other: a slow reader pauses the writer.
    assert client_transport.producer is backend_transport and client_transport.streaming
    assert backend_transport.producer is client_transport and backend_transport.streaming
    client.dataReceived(b"ping")
    assert backend_transport.value() == b"ping"
    backend.dataReceived(b"pong")
    assert client_transport.value() == b"pong"
    assert (listeners.stats.accepted, listeners.stats.active) == (1, 1)
    client.connectionLost(Failure(net_error.ConnectionRefusedError()))
    assert backend_transport.disconnecting
    assert listeners.stats.active == 0


def test_half_close_is_passed_on(rig) -> None:
    """A client's EOF reaches the backend as EOF; the reply still comes back."""
    listeners, reactor, _, _ = rig
    listeners.update(ListenerPlan((B,)))
    listeners.startService()
    client, client_transport = accept(listeners, B.key)
    backend, backend_transport = backend_connects(reactor)
    client.dataReceived(b"hello")
    client.readConnectionLost()
    assert backend_transport.writeClosed and not backend_transport.disconnecting
    backend.dataReceived(b"reply")
    assert client_transport.value() == b"reply"
    backend.readConnectionLost()
    assert client_transport.writeClosed
    client.writeConnectionLost()
    assert client_transport.disconnecting


def test_dns_backends_resolve_in_turn(rig) -> None:
    listeners, reactor, _, resolver = rig
    listeners.update(ListenerPlan((A,)))
    listeners.startService()
    for _ in range(3):
        accept(listeners, A.key)
    assert [c[:2] for c in reactor.tcpClients] == [
        ("127.0.0.5", 9000),
        ("127.0.0.6", 9000),
        ("127.0.0.5", 9000),
    ]
    assert resolver.asked == [("svc.example", dns.A)] * 3


def test_ipv6_when_there_is_no_ipv4(rig) -> None:
    listeners, reactor, _, resolver = rig
    resolver.names["svc.example"] = ["::7"]
    listeners.update(ListenerPlan((A,)))
    listeners.startService()
    accept(listeners, A.key)
    assert reactor.tcpClients[0][:2] == ("::7", 9000)


def test_resolution_failure_closes_and_counts(rig) -> None:
    listeners, reactor, _, resolver = rig
    del resolver.names["svc.example"]
    listeners.update(ListenerPlan((A,)))
    listeners.startService()
    with capturedLogs() as events:
        _, first = accept(listeners, A.key)
        _, second = accept(listeners, A.key)
    assert first.disconnecting and second.disconnecting
    assert reactor.tcpClients == []
    assert listeners.stats.connect_failures == 2
    warnings = [m for m in messages(events) if "cannot forward" in m]
    assert warnings == [
        "VIP listener 127.0.0.1:9000 (svc.example): cannot forward: svc.example: no such "
        "name (NXDOMAIN); further failures are only counted until a connection gets through"
    ]
    # Back again: one line says so.
    resolver.names["svc.example"] = ["127.0.0.5"]
    with capturedLogs() as events:
        accept(listeners, A.key)
        backend_connects(reactor)
    assert messages(events) == ["VIP listener 127.0.0.1:9000 (svc.example): forwarding again"]


@pytest.mark.parametrize(
    ("failure", "why"),
    [
        (error.DNSServerError("servfail"), "SERVFAIL (or no upstream answered)"),
        (defer.TimeoutError(), "timed out"),
        (RuntimeError("bug"), "RuntimeError"),
    ],
)
def test_resolution_errors_say_what_happened(rig, failure: Exception, why: str) -> None:
    listeners, _, _, resolver = rig
    resolver.names["svc.example"] = failure
    listeners.update(ListenerPlan((A,)))
    listeners.startService()
    with capturedLogs() as events:
        _, transport = accept(listeners, A.key)
    assert transport.disconnecting
    assert f"cannot forward: svc.example: cannot resolve: {why};" in messages(events)[0]


def test_connect_failure_closes_and_counts(rig) -> None:
    listeners, reactor, _, _ = rig
    listeners.update(ListenerPlan((B,)))
    listeners.startService()
    with capturedLogs() as events:
        _, client_transport = accept(listeners, B.key)
        _, _, factory, _, _ = reactor.tcpClients[0]
        connector = reactor.connectors[0]
        factory.clientConnectionFailed(connector, Failure(net_error.ConnectionRefusedError()))
    assert client_transport.disconnecting
    assert listeners.stats.connect_failures == 1
    assert any("cannot forward: 127.0.0.9:80: Connection was refused" in m
               for m in messages(events))


# --- sockets -------------------------------------------------------------------








# --- the real thing: twistd meshdns on loopback --------------------------------


















