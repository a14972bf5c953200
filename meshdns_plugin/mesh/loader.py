# -*- test-case-name: tests.unit.ops.test_watcher -*-
"""
Building name tables from the configured files.

A load reads and validates every entry file first and builds a whole new
L{NameTable} off to the side; only a table that was built completely is
handed on. VIP assignments carry over from one load to the next (and from the
state file across restarts), so a host keeps its VIP while it exists.

A load is split in two so that it can leave the reactor thread:
L{TableLoader.prepare} parses, allocates and builds, with no side effect at
all (no logging, no writing), and L{TableLoader.commit} logs, remembers the
VIPs and writes the state file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from twisted.logger import Logger

from meshdns_plugin.config import Config, search_domains
from meshdns_plugin.mesh.allocator import (
    Allocation,
    StateError,
    Vips,
    allocate,
    load_state,
    save_state,
)
from meshdns_plugin.mesh.carryover import carry_over
from meshdns_plugin.mesh.clients import client_map
from meshdns_plugin.mesh.livetable import TablePatcher
from meshdns_plugin.mesh.liveviews import ViewsPatcher
from meshdns_plugin.mesh.model import DocumentKey, Entries, Problem
from meshdns_plugin.mesh.table import NameTable, build_table
from meshdns_plugin.mesh.view import MeshView, claimed_addresses, mesh_view, vip_hosts
from meshdns_plugin.mesh.views import MeshViews, build_views, view_vip_hosts, views_built_whole

_log = Logger()

_T = TypeVar("_T")

#: Reads the entry files and folders given (at most the size given per
#: file): L{meshdns_plugin.sources.files.load_entries}. The loader is handed
#: it rather than importing it, since the sources come before the mesh.
FileReader = Callable[[Iterable[str], int], Entries]


@dataclass(frozen=True)
class PreparedTable:
    """
    A table built from the files, not serving yet.

    @ivar entries: what the files held (for C{meshdns listeners} and counts).
    @ivar allocation: the VIPs the table was built with.
    @ivar view: the mesh view the table was built from, which the VIP
        listeners and the C{meshdns} commands read too.
    @ivar errors: problems that did not stop the load but deserve an error
        line (an unreadable state file, a VIP range exhausted).
    @ivar views: with C{mesh.per_client_views}, every namespace's table
        (C{table} is the default namespace's); else L{None}.
    @ivar file_keys: the documents an entry file holds (which the API's
        changes of the same identity leave alone).
    @ivar files: what the entry files alone held.
    @ivar entries_only: C{table} is the ServiceEntries' names alone, to be
        swapped into the serving table (L{TableLoader.swap_entries}), whose
        Services' names are kept.
    @ivar patcher: what applies later changes to C{table} (or C{views}),
        made here, off the reactor thread, when the loader is L{live}.
    """

    table: NameTable
    entries: Entries
    allocation: Allocation
    view: MeshView
    errors: tuple[str, ...] = ()
    views: MeshViews | None = None
    patcher: TablePatcher | ViewsPatcher | None = None
    file_keys: frozenset[DocumentKey] = frozenset()
    files: Entries | None = None
    entries_only: bool = False

    @property
    def entry_count(self) -> int:
        """How many documents (ServiceEntries, Services, EndpointSlices) were read."""
        entries = self.entries
        return len(entries.service_entries) + len(entries.services) + len(entries.endpoint_slices)


class TableLoader:
    """
    Turns the configured entry files into name tables, remembering VIPs.

    @ivar config: what to read, and how to build and serve the tables.

    @ivar observers: called with every accepted load, start-up included, in
        the reactor thread just before its table serves (the VIP listeners
        follow the entries this way); they must not raise.
    @ivar problems: the invalid documents of the load serving now, for the
        admin endpoint and the metrics.
    @ivar view: the mesh view serving now (L{None} before the first load).
    @ivar views: the per-client views serving now (L{None}: not configured,
        or before the first load).
    @ivar api: where the documents of the Kubernetes API come from (a
        snapshot, taken in the reactor thread by L{snapshot}, told whether
        the load is for ServiceEntries alone), or L{None}.
    @ivar entries_only_next: the next load is for ServiceEntry changes
        alone (set by the API source): the Services' names of the serving
        table are kept, and only the ServiceEntries' are built (when the
        files' Services, EndpointSlices and Sidecars are unchanged too).
    @ivar swap_entries: puts a ServiceEntries-only table's names into the
        serving table, and gives the table that serves then.
    @ivar live: each load also makes the patcher that will apply changes to
        its table (L{PreparedTable.patcher}), here rather than in the
        reactor thread, since it indexes every Service.
    """

    def __init__(self, config: Config, read_files: FileReader) -> None:
        self.config = config
        self._read_files = read_files
        self.observers: list[Callable[[PreparedTable], None]] = []
        self.problems: tuple[Problem, ...] = ()
        self.view: MeshView | None = None
        self.views: MeshViews | None = None
        self.api: Callable[[bool], Entries] | None = None
        self.live = False
        self.entries_only_next = False
        self._full_wanted = False
        self.swap_entries: Callable[[NameTable], NameTable] | None = None
        self._files: Entries | None = None
        self._vips: dict[str, Vips] | None = None
        self._entries: Entries | None = None
        # Notes are news: a reload logs only those the last one did not.
        self._notes: frozenset[str] = frozenset()

    def _previous_vips(self) -> tuple[dict[str, Vips], str | None]:
        """The VIPs to keep, and the reason the state file was ignored, if it was."""
        if self._vips is not None:
            return self._vips, None
        state_file = self.config.mesh.state_file
        if state_file is None:
            return {}, None
        try:
            return load_state(state_file), None
        except StateError as e:
            return {}, f"{e}; allocating afresh"

    def want(self, entries_only: bool) -> None:
        """
        Say what the next load is for: ServiceEntry changes alone, or more
        (which wins until that load starts).
        """
        self._full_wanted |= not entries_only
        self.entries_only_next = entries_only and not self._full_wanted

    def snapshot(self) -> tuple[Entries | None, bool]:
        """
        The API's documents now, and whether the load is for ServiceEntry
        changes alone: L{prepare}'s arguments, taken in the reactor thread.
        """
        entries_only, self.entries_only_next = self.entries_only_next, False
        self._full_wanted = False
        return (self.api(entries_only) if self.api is not None else None), entries_only

    def prepare(self, api: Entries | None = None, entries_only: bool = False) -> PreparedTable:
        """
        Read every entry file and build a table, changing nothing: safe in a
        thread, and what C{meshdns check} runs. Invalid documents are left
        out (listed in C{entries.problems}); where one was valid in the load
        serving now, its last valid version is kept.

        @param api: the Kubernetes API's documents (L{snapshot}); one that
            an entry file also holds (the same kind, namespace and name) is
            the file's: a local file overrides the cluster.
        @param entries_only: build the ServiceEntries' names alone, when
            nothing else can have changed (see L{entries_only_next}).
        """
        mesh = self.config.mesh
        files = self._read_files(self.config.entries, self.config.limits.max_file_size)
        file_keys = _keys(files) if api is not None else frozenset()
        entries = carry_over(
            files if api is None else _beside(files, api, file_keys), self._entries
        )
        errors = []
        clients = whole = None
        swap = (
            entries_only
            and self.swap_entries is not None
            and not mesh.per_client_views
            and _same_rest(files, self._files)
        )
        # Swapped in, the ServiceEntries' names are built alone: the
        # Services' serve already, patched change by change.
        scope = (
            dataclasses.replace(entries, services=(), endpoint_slices=(), pods=())
            if swap
            else entries
        )
        placed = vip_hosts(scope, mesh.namespace, mesh.cluster_domain)
        if mesh.per_client_views:
            # Every view answers: the allocator places every view's hosts.
            clients = client_map(entries, mesh.client_namespaces, mesh.namespace)
            whole = views_built_whole(entries, clients.namespaces())
            placed |= view_vip_hosts(entries, whole, mesh.cluster_domain)
        if mesh.auto_allocate:
            previous, state_error = self._previous_vips()
            if state_error is not None:
                errors.append(state_error)
            allocation = allocate(
                placed,
                mesh.ipv4_range,
                mesh.ipv6_range,
                previous,
                reserved=claimed_addresses(entries),
            )
        else:
            allocation = Allocation({})
        errors.extend(f"VIP allocation: {problem}" for problem in allocation.problems)
        view = mesh_view(
            scope,
            allocation,
            namespace=mesh.namespace,
            auto_allocate=mesh.auto_allocate,
            cluster_domain=mesh.cluster_domain,
        )
        if clients is None or whole is None:
            if swap:
                layer = build_table(
                    view,
                    cluster_domain=mesh.cluster_domain,
                    search=search_domains(self.config),
                    ttl=mesh.ttl,
                )
                return PreparedTable(
                    layer,
                    entries,
                    allocation,
                    view,
                    tuple(errors),
                    None,
                    None,
                    file_keys,
                    files,
                    entries_only=True,
                )
            table = build_table(
                view,
                cluster_domain=mesh.cluster_domain,
                search=search_domains(self.config),
                ttl=mesh.ttl,
            )
            patcher = (
                TablePatcher.alone(
                    table,
                    entries,
                    namespace=mesh.namespace,
                    cluster_domain=mesh.cluster_domain,
                )
                if self.live
                else None
            )
            return PreparedTable(
                table, entries, allocation, view, tuple(errors), None, patcher, file_keys, files
            )
        views = build_views(
            entries,
            allocation,
            clients,
            auto_allocate=mesh.auto_allocate,
            cluster_domain=mesh.cluster_domain,
            ttl=mesh.ttl,
            whole=whole,
            default_view=view,
        )
        views_patcher = (
            ViewsPatcher(views, entries, cluster_domain=mesh.cluster_domain) if self.live else None
        )
        return PreparedTable(
            views.default,
            entries,
            allocation,
            view,
            tuple(errors),
            views,
            views_patcher,
            file_keys,
            files,
        )

    def commit(self, prepared: PreparedTable) -> NameTable:
        """
        Accept a prepared table: log its new notes, its problems and its
        collisions, remember its VIPs for the
        next load, write them to the state file and tell the observers.
        Reactor thread only.
        """
        notes = (*prepared.entries.notes, *prepared.view.notes)
        for note in notes:
            if note not in self._notes:
                _log.info("{note}", note=note)
        self._notes = frozenset(notes)
        for path in prepared.entries.missing:
            _log.warn("Entries path {path} does not exist: no entries from it", path=path)
        # A problem already reported by the load serving now is not repeated:
        # a reload says what changed, not every broken document again.
        reported = {str(problem) for problem in self.problems}
        for problem in prepared.entries.problems:
            if str(problem) not in reported:
                _log.error("Invalid, left out: {problem}", problem=problem)
        for collision in prepared.view.collisions:
            _log.warn("{collision}", collision=collision)
        for error in prepared.errors:
            _log.error("{problem}", problem=error)
        self._vips = dict(prepared.allocation.vips)
        self._entries = prepared.entries
        self.problems = prepared.entries.problems
        self.view = prepared.view
        self.views = prepared.views
        state_file = self.config.mesh.state_file
        if state_file is not None:
            try:
                save_state(state_file, prepared.allocation)
            except OSError as e:
                _log.error("Cannot write VIP state {path}: {error}", path=state_file, error=e)
        self._files = prepared.files
        table = prepared.table
        if prepared.entries_only and self.swap_entries is not None:
            table = self.swap_entries(prepared.table)
        for observer in self.observers:
            observer(prepared)
        return table

    def load(self) -> NameTable:
        """
        Read every entry file and build a table (L{prepare} then L{commit}).
        """
        return self.commit(self.prepare(*self.snapshot()))


def _same_rest(files: Entries, previous: Entries | None) -> bool:
    """Whether the files' Services, EndpointSlices and Sidecars are those of the last load."""
    return (
        previous is not None
        and files.services == previous.services
        and files.endpoint_slices == previous.endpoint_slices
        and files.sidecars == previous.sidecars
    )


def _keys(files: Entries) -> frozenset[DocumentKey]:
    """The documents the files hold, valid or not."""
    groups = (files.service_entries, files.services, files.endpoint_slices, files.sidecars)
    valid = {o.origin.key for group in groups for o in group}
    return frozenset(valid | {p.key for p in files.problems if p.key is not None})


def _beside(files: Entries, api: Entries, held: frozenset[DocumentKey]) -> Entries:
    """The API's documents beside the files', leaving out those a file holds."""

    def more(own: tuple[_T, ...], extra: tuple[_T, ...]) -> tuple[_T, ...]:
        if not held:
            return own + extra  # no file holds a document: nothing to leave out
        return own + tuple(o for o in extra if o.origin.key not in held)  # type: ignore[attr-defined]

    return dataclasses.replace(
        files,
        service_entries=more(files.service_entries, api.service_entries),
        services=more(files.services, api.services),
        endpoint_slices=more(files.endpoint_slices, api.endpoint_slices),
        sidecars=more(files.sidecars, api.sidecars),
        pods=files.pods + api.pods,
    )
