# -*- test-case-name: tests.unit.ops.test_admin,tests.unit.ops.test_metrics -*-
"""
What the admin endpoint and its metrics report on, handed to them by the
service that owns it (L{meshdns_plugin.service.MeshService.reported}): the
counters themselves, and getters for what a reload replaces. The reporters
never reach into the service, so they can be built and tested from these
alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from meshdns_plugin.dns.autopath import AutopathStats
from meshdns_plugin.dns.cache import ResponseCache
from meshdns_plugin.dns.clusterauthority import ClusterAuthorityStats
from meshdns_plugin.dns.stats import ServerStats, UpstreamStats
from meshdns_plugin.mesh.model import Problem
from meshdns_plugin.mesh.table import NameTable
from meshdns_plugin.mesh.view import Collision
from meshdns_plugin.ops.listeners.plan import ListenerPlan
from meshdns_plugin.ops.stats import ListenerStats, ReloadStats


@dataclass(frozen=True)
class Reported:
    """
    @ivar table: the table serving now.
    @ivar ready: whether DNS is being answered from a table (C{/readyz}).
    @ivar problems: the invalid documents the serving load left out.
    @ivar collisions: the address and listener collisions of the serving load.
    @ivar listener_plan: the VIP listeners the server opens.
    @ivar listener_stats: their counters, or L{None} when they are off.
    @ivar config_source: the config file the server runs, so that
        C{meshdns table} asks only the server of its own config.
    @ivar kubernetes: the Kubernetes API source's collections, one mapping
        each (L{meshdns_plugin.sources.kubestatus.document}), or L{None}
        when the source is off.
    @ivar autopath: autopath's counters, or L{None} when it is off.
    @ivar cluster: the cluster authority's counters, or L{None} when it is
        off (no Kubernetes API source watching every namespace).
    """

    server: ServerStats
    upstream: UpstreamStats
    cache: ResponseCache
    reloads: ReloadStats
    table: Callable[[], NameTable]
    ready: Callable[[], bool]
    problems: Callable[[], tuple[Problem, ...]]
    collisions: Callable[[], tuple[Collision, ...]]
    listener_plan: Callable[[], ListenerPlan]
    listener_stats: ListenerStats | None
    config_source: str
    kubernetes: Callable[[], list[dict[str, Any]]] | None = None
    autopath: AutopathStats | None = None
    cluster: ClusterAuthorityStats | None = None
