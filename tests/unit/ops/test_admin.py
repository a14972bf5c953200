"""
Tests for L{meshdns_plugin.ops.admin}: each endpoint rendered in memory against a
real L{MeshService} built on a fake reactor, and the service's listening.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs

from meshdns_plugin.config import parse_config
from meshdns_plugin.mesh.table import table_document
from meshdns_plugin.ops.admin import AdminService
from meshdns_plugin.service import MeshService
from tests.support.samples import ADDRESS_AND_AUTO as ENTRIES
from tests.support.samples import ENTRIES as ENTRIES_SAMPLES
from tests.support.samples import entry, make_table
from tests.support.scrape import admin_of, get
from tests.support.servers import memory_mesh_service


@pytest.fixture
def mesh(tmp_path: Path) -> MeshService:
    return memory_mesh_service(
        tmp_path,
        ENTRIES,
        mesh={"search": ["default.svc.cluster.local"]},
        listen={"port": 0},
        admin={"port": 15999},
    )






def test_healthz(mesh: MeshService) -> None:
    assert get(mesh, "/healthz") == (200, "text/plain; charset=utf-8", b"ok\n")


def test_readyz_follows_the_service(mesh: MeshService) -> None:
    assert get(mesh, "/readyz")[:1] == (503,)
    mesh.running = True  # what startService sets before starting the listeners
    assert get(mesh, "/readyz")[:1] == (503,)
    mesh.listening = True  # what it sets once they are bound
    assert get(mesh, "/readyz")[::2] == (200, b"ready\n")


def test_readyz_from_start_to_stop(mesh: MeshService) -> None:
    """Ready once every listener is bound, and no longer from the start of shutdown."""
    said = []
    mesh.startService()
    said.append(get(mesh, "/readyz")[0])
    mesh.stopService()
    said.append(get(mesh, "/readyz")[0])
    assert said == [200, 503]




@pytest.mark.parametrize("path", ["/debug", "/debug/", "/debug/table", "/readyz", "/"])
def test_debug_pages_answer_get_and_head(mesh: MeshService, path: str) -> None:
    mesh.listening = True
    status, content_type, body = get(mesh, path)
    assert status == 200 and body
    assert get(mesh, path, b"HEAD")[:2] == (status, content_type)


def test_debug_lists_its_pages(mesh: MeshService) -> None:
    assert get(mesh, "/debug")[1:] == (
        "text/plain; charset=utf-8",
        b"meshdns debug pages: /debug/table\n",
    )
    assert get(mesh, "/debug/nope")[0] == 404


def test_invalid_documents_are_listed_and_leave_it_ready(mesh: MeshService, tmp_path: Path) -> None:
    mesh.listening = True
    assert json.loads(get(mesh, "/debug/problems")[2]) == {"invalid": [], "collisions": []}
    (tmp_path / "entries.yaml").write_text(entry("broken.example", "not-an-ip"))
    assert mesh.reload() is True
    assert get(mesh, "/readyz")[0] == 200
    status, content_type, body = get(mesh, "/debug/problems")
    assert (status, content_type) == (200, "application/json")
    (invalid,) = json.loads(body)["invalid"]
    assert invalid["file"].endswith("entries.yaml")
    assert (invalid["document"], invalid["field"]) == (0, "spec.addresses[0]")
    assert invalid["key"] == ["ServiceEntry", "default", "se"]
    assert "not an IP address" in invalid["message"]


def test_collisions_are_listed_naming_both_entries(mesh: MeshService, tmp_path: Path) -> None:
    (tmp_path / "entries.yaml").write_text(
        entry("one.example", "192.0.2.77", name="one")
        + "---\n"
        + entry("two.example", "192.0.2.77", name="two")
    )
    assert mesh.reload()
    (collision,) = json.loads(get(mesh, "/debug/problems")[2])["collisions"]
    assert (collision["address"], collision["port"]) == ("192.0.2.77", None)
    assert "one.example (ServiceEntry default/one)" == collision["first"]
    assert "two.example (ServiceEntry default/two)" == collision["second"]


def test_metrics_is_prometheus_text(mesh: MeshService) -> None:
    status, content_type, body = get(mesh, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=")
    names = {family.name for family in text_string_to_metric_families(body.decode())}
    assert {"meshdns_queries", "meshdns_table_names", "meshdns_reloads"} <= names


def test_debug_table_is_json_of_the_live_table(mesh: MeshService) -> None:
    status, content_type, body = get(mesh, "/debug/table")
    assert (status, content_type) == (200, "application/json")
    document = json.loads(body)
    assert document["search_suffix"] == "default.svc.cluster.local"
    by_name = {n["name"]: n for n in document["names"]}
    assert by_name["address.internal"] == {
        "name": "address.internal",
        "A": ["198.51.100.1"],
        "AAAA": [],
        "vip": False,
        "sources": ["ServiceEntry default/se"],
    }
    auto = by_name["auto.internal"]
    assert auto["vip"] is True
    assert auto["A"] == [document["vips"]["auto.internal"]["ipv4"]]


def test_table_document_lists_wildcards_and_services() -> None:
    document = table_document(make_table())
    names = [n["name"] for n in document["names"]]
    assert "*.wildcard" in names
    assert "productpage.ns1.svc.cluster.local" in names
    assert json.loads(json.dumps(document)) == document


def test_table_document_lists_aliases_with_their_target() -> None:
    from tests.support.samples import EXTERNAL

    document = table_document(make_table(ENTRIES_SAMPLES + EXTERNAL))
    aliases = {a["name"]: a for a in document["aliases"]}
    assert aliases["mydb.ns1.svc.cluster.local"] == {
        "name": "mydb.ns1.svc.cluster.local",
        "CNAME": "db.upstream.test",
        "sources": ["Service ns1/mydb"],
    }
    assert [a["name"] for a in document["aliases"]] == sorted(aliases)
    assert "mydb" not in {n["name"] for n in document["names"]}
    assert table_document(make_table())["aliases"] == []


def test_index_and_unknown_paths(mesh: MeshService) -> None:
    assert b"/metrics" in get(mesh, "/")[2]
    assert get(mesh, "/nope")[0] == 404


def test_listens_on_configured_loopback_address(mesh: MeshService) -> None:
    admin = admin_of(mesh)
    admin.startService()
    reactor = admin._reactor
    ((port, factory, _, interface),) = reactor.tcpServers
    assert (port, interface) == (15999, "127.0.0.1")
    assert factory is admin.site
    admin.stopService()
    assert admin.port is None


def test_cannot_listen_is_one_error_line_not_a_crash(mesh: MeshService) -> None:
    admin = admin_of(mesh)

    def refuse(port, factory, backlog=50, interface=""):
        raise CannotListenError(interface, port, OSError("Address already in use"))

    admin._reactor.listenTCP = refuse
    with capturedLogs() as events:
        admin.startService()
    errors = [e for e in events if e["log_format"].startswith("Admin endpoint disabled")]
    assert len(errors) == 1
    assert admin.port is None


def test_port_zero_disables_the_endpoint(tmp_path: Path) -> None:
    config = parse_config(
        {"admin": {"port": 0}, "upstream": {"servers": ["127.0.0.1:1"]}, "mesh": {"search": []}},
        "meshdns.yaml",
        str(tmp_path),
    )
    mesh = MeshService(config, reactor=MemoryReactorClock())
    assert not [child for child in mesh if isinstance(child, AdminService)]


def test_a_taken_port_is_tried_again_until_it_is_free(mesh: MeshService) -> None:
    """
    During a rolling update the predecessor holds the port until it exits:
    one error line, then the endpoint listens once the port is free.
    """
    admin = admin_of(mesh)
    reactor = admin._reactor
    listen = reactor.listenTCP
    taken = [True]

    def maybe(port, factory, backlog=50, interface=""):
        if taken[0]:
            raise CannotListenError(interface, port, OSError("Address already in use"))
        return listen(port, factory, backlog, interface)

    reactor.listenTCP = maybe
    with capturedLogs() as events:
        admin.startService()
        reactor.advance(1.0)
        taken[0] = False
        reactor.advance(1.0)
    errors = [e for e in events if e["log_format"].startswith("Admin endpoint disabled")]
    assert len(errors) == 1
    assert admin.port is not None
    admin.stopService()
    assert not reactor.getDelayedCalls()
