"""
The public API of C{meshdns_plugin}: its objects compose the Twisted way, in a
L{ResolverChain} with other resolvers, in the order given; C{meshService}
builds the same tree as C{twistd meshdns}, with the caller's authorities and
listen overrides; and C{__all__} is exactly the API.

Everything runs on Twisted's fake reactors: no socket is opened.
"""

from __future__ import annotations

from pathlib import Path

import dns.message
import dns.rrset
import pytest
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.names import common
from twisted.names import dns as tdns
from twisted.names.error import DomainError
from twisted.names.resolve import ResolverChain
from twisted.names.server import DNSServerFactory

import meshdns_plugin
from meshdns_plugin import (
    Config,
    ConfigError,
    cachingForwarder,
    loadConfig,
    meshAuthority,
    meshService,
)
from meshdns_plugin.dns.authority import MeshAuthority
from meshdns_plugin.dns.forwarder import CachingForwarder
from meshdns_plugin.service import BurstUDPServer, TCPServer
from tests.support.paths import REPO_ROOT
from tests.support.samples import external_name
from tests.support.servers import FakeDatagramSockets, UDPReactor

#: Never reached: lookups here go to a fake reactor's fake UDP transport.
UPSTREAM = ("127.0.0.1", 5399)


class NamesResolver(common.ResolverBase):
    """
    The caller's own resolver: fixed A records, L{DomainError} ("not mine,
    ask the next one") for everything else; it remembers what it was asked.
    """

    def __init__(self, records: dict[bytes, str]) -> None:
        common.ResolverBase.__init__(self)
        self.records = records
        self.asked: list[bytes] = []

    def _lookup(self, name, cls, type, timeout):
        self.asked.append(name)
        address = self.records.get(name.lower())
        if address is None or type != tdns.A:
            return defer.fail(DomainError(name))
        record = tdns.RRHeader(name, tdns.A, payload=tdns.Record_A(address), auth=True)
        return defer.succeed(([record], [], []))


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    """A config with the Istio guide's entries and a loopback upstream."""
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text("")
    path = tmp_path / "meshdns.yaml"
    path.write_text(
        f"entries: [{REPO_ROOT / 'conf' / 'entries'}]\n"
        f"upstream: {{servers: ['{UPSTREAM[0]}:{UPSTREAM[1]}'], resolv_conf: {resolv_conf}}}\n"
        "mesh: {search: []}\n"
        "admin: {port: 0}\n"
    )
    return path


def result(d):
    """The result of a Deferred that has fired (or its failure)."""
    out: list = []
    d.addBoth(out.append)
    (value,) = out
    return value


def a_records(answer) -> list[str]:
    answers, _, _ = answer
    return [r.payload.dottedQuad() for r in answers if r.type == tdns.A]


def test_all_is_exactly_the_api() -> None:
    api = {
        "Config",
        "ConfigError",
        "EntriesError",
        "cachingForwarder",
        "loadConfig",
        "meshAuthority",
        "meshService",
    }
    assert sorted(meshdns_plugin.__all__) == sorted(api)
    namespace: dict = {}
    exec("from meshdns_plugin import *", namespace)
    assert set(namespace) - {"__builtins__"} == api
    for name in api:
        assert getattr(meshdns_plugin, name).__doc__, f"{name} has no docstring"


def test_config_from_path_or_object(config_path: Path) -> None:
    config = loadConfig(config_path)
    assert isinstance(config, Config) and config.source == str(config_path)
    assert loadConfig(str(config_path)) == config
    for given in (config, config_path, str(config_path)):
        assert a_records(result(meshAuthority(given).lookupAddress(b"address.internal"))) == [
            "198.51.100.1"
        ]
        assert cachingForwarder(given, reactor=MemoryReactorClock()).servers == (UPSTREAM,)
    with pytest.raises(ConfigError):
        meshAuthority(config_path.with_name("missing.yaml"))


def test_invalid_entries_are_left_out(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n"
        "metadata: {name: bad}\nspec: {hosts: [bad.internal], addresses: [not-an-ip]}\n"
        "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\n"
        "metadata: {name: good}\nspec: {hosts: [good.internal], addresses: [192.0.2.7]}\n"
    )
    (tmp_path / "meshdns.yaml").write_text("entries: [bad.yaml]\n")
    table = meshAuthority(tmp_path / "meshdns.yaml").table
    assert table.resolve(b"bad.internal") is None
    assert table.resolve(b"good.internal").records.ipv4 == ("192.0.2.7",)


def test_precedence_in_a_resolver_chain(config_path: Path) -> None:
    """
    Each resolver answers the names it owns and passes the others on, so
    the first owner in the chain wins; the forwarder owns every name.
    """
    reactor = UDPReactor()
    before = NamesResolver({b"address.internal": "192.0.2.1"})
    after = NamesResolver({b"auto.internal": "192.0.2.2", b"app.example": "192.0.2.3"})
    never = NamesResolver({b"x.upstream.test": "192.0.2.4"})
    mesh = meshAuthority(config_path)
    forwarder = cachingForwarder(config_path, reactor=reactor)
    sockets = FakeDatagramSockets(reactor)
    sockets.install(forwarder.upstream)
    chain = ResolverChain([before, mesh, after, forwarder, never])

    # Before the mesh: the caller's answer wins over the mesh's.
    assert a_records(result(chain.lookupAddress(b"address.internal"))) == ["192.0.2.1"]
    # After the mesh: the mesh's answer wins; the caller is not even asked.
    (vip,) = a_records(result(chain.lookupAddress(b"auto.internal")))
    assert vip.startswith("240.240.") and b"auto.internal" not in after.asked
    # A name the mesh does not know goes on to the next resolver.
    assert a_records(result(chain.lookupAddress(b"app.example"))) == ["192.0.2.3"]
    assert sockets.created == []

    # A name nobody before it owns is forwarded; nothing after it is asked.
    d = chain.lookupAddress(b"x.upstream.test")
    (sock,) = sockets.created
    (data,) = sock.sent
    assert sock.peer == UPSTREAM
    reply = dns.message.make_response(dns.message.from_wire(data))
    reply.answer.append(dns.rrset.from_text("x.upstream.test.", 300, "IN", "A", "127.0.0.10"))
    sockets.deliver(sock, reply.to_wire())
    assert a_records(result(d)) == ["127.0.0.10"]
    assert never.asked == []
    forwarder.close()


def test_mesh_authority_chases_external_names_with_the_resolver_given(tmp_path: Path) -> None:
    """
    An ExternalName Service answers with a CNAME; its target's addresses come
    from the C{chase} resolver (here the caller's own), or not at all.
    """
    (tmp_path / "db.yaml").write_text(external_name("db", "default", "db.example.test"))
    (tmp_path / "meshdns.yaml").write_text("entries: [db.yaml]\nmesh: {search: []}\n")
    zone = NamesResolver({b"db.example.test": "192.0.2.10"})

    answers, _, _ = result(
        meshAuthority(tmp_path / "meshdns.yaml", chase=zone).lookupAddress(b"db")
    )
    assert [(r.type, r.name.name) for r in answers] == [
        (tdns.CNAME, b"db"),
        (tdns.A, b"db.example.test"),
    ]
    assert a_records((answers, [], [])) == ["192.0.2.10"]
    assert zone.asked == [b"db.example.test"]

    answers, _, _ = result(meshAuthority(tmp_path / "meshdns.yaml").lookupAddress(b"db"))
    assert [r.type for r in answers] == [tdns.CNAME]


def test_in_a_stock_dns_server_factory(config_path: Path) -> None:
    """The mesh authority is an ordinary authority for Twisted's own server."""
    zone = NamesResolver({b"www.example.test": "192.0.2.10"})
    factory = DNSServerFactory(authorities=[meshAuthority(config_path), zone])
    resolve = factory.resolver.lookupAddress
    assert a_records(result(resolve(b"address.internal"))) == ["198.51.100.1"]
    assert a_records(result(resolve(b"www.example.test"))) == ["192.0.2.10"]


def test_mesh_service_serves_the_callers_authorities(config_path: Path) -> None:
    zone = NamesResolver({b"www.example.test": "192.0.2.10"})
    service = meshService(
        config_path, port=5353, interface="127.0.0.2", authorities=[zone], reactor=UDPReactor()
    )
    assert isinstance(service.authority, MeshAuthority)
    assert isinstance(service.forwarder, CachingForwarder)
    # The mesh first and the forwarder last: the wire fast path stays on.
    # The factory asks its local resolvers through Twisted Names, the
    # forwarder at the wire level.
    resolvers = service.factory.resolver.resolvers
    assert resolvers == [service.authority, zone]
    assert service.factory.mesh is service.authority
    assert service.factory.forwarder is service.forwarder
    resolve = service.factory.resolver.lookupAddress
    assert a_records(result(resolve(b"www.example.test"))) == ["192.0.2.10"]
    assert a_records(result(resolve(b"address.internal"))) == ["198.51.100.1"]
    listen = service.config.listen
    assert (listen.addresses, listen.port) == (("127.0.0.2",), 5353)
    assert service.reload()


def test_mesh_service_keeps_the_config_address_unless_told(config_path: Path) -> None:
    service = meshService(loadConfig(config_path), reactor=UDPReactor())
    default = Config().listen
    assert (service.config.listen.addresses, service.config.listen.port) == (
        default.addresses,
        default.port,
    )


def test_mesh_service_refuses_an_open_resolver(config_path: Path) -> None:
    with pytest.raises(ConfigError, match="listen.allow"):
        meshService(config_path, interface="0.0.0.0", reactor=UDPReactor())


def test_mesh_service_listens_on_every_address(config_path: Path) -> None:
    """UDP and TCP on each address, one port, one factory; a UDP protocol per port."""
    service = meshService(
        config_path, port=5353, interface=["127.0.0.2", "::1"], reactor=UDPReactor()
    )
    assert service.config.listen.addresses == ("127.0.0.2", "::1")
    udp = [child for child in service if isinstance(child, BurstUDPServer)]
    assert [(s.args[0], s.kwargs) for s in udp] == [
        (5353, {"interface": "127.0.0.2"}),
        (5353, {"interface": "::1"}),
    ]
    protocols = [s.args[1] for s in udp]
    assert protocols[0] is not protocols[1]
    assert all(p.controller is service.factory for p in protocols)
    tcp = [(s.args, s.kwargs["interface"]) for s in service if isinstance(s, TCPServer)]
    assert tcp == [((5353, service.factory), "127.0.0.2"), ((5353, service.factory), "::1")]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"interface": "bogus"}, "interface: 'bogus' is not an IP address"),
        ({"interface": ["::1", "0::1"]}, "interface: ::1 is listed twice"),
        (
            {"interface": []},
            "interface: expected an IP address or a non-empty list of them, got []",
        ),
    ],
)
def test_mesh_service_checks_its_interfaces(
    config_path: Path, overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        meshService(config_path, reactor=UDPReactor(), **overrides)
    assert str(caught.value) == message


def test_mesh_service_port_0_with_several_addresses(config_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        meshService(config_path, port=0, interface=["127.0.0.1", "::1"], reactor=UDPReactor())
    assert str(caught.value) == (
        f"{config_path}: listen.port: 0 (any free port) needs a single listen address, not 2: "
        "each would get a different port"
    )
