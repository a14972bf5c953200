# -*- test-case-name: tests.test_reload -*-
"""
Building name tables from the configured files, and (re)loading them.

A load reads and validates every entry file first and builds a whole new
L{NameTable} off to the side; only a table that was built completely is
handed on. A failed load raises and leaves the caller's current table alone.
VIP assignments carry over from one load to the next (and from the state file
across restarts), so a host keeps its VIP while it exists.
"""

from __future__ import annotations

from twisted.logger import Logger

from meshdns_plugin.allocator import Allocation, StateError, Vips, allocate, load_state, save_state
from meshdns_plugin.config import Config
from meshdns_plugin.entries import load_entries
from meshdns_plugin.resolvconf import read_resolv_conf
from meshdns_plugin.table import NameTable, build_table, vip_hosts

_log = Logger()


def search_domains(config: Config) -> tuple[str, ...]:
    """The search list: configured, or else resolv.conf's C{search} line."""
    if config.mesh.search is not None:
        return config.mesh.search
    return read_resolv_conf(config.upstream.resolv_conf).search


class TableLoader:
    """
    Turns the configured entry files into name tables, remembering VIPs.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self._vips: dict[str, Vips] | None = None

    def _previous_vips(self) -> dict[str, Vips]:
        if self._vips is not None:
            return self._vips
        state_file = self.config.mesh.state_file
        if state_file is None:
            return {}
        try:
            return load_state(state_file)
        except StateError as e:
            _log.error("{problem}; allocating afresh", problem=str(e))
            return {}

    def load(self) -> NameTable:
        """
        Read every entry file and build a table.

        @raise meshdns_plugin.entries.EntriesError: if any entry is invalid;
            nothing is changed then, not even the remembered VIPs.
        """
        mesh = self.config.mesh
        entries = load_entries(self.config.entries)
        for note in entries.notes:
            _log.info("{note}", note=note)
        if mesh.auto_allocate:
            allocation = allocate(
                vip_hosts(entries, mesh.namespace),
                mesh.ipv4_range,
                mesh.ipv6_range,
                self._previous_vips(),
            )
        else:
            allocation = Allocation({})
        for problem in allocation.problems:
            _log.error("VIP allocation: {problem}", problem=problem)
        table = build_table(
            entries,
            allocation,
            namespace=mesh.namespace,
            cluster_domain=mesh.cluster_domain,
            search=search_domains(self.config),
            ttl=mesh.ttl,
            auto_allocate=mesh.auto_allocate,
        )
        self._vips = dict(allocation.vips)
        if mesh.state_file is not None:
            try:
                save_state(mesh.state_file, allocation)
            except OSError as e:
                _log.error("Cannot write VIP state {path}: {error}", path=mesh.state_file, error=e)
        return table
