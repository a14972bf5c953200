# -*- test-case-name: tests.unit.ops.test_metrics -*-
"""
Prometheus metrics, made from the plain counters of L{meshdns_plugin.dns.stats}
at scrape time.

The query path only adds to integers; calling C{prometheus_client} there
(a lock and a label lookup per increment) would cost more than answering from
the table. L{MeshCollector} is a custom collector instead: a scrape reads the
counters, the cache and the table, and builds the metric families then.

Each L{MeshCollector} goes into its own L{CollectorRegistry} (see
L{registry_for}), not the global one, so that several services in one process
(tests, embedding) never collide.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from meshdns_plugin.dns.stats import FAILURE_KINDS, LATENCY_BUCKETS
from meshdns_plugin.ops.reported import Reported


class MeshCollector(Collector):
    """
    Every C{meshdns_*} metric of what one service reports on.
    """

    def __init__(self, reported: Reported) -> None:
        self._reported = reported

    def collect(self) -> Iterator[Metric]:
        yield from self._queries()
        yield from self._upstream()
        yield from self._upstream_servers()
        yield from self._cache()
        yield from self._table()
        yield from self._reloads()
        yield from self._vip_listeners()
        yield from self._kubernetes()
        yield from self._autopath()

    def _queries(self) -> Iterator[Metric]:
        server = self._reported.server
        queries = CounterMetricFamily(
            "meshdns_queries",
            "DNS queries answered, by query type and outcome "
            "(mesh, cache_hit, forwarded, error).",
            labels=("type", "outcome"),
        )
        for (qtype, outcome), count in sorted(server.queries.items()):
            queries.add_metric((qtype, outcome), count)
        yield queries
        yield CounterMetricFamily(
            "meshdns_queries_dropped",
            "Packets dropped unanswered (responses, unreadable junk).",
            value=server.dropped,
        )

    def _upstream(self) -> Iterator[Metric]:
        upstream = self._reported.upstream
        yield CounterMetricFamily(
            "meshdns_upstream_requests",
            "Questions sent to the upstream servers (after cache and merging).",
            value=upstream.requests,
        )
        yield CounterMetricFamily(
            "meshdns_upstream_failures",
            "Upstream questions that got no usable answer (timeout, SERVFAIL, REFUSED).",
            value=upstream.failures,
        )
        yield CounterMetricFamily(
            "meshdns_upstream_sent",
            "Queries sent to upstream servers: every attempt, TCP retries included.",
            value=upstream.sent,
        )
        yield CounterMetricFamily(
            "meshdns_upstream_ignored_replies",
            "Datagrams from an upstream server with another ID or question (late, or spoofed).",
            value=upstream.ignored_replies,
        )
        yield CounterMetricFamily(
            "meshdns_upstream_rejected",
            "Questions answered SERVFAIL at once: upstream.max_concurrent were in flight.",
            value=upstream.rejected,
        )
        yield HistogramMetricFamily(
            "meshdns_upstream_latency_seconds",
            "Time from sending a question upstream to its answer or failure.",
            buckets=_buckets(upstream.latency.counts),
            sum_value=upstream.latency.total,
        )

    # Per upstream server (dns/health.py), each labelled with the server.

    def _upstream_servers(self) -> Iterator[Metric]:
        servers = self._reported.upstream.servers
        queries = CounterMetricFamily(
            "meshdns_upstream_server_queries",
            "Queries sent to this upstream server for clients (health probes not counted).",
            labels=("server",),
        )
        probes = CounterMetricFamily(
            "meshdns_upstream_server_probes",
            "Health probes sent to this upstream server while it was down.",
            labels=("server",),
        )
        failures = CounterMetricFamily(
            "meshdns_upstream_server_failures",
            "Attempts to this upstream server that failed, by kind "
            "(timeout, servfail, refused, network, malformed).",
            labels=("server", "kind"),
        )
        up = GaugeMetricFamily(
            "meshdns_upstream_server_up",
            "1 if this upstream server is asked in turn, 0 if it is down (skipped and probed).",
            labels=("server",),
        )
        timeout = GaugeMetricFamily(
            "meshdns_upstream_server_timeout_seconds",
            "How long an attempt now waits for this server before asking the next one.",
            labels=("server",),
        )
        rtt = HistogramMetricFamily(
            "meshdns_upstream_server_rtt_seconds",
            "Round-trip times of this upstream server's replies over UDP.",
            labels=("server",),
        )
        for server in servers:
            label = (server.server,)
            queries.add_metric(label, server.queries)
            probes.add_metric(label, server.probes)
            for kind in FAILURE_KINDS:
                failures.add_metric((server.server, kind), server.failures.get(kind, 0))
            up.add_metric(label, int(server.up))
            timeout.add_metric(label, server.timeout)
            rtt.add_metric(label, _buckets(server.rtt.counts), server.rtt.total)
        yield from (queries, probes, failures, up, timeout, rtt)
        yield CounterMetricFamily(
            "meshdns_cache_prefetches",
            "Cache entries asked in the last tenth of their TTL and refreshed before expiry.",
            value=self._reported.upstream.prefetches,
        )

    def _cache(self) -> Iterator[Metric]:
        cache, upstream = self._reported.cache, self._reported.upstream
        yield GaugeMetricFamily(
            "meshdns_cache_entries", "Upstream answers in the cache.", value=len(cache)
        )
        yield CounterMetricFamily(
            "meshdns_cache_hits",
            "Questions answered from the cache.",
            value=upstream.cache_hits,
        )
        yield CounterMetricFamily(
            "meshdns_cache_misses",
            "Questions the cache could not answer.",
            value=upstream.cache_misses,
        )
        yield CounterMetricFamily(
            "meshdns_cache_stale_served",
            "Expired answers served because no upstream answered within 1.8 s or every "
            "upstream failed (cache.serve_stale).",
            value=upstream.stale_served,
        )
        yield CounterMetricFamily(
            "meshdns_cache_evictions",
            "Cache entries pushed out by the size bound.",
            value=cache.evictions,
        )

    def _table(self) -> Iterator[Metric]:
        table = self._reported.table()
        yield GaugeMetricFamily(
            "meshdns_table_names",
            "Names (and wildcards) the mesh answers, search-suffix aliases not counted.",
            value=len(table),
        )
        vips = GaugeMetricFamily(
            "meshdns_vips_allocated", "Virtual IPs allocated, by family.", labels=("family",)
        )
        for family, index in (("ipv4", 0), ("ipv6", 1)):
            vips.add_metric((family,), sum(1 for v in table.vips.values() if v[index] is not None))
        yield vips

    def _reloads(self) -> Iterator[Metric]:
        reloads = self._reported.reloads
        total = CounterMetricFamily(
            "meshdns_reloads",
            "Table loads, by result (start-up included); a failed one keeps the old table.",
            labels=("result",),
        )
        total.add_metric(("success",), reloads.ok)
        total.add_metric(("failure",), reloads.failed)
        yield total
        yield GaugeMetricFamily(
            "meshdns_last_reload_success",
            "1 if the last reload was applied, 0 if it failed (invalid documents do not fail it).",
            value=int(reloads.last_ok),
        )
        yield GaugeMetricFamily(
            "meshdns_invalid_documents",
            "Invalid documents the serving load left out (listed at /debug/problems).",
            value=len(self._reported.problems()),
        )
        yield GaugeMetricFamily(
            "meshdns_last_reload_timestamp_seconds",
            "Unix time of the last successful table load.",
            value=reloads.last_time,
        )

    def _vip_listeners(self) -> Iterator[Metric]:
        """The VIP listeners' counters, when C{vip_listeners.enabled}."""
        stats = self._reported.listener_stats
        if stats is None:
            return
        yield GaugeMetricFamily(
            "meshdns_vip_listeners", "VIP listening sockets open.", value=stats.listening
        )
        yield CounterMetricFamily(
            "meshdns_vip_listener_bind_failures",
            "VIP listeners that could not be opened.",
            value=stats.bind_failures,
        )
        yield CounterMetricFamily(
            "meshdns_vip_connections", "Connections accepted on VIPs.", value=stats.accepted
        )
        yield GaugeMetricFamily(
            "meshdns_vip_connections_active",
            "Connections being relayed now.",
            value=stats.active,
        )
        yield CounterMetricFamily(
            "meshdns_vip_connect_failures",
            "VIP connections closed because the backend could not be resolved or reached.",
            value=stats.connect_failures,
        )

    def _kubernetes(self) -> Iterator[Metric]:
        """The Kubernetes API source's collections, when it is on."""
        if self._reported.kubernetes is None:
            return
        collections = self._reported.kubernetes()
        events = CounterMetricFamily(
            "meshdns_kubernetes_events",
            "Watch events received, by kind and type (ADDED, MODIFIED, DELETED).",
            labels=("kind", "type"),
        )
        relists = CounterMetricFamily(
            "meshdns_kubernetes_relists",
            "Lists made again because the watch's resourceVersion had expired (410 Gone).",
            labels=("kind",),
        )
        errors = CounterMetricFamily(
            "meshdns_kubernetes_errors",
            "Failed API requests and broken watches, by kind and reason.",
            labels=("kind", "reason"),
        )
        objects = GaugeMetricFamily(
            "meshdns_kubernetes_objects", "Valid objects held, by kind.", labels=("kind",)
        )
        synced = GaugeMetricFamily(
            "meshdns_kubernetes_synced",
            "1 once the kind has been listed (or Istio's CRDs are absent).",
            labels=("kind", "resource"),
        )
        age = GaugeMetricFamily(
            "meshdns_kubernetes_newest_event_age_seconds",
            "Seconds since the newest watch event of the kind (absent before the first).",
            labels=("kind",),
        )
        now = time.time()
        newest: dict[str, float] = {}
        held: dict[str, int] = {}
        counted: dict[tuple[str, str], int] = {}
        for collection in collections:
            kind = collection["kind"]
            held[kind] = collection["objects"]
            for event, count in collection["events"].items():
                counted[(kind, event)] = counted.get((kind, event), 0) + count
            relists.add_metric((kind,), collection["relists"])
            for reason, count in collection["errors"].items():
                errors.add_metric((kind, reason), count)
            synced.add_metric((kind, collection["resource"]), int(collection["synced"]))
            if collection["last_event"]:
                newest[kind] = max(newest.get(kind, 0.0), collection["last_event"])
        for (kind, event), count in sorted(counted.items()):
            events.add_metric((kind, event), count)
        for kind, count in sorted(held.items()):
            objects.add_metric((kind,), count)
        for kind, last in sorted(newest.items()):
            age.add_metric((kind,), max(0.0, now - last))
        yield from (events, relists, errors, objects, synced, age)


    def _autopath(self) -> Iterator[Metric]:
        """Autopath's and the cluster authority's counters, when they are on."""
        autopath = self._reported.autopath
        if autopath is not None:
            for name, help_text, count in (
                ("searches", "Queries whose search list meshdns searched.", autopath.searches),
                (
                    "answers",
                    "Searches answered with a CNAME to a further candidate.",
                    autopath.answers,
                ),
                ("candidates", "Candidate names asked for searches.", autopath.candidates),
                (
                    "questions_saved",
                    "Questions clients did not send because a search answered them.",
                    autopath.questions_saved,
                ),
            ):
                yield CounterMetricFamily(f"meshdns_autopath_{name}", help_text, value=count)
        cluster = self._reported.cluster
        if cluster is not None:
            yield CounterMetricFamily(
                "meshdns_cluster_nxdomains",
                "Absent names of the cluster domain answered NXDOMAIN without asking upstream "
                "(autopath's candidates included).",
                value=cluster.nxdomains,
            )


def _buckets(counts: list[int]) -> list[tuple[str, int]]:
    """A histogram's cumulative buckets, from its count per L{LATENCY_BUCKETS} bound."""
    bounds = [repr(bound) for bound in LATENCY_BUCKETS] + ["+Inf"]
    cumulative, buckets = 0, []
    for bound, count in zip(bounds, counts, strict=True):
        cumulative += count
        buckets.append((bound, cumulative))
    return buckets


def registry_for(reported: Reported) -> CollectorRegistry:
    """A registry of its own holding the collector of C{reported}."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MeshCollector(reported))
    return registry
