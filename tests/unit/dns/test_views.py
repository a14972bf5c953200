"""
Per-client views in the server (L{meshdns_plugin.dns.views}): the query's
source address picks the view, and nothing one view answered (an encoded
answer, a memoised reply, a full-path answer) reaches another's client.

Expected answers are Kubernetes DNS's: a pod's bare Service name resolves
in the pod's own namespace.
"""

from __future__ import annotations

from pathlib import Path

import dns.message
import dns.rdatatype
import pytest

from meshdns_plugin.service import MeshService
from tests.support.cluster import pods_slice, service
from tests.support.servers import RecordingProtocol, memory_mesh_service

ENTRIES = "".join(
    [
        service("team-a", "web", "10.96.1.1"),
        service("team-b", "web", "10.96.2.1"),
        pods_slice("team-a", "web", "10.0.1.10"),
        pods_slice("team-b", "web", "10.0.2.10"),
        """
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: team-a}
spec: {type: ExternalName, externalName: web.team-a.svc.cluster.local}
""",
    ]
)

A_CLIENT, B_CLIENT, OTHER = ("10.0.1.10", 5353), ("10.0.2.10", 5353), ("10.0.9.9", 5353)


def start(tmp_path: Path, entries: str = ENTRIES) -> MeshService:
    return memory_mesh_service(
        tmp_path,
        entries,
        mesh={"per_client_views": True, "namespace": "default"},
        listen={"allow": ["10.0.0.0/8"]},
    )


def ask(service_: MeshService, name: str, client, ident: int = 7, tcp: bool = False):
    """The decoded reply to an A query for C{name} from C{client} (L{None}: none sent)."""
    query = dns.message.make_query(name, "A")
    query.id = ident
    proto = RecordingProtocol()
    if tcp:
        proto.peer_host = client[0]
        service_.factory.packetReceived(query.to_wire(), proto, None)
    else:
        service_.factory.packetReceived(query.to_wire(), proto, client)
    return dns.message.from_wire(proto.sent[-1]) if proto.sent else None


def addresses(reply) -> list[str]:
    return sorted(r.address for rrset in reply.answer for r in rrset if r.rdtype == dns.rdatatype.A)


@pytest.mark.parametrize("tcp", [False, True])
def test_the_client_address_picks_the_view(tmp_path: Path, tcp: bool) -> None:
    """The same packet, twice from each client: each gets its own namespace's `web`."""
    meshdns = start(tmp_path)
    for _ in range(2):
        assert addresses(ask(meshdns, "web.", A_CLIENT, tcp=tcp)) == ["10.96.1.1"]
        assert addresses(ask(meshdns, "web.", B_CLIENT, tcp=tcp)) == ["10.96.2.1"]
    # An unlisted client gets the view of mesh.namespace, which has no `web`
    # (forwarded, to an upstream that never answers here).
    assert ask(meshdns, "web.", OTHER, tcp=tcp) is None


def test_a_memoised_reply_never_answers_another_view(tmp_path: Path) -> None:
    """The memo of team-a's view holds `web`; team-b's client still gets team-b's."""
    meshdns = start(tmp_path)
    packet = dns.message.make_query("web.", "A")
    packet.id = 9
    data = packet.to_wire()
    factory = meshdns.factory
    proto = RecordingProtocol()
    factory.packetReceived(data, proto, A_CLIENT)
    assert factory.memoized(data, A_CLIENT[0]) is not None
    assert factory.memoized(data, B_CLIENT[0]) is None
    factory.packetReceived(data, proto, B_CLIENT)
    replies = [dns.message.from_wire(r) for r in proto.sent]
    assert [addresses(r) for r in replies] == [["10.96.1.1"], ["10.96.2.1"]]
    assert addresses(dns.message.from_wire(factory.memoized(data, B_CLIENT[0]))) == ["10.96.2.1"]


def test_the_full_path_is_per_view(tmp_path: Path) -> None:
    """An ExternalName alias (the Twisted Names path) answers in its own namespace only."""
    meshdns = start(tmp_path)
    reply = ask(meshdns, "ext.", A_CLIENT)
    assert reply is not None
    assert [str(rrset.name) for rrset in reply.answer][0] == "ext."
    assert addresses(reply) == ["10.96.1.1"]
    assert ask(meshdns, "ext.", B_CLIENT) is None


def test_a_reload_moves_a_client(tmp_path: Path) -> None:
    """A pod address that moves to another namespace gets that namespace's view."""
    meshdns = start(tmp_path)
    assert addresses(ask(meshdns, "web.", A_CLIENT)) == ["10.96.1.1"]
    moved = ENTRIES.replace('["10.0.1.10"]', '["10.0.1.11"]').replace(
        '["10.0.2.10"]', '["10.0.1.10"]'
    )
    (tmp_path / "entries.yaml").write_text(moved)
    assert meshdns.reload()
    assert addresses(ask(meshdns, "web.", A_CLIENT)) == ["10.96.2.1"]


def test_off_by_default(tmp_path: Path) -> None:
    meshdns = memory_mesh_service(tmp_path, ENTRIES)
    assert meshdns.factory.views is None
