"""
Metrics scraped from the admin endpoint of a real C{twistd -n meshdns}.
"""

from __future__ import annotations

from collections.abc import Callable

import dns.rcode

from tests.support.processes import free_port
from tests.support.samples import ADDRESS_AND_AUTO as ENTRIES
from tests.support.scrape import parse, scrape, value


def test_scraped_counters_move_per_query_kind(
    start_meshdns: Callable[..., object], upstream
) -> None:
    admin_port = free_port()
    meshdns = start_meshdns(
        {
            "upstream": {"servers": [upstream.server], "timeout": 2},
            "admin": {"port": admin_port},
            "mesh": {"search": []},
        },
        {"entries.yaml": ENTRIES},
    )
    status, text = scrape(admin_port)
    assert status == 200
    before = parse(text)

    def ask(name: str, rdtype: str = "A", rcode: int = dns.rcode.NOERROR, tcp: bool = False):
        reply = meshdns.query(name, rdtype, tcp=tcp)
        assert reply.rcode() == rcode, (name, rdtype, reply)

    ask("address.internal")
    ask("address.internal", tcp=True)
    ask("auto.internal", "AAAA")
    ask("www.upstream.test")  # forwarded
    ask("www.upstream.test")  # the cache answers
    ask("txt.upstream.test", "TXT")  # forwarded, another type
    ask("nxname.upstream.test", rcode=dns.rcode.NXDOMAIN)  # forwarded, negative
    ask("servfail.upstream.test", rcode=dns.rcode.SERVFAIL)  # error
    after = parse(scrape(admin_port)[1])

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    queries = "meshdns_queries_total"
    assert moved(queries, type="A", outcome="mesh") == 2
    assert moved(queries, type="AAAA", outcome="mesh") == 1
    assert moved(queries, type="A", outcome="forwarded") == 2
    assert moved(queries, type="A", outcome="cache_hit") == 1
    assert moved(queries, type="TXT", outcome="forwarded") == 1
    assert moved(queries, type="A", outcome="error") == 1
    assert moved("meshdns_cache_hits_total") == 1
    assert moved("meshdns_cache_misses_total") == 4
    assert moved("meshdns_upstream_requests_total") == 4
    assert moved("meshdns_upstream_failures_total") == 1
    assert moved("meshdns_upstream_latency_seconds_count") == 4
    assert value(after, "meshdns_cache_entries") == 3
    assert value(after, "meshdns_table_names") == 2
    assert value(after, "meshdns_reloads_total", result="success") == 1


def test_admin_endpoints_over_http(start_meshdns: Callable[..., object], upstream) -> None:
    admin_port = free_port()
    start_meshdns(
        {"upstream": {"servers": [upstream.server]}, "admin": {"port": admin_port}},
        {"entries.yaml": ENTRIES},
    )
    assert scrape(admin_port, "/healthz") == (200, "ok\n")
    assert scrape(admin_port, "/readyz") == (200, "ready\n")
    status, body = scrape(admin_port, "/debug/table")
    assert status == 200
    assert "address.internal" in body and "198.51.100.1" in body
    assert scrape(admin_port, "/nope")[0] == 404
