# -*- test-case-name: tests.unit.ops.test_metrics -*-
"""
Counters of the operations around the DNS path (reloads, VIP listeners),
kept as plain integers and read by C{/metrics} when it is scraped.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ReloadStats:
    """
    Table reload counters.

    @ivar last_ok: whether the last reload succeeded (start-up counts).
    @ivar last_time: wall-clock time of the last successful load.
    """

    ok: int = 0
    failed: int = 0
    last_ok: bool = True
    last_time: float = 0.0


@dataclass
class ListenerStats:
    """
    Counters of the VIP listeners (L{meshdns_plugin.ops.listeners}), all
    listeners together.

    @ivar listening: listening sockets open now (a gauge).
    @ivar bind_failures: listeners that could not be opened (address in use,
        a port below 1024 without the privilege, ...).
    @ivar accepted: connections accepted.
    @ivar active: connections being relayed now (a gauge).
    @ivar connect_failures: connections closed because their backend could
        not be resolved or connected to.
    """

    listening: int = 0
    bind_failures: int = 0
    accepted: int = 0
    active: int = 0
    connect_failures: int = 0
