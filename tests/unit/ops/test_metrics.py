"""
Tests for L{meshdns_plugin.ops.metrics}: the collector reads the plain counters
at scrape time, in memory, on a fake reactor (scraped from the real process:
C{tests.integration.test_metrics}).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import generate_latest
from twisted.internet.testing import MemoryReactorClock
from twisted.names import dns as tdns

from meshdns_plugin.config import parse_config
from meshdns_plugin.dns.stats import LATENCY_BUCKETS
from meshdns_plugin.ops.metrics import registry_for
from meshdns_plugin.service import MeshService
from tests.support.samples import ADDRESS_AND_AUTO as ENTRIES
from tests.support.samples import entry
from tests.support.scrape import Samples, parse, value
from tests.support.servers import CLIENT, RecordingProtocol, memory_mesh_service, put_cached

# --- the collector, in memory ------------------------------------------------


@pytest.fixture
def mesh(tmp_path: Path) -> MeshService:
    return memory_mesh_service(tmp_path, ENTRIES, mesh={"search": []})


def collect(mesh: MeshService) -> Samples:
    return parse(generate_latest(registry_for(mesh.reported())).decode())


def packet(name: str, rtype: int = tdns.A, cls: int = tdns.IN) -> bytes:
    message = tdns.Message(id=7, recDes=True)
    message.queries = [tdns.Query(name, rtype, cls)]
    return message.toStr()


def test_fresh_service(mesh: MeshService) -> None:
    samples = collect(mesh)
    assert value(samples, "meshdns_table_names") == 2
    assert value(samples, "meshdns_vips_allocated", family="ipv4") == 1
    assert value(samples, "meshdns_vips_allocated", family="ipv6") == 1
    assert value(samples, "meshdns_reloads_total", result="success") == 1
    assert value(samples, "meshdns_reloads_total", result="failure") == 0
    assert value(samples, "meshdns_last_reload_success") == 1
    assert value(samples, "meshdns_last_reload_timestamp_seconds") == mesh.reloads.last_time
    assert value(samples, "meshdns_upstream_requests_total") == 0
    assert value(samples, "meshdns_cache_entries") == 0


def test_queries_by_type_and_outcome(mesh: MeshService) -> None:
    factory = mesh.factory
    mesh_queries = [packet("address.internal")] * 2 + [packet("auto.internal", tdns.AAAA)]
    for data in mesh_queries:
        factory.packetReceived(data, RecordingProtocol(), CLIENT)
    record = tdns.RRHeader(b"cached.example", payload=tdns.Record_A("192.0.2.9", 60), ttl=60)
    put_cached(mesh.forwarder.cache, "cached.example", tdns.A, answers=[record])
    factory.packetReceived(packet("cached.example"), RecordingProtocol(), CLIENT)
    factory.packetReceived(packet("x.example", cls=tdns.CH), RecordingProtocol(), CLIENT)
    samples = collect(mesh)
    assert value(samples, "meshdns_queries_total", type="A", outcome="mesh") == 2
    assert value(samples, "meshdns_queries_total", type="AAAA", outcome="mesh") == 1
    assert value(samples, "meshdns_queries_total", type="A", outcome="cache_hit") == 1
    assert value(samples, "meshdns_queries_total", type="A", outcome="error") == 1
    assert value(samples, "meshdns_cache_hits_total") == 1
    assert value(samples, "meshdns_cache_entries") == 1


def test_upstream_latency_histogram_is_cumulative(mesh: MeshService) -> None:
    stats = mesh.forwarder.stats
    for seconds in (0.0005, 0.003, 0.003, 10.0):
        stats.latency.observe(seconds)
    stats.requests, stats.failures, stats.rejected, stats.stale_served = 4, 1, 2, 3
    samples = collect(mesh)
    bucket = "meshdns_upstream_latency_seconds_bucket"
    assert value(samples, bucket, le="0.001") == 1
    assert value(samples, bucket, le="0.005") == 3
    assert value(samples, bucket, le=str(LATENCY_BUCKETS[-1])) == 3
    assert value(samples, bucket, le="+Inf") == 4
    assert value(samples, "meshdns_upstream_latency_seconds_count") == 4
    assert value(samples, "meshdns_upstream_latency_seconds_sum") == pytest.approx(10.0065)
    assert value(samples, "meshdns_upstream_requests_total") == 4
    assert value(samples, "meshdns_upstream_failures_total") == 1
    assert value(samples, "meshdns_upstream_rejected_total") == 2
    assert value(samples, "meshdns_cache_stale_served_total") == 3


def test_invalid_documents_show(mesh: MeshService, tmp_path: Path) -> None:
    assert value(collect(mesh), "meshdns_invalid_documents") == 0
    (tmp_path / "entries.yaml").write_text(entry("broken.example", "not-an-ip"))
    assert mesh.reload() is True
    samples = collect(mesh)
    assert value(samples, "meshdns_invalid_documents") == 1
    assert value(samples, "meshdns_reloads_total", result="failure") == 0
    assert value(samples, "meshdns_last_reload_success") == 1


def test_each_service_has_its_own_registry(mesh: MeshService, tmp_path: Path) -> None:
    other = MeshService(mesh.config, reactor=MemoryReactorClock())
    mesh.factory.packetReceived(packet("address.internal"), RecordingProtocol(), CLIENT)
    assert value(collect(mesh), "meshdns_queries_total", type="A", outcome="mesh") == 1
    assert value(collect(other), "meshdns_queries_total", type="A", outcome="mesh") == 0


# --- against the real process --------------------------------------------------






def test_vip_listener_counters(tmp_path: Path) -> None:
    """With vip_listeners on, their counters are exported; off, not at all."""
    (tmp_path / "entries.yaml").write_text(ENTRIES)
    raw = {
        "entries": ["entries.yaml"],
        "mesh": {"search": []},
        "upstream": {"servers": ["127.0.0.1:1"]},
        "admin": {"port": 0},
    }
    off = MeshService(
        parse_config(raw, "meshdns.yaml", str(tmp_path)), reactor=MemoryReactorClock()
    )
    assert not any(name.startswith("meshdns_vip_") for name, _ in collect(off))
    raw["vip_listeners"] = {"enabled": True}
    on = MeshService(parse_config(raw, "meshdns.yaml", str(tmp_path)), reactor=MemoryReactorClock())
    on.vipListeners.stats.connect_failures = 3
    on.vipListeners.stats.listening = 2
    samples = collect(on)
    assert value(samples, "meshdns_vip_connect_failures_total") == 3
    assert value(samples, "meshdns_vip_listeners") == 2


#: The SOA of a cached NXDOMAIN (RFC 2308: it makes the NXDOMAIN cacheable).
SOA = tdns.RRHeader(
    b"test", tdns.SOA, ttl=60, payload=tdns.Record_SOA(b"ns.test", b"host.test", minimum=60)
)


def test_autopath_counters(tmp_path: Path) -> None:
    """Off: no autopath metrics. On: a search answered from the cache is counted."""
    assert "meshdns_autopath_searches" not in str(collect(memory_mesh_service(tmp_path, ENTRIES)))
    mesh = memory_mesh_service(
        tmp_path, ENTRIES, mesh={"search": ["a.test", "b.test"], "autopath": True}
    )
    cache = mesh.forwarder.cache
    put_cached(cache, "www.example.a.test", tdns.A, rcode=tdns.ENAME, authority=[SOA])
    put_cached(cache, "www.example.b.test", tdns.A, rcode=tdns.ENAME, authority=[SOA])
    put_cached(cache, "www.example", tdns.A, answers=[
        tdns.RRHeader(b"www.example", tdns.A, payload=tdns.Record_A("192.0.2.1", 60), ttl=60)
    ])
    mesh.factory.packetReceived(packet("www.example.a.test"), RecordingProtocol(), CLIENT)
    samples = collect(mesh)
    assert value(samples, "meshdns_autopath_searches_total") == 1
    assert value(samples, "meshdns_autopath_answers_total") == 1
    assert value(samples, "meshdns_autopath_candidates_total") == 2
    assert value(samples, "meshdns_autopath_questions_saved_total") == 2
