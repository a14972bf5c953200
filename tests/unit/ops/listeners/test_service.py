"""
Tests for L{meshdns_plugin.ops.listeners}: the pure listener plan, the listener
service and the relaying protocols on Twisted's fakes, socket binding, and the
real thing: C{twistd meshdns} with VIP listeners on loopback addresses,
forwarding to real TCP echo servers, across a reload.
"""

from __future__ import annotations

import errno
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
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

from meshdns_plugin.cli import main
from meshdns_plugin.config import load_config
from meshdns_plugin.mesh.allocator import Allocation, Vips
from meshdns_plugin.mesh.entries import parse_entries
from meshdns_plugin.mesh.loader import TableLoader
from meshdns_plugin.mesh.view import mesh_view
from meshdns_plugin.ops.listeners.plan import (
    Backend,
    ListenerPlan,
    ListenerSpec,
    is_tcp,
    listener_plan,
)
from meshdns_plugin.ops.listeners.service import VipListeners, bind_socket, routed_here
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
from tests.support.samples import guide_config


#: The tcp-echo stand-in (see its docstring).
def entry(name: str, body: str) -> str:
    """A ServiceEntry document named C{name} with C{body} (YAML lines) as its spec."""
    spec = textwrap.indent(textwrap.dedent(body).strip(), "  ")
    return (
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n"
        f"metadata: {{name: {name}}}\nspec:\n{spec}\n"
    )


def plan_of(*documents: str, vips: dict[str, Vips] | None = None, **kw: Any) -> ListenerPlan:
    entries = parse_entries("---\n".join(documents))
    view = mesh_view(
        entries,
        Allocation(vips or {}),
        namespace=kw.get("namespace", "default"),
        auto_allocate=kw.get("auto", True),
    )
    return listener_plan(view)


# --- the plan -----------------------------------------------------------------


def test_the_guide_entries() -> None:
    """Each tcp-echo VIP gets its own listener on 9000, forwarding to its own host."""
    prepared = TableLoader(load_config(None)).prepare()
    vips = prepared.allocation.vips
    plan = listener_plan(prepared.view)
    by_host: dict[str, list[ListenerSpec]] = {}
    for spec in plan.listeners:
        by_host.setdefault(spec.host, []).append(spec)
    for n in (1, 2):
        host = f"tcp-echo.external-{n}.svc.cluster.local"
        assert [(s.address, s.port) for s in by_host[host]] == [
            (vips[host].ipv4, 9000),
            (vips[host].ipv6, 9000),
        ]
        assert all(s.backends == (Backend(host, 9000),) for s in by_host[host])
    assert [s.port for s in by_host["auto.internal"]] == [80, 80]
    # address.internal has resolution NONE and no endpoints: its traffic goes
    # to 198.51.100.1 itself, so meshdns must not take it.
    assert "address.internal" not in by_host
    assert plan.notes == (
        "ServiceEntry default/external-address: address.internal port 80: resolution NONE "
        "without endpoints: connections go to the address itself: no listener",
    )


def test_the_cli_lists_every_listener_for_the_guides_pipeline(capsys, tmp_path: Path) -> None:
    """
    `meshdns listeners` prints istioctl's table, one row per listener the
    server opens, so the guide's `grep tcp-echo | awk '{printf "ADDRESS=%s,
    DESTINATION=%s %s\\n", $1, $4, $5}'` gives its documented lines.
    """
    config = guide_config(tmp_path)
    prepared = TableLoader(load_config(config)).prepare()
    plan = listener_plan(prepared.view)
    assert main(["listeners", "-c", config]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ADDRESSES", "PORT", "MATCH", "DESTINATION"]
    assert len(lines) == 1 + len(plan.listeners)
    awk = [
        "ADDRESS={}, DESTINATION={} {}".format(*(line.split()[i] for i in (0, 3, 4)))
        for line in lines
        if "tcp-echo" in line
    ]
    vips = prepared.allocation.vips
    assert awk == [
        f"ADDRESS={address}, DESTINATION=Cluster: outbound|9000||{host}"
        for host in (f"tcp-echo.external-{n}.svc.cluster.local" for n in (1, 2))
        for address in (vips[host].ipv4, vips[host].ipv6)
    ]


def test_static_endpoints_ports_and_protocols() -> None:
    plan = plan_of(
        entry(
            "db",
            """
            hosts: [db.example]
            addresses: [10.1.0.1]
            resolution: STATIC
            ports:
            - {number: 3306, name: mysql, protocol: MYSQL, targetPort: 13306}
            - {number: 53, name: dns, protocol: UDP}
            - {number: 443, name: https, protocol: HTTPS}
            endpoints:
            - {address: 10.2.0.1}
            - {address: 10.2.0.2, ports: {mysql: 23306}}
            """,
        )
    )
    assert plan.notes == ()
    assert plan.listeners == (
        ListenerSpec(
            "10.1.0.1", 3306, "db.example", "ServiceEntry default/db",
            (Backend("10.2.0.1", 13306), Backend("10.2.0.2", 23306)),
        ),
        ListenerSpec(
            "10.1.0.1", 443, "db.example", "ServiceEntry default/db",
            (Backend("10.2.0.1", 443), Backend("10.2.0.2", 443)),
        ),
    )


def test_dns_endpoints_are_host_names_to_resolve() -> None:
    plan = plan_of(
        entry(
            "api",
            """
            hosts: [api.example]
            resolution: DNS
            ports: [{number: 8443, name: tls, protocol: TLS}]
            endpoints: [{address: eu.api.example}, {address: 192.0.2.7}]
            """,
        ),
        vips={"api.example": Vips("240.240.0.9", None)},
    )
    (spec,) = plan.listeners
    assert (spec.address, spec.port) == ("240.240.0.9", 8443)
    assert spec.backends == (Backend("eu.api.example", 8443), Backend("192.0.2.7", 8443))


def test_no_listener_notes() -> None:
    plan = plan_of(
        entry("wild", "hosts: ['*.wild.example']\nresolution: NONE\nports: [{number: 80}]"),
        entry("static", "hosts: [s.example]\naddresses: [10.0.0.1]\nresolution: STATIC\n"
              "ports: [{number: 80}]"),
        entry("hidden", "hosts: [h.example]\naddresses: [10.0.0.2]\nresolution: DNS\n"
              "exportTo: [other]\nports: [{number: 80}]"),
        entry("udp", "hosts: [u.example]\naddresses: [10.0.0.3]\nresolution: DNS\n"
              "ports: [{number: 53, protocol: UDP}]"),
    )
    assert plan.listeners == ()
    assert plan.notes == (
        "ServiceEntry default/wild: *.wild.example port 80: no address and no VIP: no listener",
        "ServiceEntry default/static: s.example port 80: resolution STATIC without endpoints: "
        "nowhere to forward to: no listener",
    )


def test_vips_only_when_auto_allocate() -> None:
    text = entry("a", "hosts: [a.example]\nresolution: DNS\nports: [{number: 80}]")
    vips = {"a.example": Vips("240.240.0.1", "2001:2::1")}
    assert [s.address for s in plan_of(text, vips=vips).listeners] == ["240.240.0.1", "2001:2::1"]
    plan = plan_of(text, vips=vips, auto=False)
    assert plan.listeners == ()
    assert len(plan.notes) == 1


def test_first_claim_of_an_address_wins() -> None:
    plan = plan_of(
        entry("one", "hosts: [a.example, b.example]\naddresses: [10.0.0.1]\nresolution: DNS\n"
              "ports: [{number: 80}]"),
    )
    assert [s.host for s in plan.listeners] == ["a.example"]
    (collision,) = plan.collisions
    assert str(collision) == (
        "collision: 10.0.0.1 port 80 is claimed by a.example (ServiceEntry default/one) "
        "and by b.example (ServiceEntry default/one), which gets no listener"
    )


def test_is_tcp() -> None:
    assert all(is_tcp(p) for p in ("TCP", "HTTP", "HTTP2", "HTTPS", "TLS", "GRPC", "MONGO"))
    assert not is_tcp("UDP") and not is_tcp("udp")


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
        entry("a", "hosts: [a.example]\nresolution: DNS\nports: [{number: 80}]")
    )
    (tmp_path / "m.yaml").write_text(
        "entries: [e.yaml]\nmesh: {search: []}\nvip_listeners: {enabled: true}\n"
    )
    config = load_config(str(tmp_path / "m.yaml"))
    loader = TableLoader(config)
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


# --- the real thing: twistd meshdns on loopback --------------------------------


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
        dns_entry = entry(
            "dns",
            f"hosts: [echo-one.example]\naddresses: [127.0.0.41]\nresolution: DNS\n"
            f"ports: [{{number: {dns_port}, name: tcp, targetPort: {echoes['one']}}}]",
        )
        static_entry = entry(
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

        new_entry = entry(
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
            "se.yaml": entry(
                "gone",
                f"hosts: [nxname.upstream.test]\naddresses: [127.0.0.44]\nresolution: DNS\n"
                f"ports: [{{number: {port}}}]",
            )
        },
    )
    assert exchange("127.0.0.44", port, b"anyone?") == b""
    wait_for(lambda: "cannot forward: nxname.upstream.test: no such name" in meshdns.log(),
             "the failure line")


def test_the_cli_lists_no_listener_when_the_server_opens_none(capsys, tmp_path: Path) -> None:
    config = guide_config(tmp_path)
    Path(config).write_text(Path(config).read_text().replace("enabled: true", "enabled: false"))
    assert main(["listeners", "-c", config]) == 0
    captured = capsys.readouterr()
    assert captured.out.split() == ["ADDRESSES", "PORT", "MATCH", "DESTINATION"]
    assert "vip_listeners.enabled is off" in captured.err
    assert "from the files of" in captured.err
