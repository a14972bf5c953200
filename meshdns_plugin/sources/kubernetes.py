# -*- test-case-name: tests.integration.test_kubernetes_source -*-
"""
The Kubernetes API source: the cluster's Services, EndpointSlices,
ServiceEntries, Sidecars (and Pods, for per-client views), live.

One L{Reflector} thread per kind (per namespace, when C{kubernetes.namespaces}
names some) lists and watches; what it reads comes to the reactor thread,
where L{ApiSource} keeps the last valid version of every object and turns
changes into answers:
  - a Service or EndpointSlice change patches the serving table at once
    (L{TablePatcher}): what one Service answers is rebuilt, nothing else;
    with per-client views, the views and the client map (Pods too) are
    patched alike (L{ViewsPatcher});
  - any other change (a ServiceEntry, a Sidecar), and a change that gives
    the views another shape, asks for a whole build, which the table watcher
    runs off the reactor thread, one at a time, the newest state winning.
A whole build reads a snapshot of what is held here; the patches made while
it runs are made again on its table before it serves.

C{/readyz} stays 503 until every kind has been listed and a table built from
those lists serves, as Istio's agent waits for its first name table.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import random
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.logger import Logger

from meshdns_plugin.config import KubernetesConfig
from meshdns_plugin.mesh.livetable import TablePatcher
from meshdns_plugin.mesh.liveviews import ViewsPatcher
from meshdns_plugin.mesh.loader import PreparedTable
from meshdns_plugin.mesh.model import DocumentKey, Entries
from meshdns_plugin.mesh.table import NameTable
from meshdns_plugin.mesh.views import MeshViews
from meshdns_plugin.sources.apiobjects import ApiObject, read_api_object
from meshdns_plugin.sources.kubeclient import ApiClient, KubeError, MissingClientError
from meshdns_plugin.sources.kubestatus import KindStatus, fault_line
from meshdns_plugin.sources.reflector import Backoff, Reflector, Resource

_log = Logger()

ISTIO_GROUP = "networking.istio.io"
#: Seconds a thread may hold the GIL while another waits for it (Python's
#: default is 0.005), process-wide: the reactor thread's wait for builds.
GIL_SWITCH_INTERVAL = 0.0005
#: Seconds after a whole build is served before free memory is given back.
RELEASE_AFTER = 1.0
#: Seconds between checks for Istio's CRDs while they are absent.
ISTIO_RECHECK = 60.0
#: The kinds, in the order their objects are handed to a build.
_CORE = (("Service", "v1", "services"), ("EndpointSlice", "discovery.k8s.io/v1", "endpointslices"))
_ISTIO = (("ServiceEntry", "serviceentries"), ("Sidecar", "sidecars"))
_PATCHED_KINDS = ("Service", "EndpointSlice", "Pod")


class ApiSource(service.Service):
    """
    Lists and watches the cluster; holds what it read.

    @ivar statuses: one L{KindStatus} per watched collection.
    @ivar held: the valid objects, by kind, then kind, namespace and name.
    @ivar problems: the invalid objects (kind, namespace, name -> one line);
        each one's last valid version, if it had one, keeps serving.
    @ivar ready: a table built from every kind's first list serves.
    @ivar rebuild: asks for a whole build (set by the service tree).
    @ivar rebuild_entries: asks for a build of the ServiceEntries' names
        alone, swapped into the serving table (L{TablePatcher.swap_entries}).
    @ivar serve: puts a patched table in service (set by the service tree).
    @ivar serve_views: puts patched per-client views in service.
    """

    def __init__(
        self,
        config: KubernetesConfig,
        *,
        namespace: str,
        cluster_domain: str,
        pods: bool,
        reactor: Any = None,
        client_factory: Callable[[KubernetesConfig], Any] | None = None,
    ) -> None:
        """
        @param namespace: the proxy's namespace (C{mesh.namespace}).
        @param pods: watch Pods too (per-client views need them).
        @param client_factory: makes the API client (tests pass their own).
        """
        if reactor is None:
            from twisted.internet import reactor
        self.config = config
        self._reactor = reactor
        self._namespace = namespace
        self._cluster_domain = cluster_domain
        self._pods = pods
        self._client_factory = client_factory or _default_client
        self.rebuild: Callable[[], None] = lambda: None
        self.rebuild_entries: Callable[[], None] = lambda: None
        self.serve: Callable[[NameTable], None] = lambda table: None
        self.serve_views: Callable[[MeshViews], None] = lambda views: None
        # Kind -> key -> model object: a snapshot is one tuple per kind.
        self.held: dict[str, dict[DocumentKey, Any]] = {}
        self.problems: dict[DocumentKey, str] = {}
        self.statuses: dict[Resource, KindStatus] = {}
        self.ready = False
        self.server = ""
        self._reflectors: list[Reflector] = []
        self._stopped = threading.Event()
        self._patcher: TablePatcher | None = None
        self._views_patcher: ViewsPatcher | None = None
        self._file_keys: frozenset[DocumentKey] = frozenset()
        self._since_snapshot: set[DocumentKey] = set()
        self._snapshot_complete = False
        self._pending: set[DocumentKey] = set()
        self._flush_call: Any = None
        self._unreachable = False
        self._reported: dict[Resource | None, str] = {}
        for kind, api_version, plural in self._core_kinds():
            for resource in self._resources(kind, api_version, plural):
                self.statuses[resource] = KindStatus(resource)
        for kind, plural in _ISTIO:
            for resource in self._resources(kind, f"{ISTIO_GROUP}/v1", plural):
                self.statuses[resource] = KindStatus(resource)

    def _core_kinds(self) -> tuple[tuple[str, str, str], ...]:
        return (*_CORE, ("Pod", "v1", "pods")) if self._pods else _CORE

    def _resources(self, kind: str, api_version: str, plural: str) -> list[Resource]:
        namespaces = self.config.namespaces or (None,)
        return [Resource(kind, api_version, plural, n) for n in namespaces]

    @property
    def synced(self) -> bool:
        """Every collection has been listed (or is absent) at least once."""
        return all(s.synced for s in self.statuses.values())

    @property
    def settled(self) -> bool:
        """
        Every collection has been listed, or refused to us: what a table
        can be built from (a kind RBAC forbids must not keep the others
        from serving).
        """
        return all(s.synced or s.refused for s in self.statuses.values())

    # -- the threads ---------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._stopped.clear()
        if sys.getswitchinterval() > GIL_SWITCH_INTERVAL:
            # Builds run in a thread beside the reactor; with Python's 5 ms
            # interval, each system call of the reactor thread can wait that
            # long for the GIL back, and a burst of queries waits the sum.
            sys.setswitchinterval(GIL_SWITCH_INTERVAL)
        threading.Thread(target=self._start, name="meshdns-kubernetes", daemon=True).start()

    def stopService(self) -> None:
        super().stopService()
        self._stopped.set()
        for reflector in self._reflectors:
            reflector.stop()
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()

    def _start(self) -> None:
        """The starter thread: connect, find Istio's version, start every reflector."""
        hand_over = self._reactor.callFromThread
        backoff = Backoff(random.Random())
        client = None
        while client is None and not self._stopped.is_set():
            try:
                client = self._client_factory(self.config)
            except MissingClientError as e:
                hand_over(_log.error, "Kubernetes API source off: {error}", error=str(e))
                return
            except KubeError as e:
                hand_over(self._source_failed, e)
                self._stopped.wait(backoff.delay())
        if client is None:
            return
        self.server = client.server
        core = [r for r in self.statuses if r.group != ISTIO_GROUP]
        self._run(client, core)
        istio = [r for r in self.statuses if r.group == ISTIO_GROUP]
        warned = False
        while not self._stopped.is_set():
            try:
                version = _istio_version(client)
            except KubeError as e:
                hand_over(self._source_failed, e)
                self._stopped.wait(backoff.delay(e.retry_after))
                continue
            if version is not None:
                self._run(client, [_at_version(r, version) for r in istio], istio)
                return
            if not warned:
                warned = True
                hand_over(self._istio_absent, istio)
            self._stopped.wait(ISTIO_RECHECK)

    def _run(
        self, client: Any, resources: list[Resource], replacing: list[Resource] | None = None
    ) -> None:
        hand_over = self._reactor.callFromThread
        if replacing is not None:
            hand_over(self._rename, replacing, resources)
        for resource in resources:
            reflector = Reflector(
                client, resource, read_api_object, self, hand_over, self.config.page_size
            )
            self._reflectors.append(reflector)
            if self._stopped.is_set():
                return
            threading.Thread(
                target=reflector.run, name=f"meshdns-watch-{resource.plural}", daemon=True
            ).start()

    # -- news from the threads (reactor thread) ------------------------------

    def _rename(self, old: list[Resource], new: list[Resource]) -> None:
        """Istio's kinds, once their served version is known."""
        for before, after in zip(old, new, strict=True):
            status = self.statuses.pop(before)
            status.resource = after
            status.synced = False
            status.state = "starting"
            self.statuses[after] = status

    def _istio_absent(self, resources: list[Resource]) -> None:
        _log.warn(
            "Kubernetes API: {group} is not served (Istio's CRDs are absent): ServiceEntries "
            "and Sidecars come from the entry files alone; checking again every {every:.0f} s",
            group=ISTIO_GROUP,
            every=ISTIO_RECHECK,
        )
        for resource in resources:
            status = self.statuses[resource]
            status.state, status.synced = "absent", True
        self._settle()

    def listed(self, resource: Resource, objects: list[ApiObject], version: str) -> None:
        status = self.statuses.get(resource)
        if status is None:
            return
        self._reachable()
        kind = resource.kind
        old = {
            key
            for key in (*self.held.get(kind, {}), *self.problems)
            if key[0] == kind and (resource.namespace is None or key[1] == resource.namespace)
        }
        seen = set()
        for read in objects:
            seen.add(read.key)
            self._take(read)
        for key in old - seen:
            self._forget(key)
        status.lists += 1
        status.version = version
        status.state = "watching"
        first = not status.synced
        status.synced, status.refused = True, False
        self._reported.pop(resource, None)
        if first:
            self._settle()
        self._schedule()

    def changed(self, resource: Resource, kind: str, read: ApiObject, version: str) -> None:
        status = self.statuses.get(resource)
        if status is None:
            return
        status.events[kind] += 1
        status.last_event = time.time()
        status.version = version
        if kind == "DELETED":
            self._forget(read.key)
        else:
            self._take(read)
        self._schedule()

    def bookmarked(self, resource: Resource, version: str) -> None:
        status = self.statuses.get(resource)
        if status is None:
            return
        self._reachable()
        status.version = version
        status.state = "watching"
        self._reported.pop(resource, None)

    def failed(self, resource: Resource, error: KubeError, retry_in: float) -> None:
        status = self.statuses.get(resource)
        if status is None:
            return
        status.errors[error.reason or str(error.status)] += 1
        status.last_error = str(error)
        if error.gone:
            status.relists += 1
            status.state = "listing"
            _log.info("Kubernetes API: {error}; listing {what} again", error=error, what=resource)
            return
        status.state = "backoff"
        if error.reason == "stream":
            # A watch that breaks is watched again from where it was: counted,
            # not logged (an API server that is gone shows at the reconnect).
            return
        if error.status is None:
            self._source_failed(error)
            return
        line = fault_line(resource, error)
        if self._reported.get(resource) != line:
            self._reported[resource] = line
            _log.error("{line}; serving the last state, retrying", line=line)
        if error.status in (401, 403) and not status.synced and not status.refused:
            status.refused = True
            self._settle()

    def _source_failed(self, error: KubeError) -> None:
        """The API server unreachable: one line when it goes (and one when it returns)."""
        if error.status is not None or error.reason in ("config", "tls"):
            # Not a network outage: a setting to fix. Said once per cause.
            if self._reported.get(None) != str(error):
                self._reported[None] = str(error)
                _log.error("Kubernetes API: {error}; retrying with backoff", error=error)
            return
        if not self._unreachable:
            self._unreachable = True
            _log.error(
                "Kubernetes API {server} unreachable ({error}); serving the last state, "
                "retrying with backoff",
                server=self.server,
                error=error,
            )

    def _reachable(self) -> None:
        if self._unreachable:
            self._unreachable = False
            _log.info("Kubernetes API {server} is reachable again", server=self.server)

    def _take(self, read: ApiObject) -> None:
        """Hold a read object; an invalid one keeps its last valid version."""
        key = read.key
        for note in read.notes:
            _log.info("Kubernetes API: {note}", note=note)
        if read.problem is not None:
            if self.problems.get(key) != read.problem:
                valid = key in self.held.get(key[0], {})
                kept = "; its last valid version keeps serving" if valid else ""
                _log.error("Invalid, left out: {problem}{kept}", problem=read.problem, kept=kept)
            self.problems[key] = read.problem
            return
        self.problems.pop(key, None)
        if read.model is None:
            self._forget(key)
            return
        held = self.held.setdefault(key[0], {})
        if held.get(key) != read.model:
            held[key] = read.model
            self._pending.add(key)

    def swap_entries(self, layer: NameTable) -> NameTable:
        """The serving table with a new load's ServiceEntries' names (the loader's hook)."""
        assert self._patcher is not None
        return self._patcher.swap_entries(layer)

    def holds_service(self, namespace: str, name: str) -> bool:
        """
        Whether the cluster has the Service C{namespace/name}, as far as the
        watch has seen: held, or left out as invalid (it exists all the
        same, and kube-dns answers it).
        """
        key = ("Service", namespace, name)
        return key in self.held.get("Service", {}) or key in self.problems

    def _forget(self, key: DocumentKey) -> None:
        self.problems.pop(key, None)
        if self.held.get(key[0], {}).pop(key, None) is not None:
            self._pending.add(key)

    def _settle(self) -> None:
        """A kind was listed (or refused): build once every kind is."""
        if self.settled:
            _log.info(
                "Kubernetes API: {what} ({count} objects); building the table",
                what="every kind listed" if self.synced else "every kind listed or refused",
                count=sum(len(held) for held in self.held.values()),
            )
            self.rebuild()

    # -- turning changes into answers ------------------------------------------

    def _schedule(self) -> None:
        """Apply what came in once this reactor turn's events are all in."""
        if self._flush_call is None or not self._flush_call.active():
            self._flush_call = self._reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        pending, self._pending = self._pending, set()
        if not pending or not self.settled:
            # Before every kind is listed, the first whole build takes it all.
            return
        self._since_snapshot |= pending
        patched = {key for key in pending if key[0] in _PATCHED_KINDS}
        # What can be patched serves now, even beside a change that needs a
        # whole build: that build's snapshot has it too.
        if not self._patch(patched):
            self.rebuild()
        elif len(patched) < len(pending):
            entries = self._patcher is not None and all(
                key[0] == "ServiceEntry" for key in pending - patched
            )
            (self.rebuild_entries if entries else self.rebuild)()

    def _patch(self, keys: set[DocumentKey]) -> bool:
        """
        Apply Service, EndpointSlice and Pod changes to the serving table
        (or views) at once.

        @return: whether that was all: L{False} when a whole build must
            follow (no patcher yet, a view that changes shape).
        """
        if not keys:
            return True
        changes: dict[str, dict[tuple[str, str], Any]] = {k: {} for k in _PATCHED_KINDS}
        for key in keys:
            if key in self._file_keys:
                continue  # an entry file's document of the same identity wins
            kind, namespace, name = key
            changes[kind][(namespace, name)] = self.held.get(kind, {}).get(key)
        if self._views_patcher is not None:
            patched = self._views_patcher.apply(
                changes["Service"], changes["EndpointSlice"], changes["Pod"]
            )
            if patched is None:
                return False
            self.serve_views(patched.views)
            return not patched.rebuild
        if self._patcher is None or changes["Pod"]:
            return False
        self.serve(self._patcher.apply(changes["Service"], changes["EndpointSlice"]))
        return True

    def snapshot(self, entries_only: bool = False) -> Entries:
        """
        Every valid object held, for a build (reactor thread; the build
        runs in another). Changes after this are patched again into the
        table it builds.

        @param entries_only: the build keeps the serving table's Services
            (L{TablePatcher.swap_entries}): changes not yet patched must
            still be; a whole build holds them all.
        """
        self._since_snapshot = set()
        if not entries_only:
            self._pending = set()
        self._snapshot_complete = self.synced

        def of(kind: str) -> tuple[Any, ...]:
            return tuple(self.held.get(kind, {}).values())

        return Entries(
            service_entries=of("ServiceEntry"),
            services=of("Service"),
            endpoint_slices=of("EndpointSlice"),
            sidecars=of("Sidecar"),
            pods=of("Pod"),
        )

    def table_loaded(self, prepared: PreparedTable) -> None:
        """
        A whole build is about to serve (a loader observer, reactor thread):
        patch from it on, after making again the changes it missed.
        """
        if self._snapshot_complete and not self.ready:
            self.ready = True
            _log.info("Kubernetes API: synced; the table serves the cluster's state")
        self._file_keys = prepared.file_keys
        if prepared.entries_only:
            return  # the serving table, patched: nothing was missed
        # A whole build at cluster size frees as much as it keeps: once the
        # old table is gone too, give the allocator's free pages back.
        self._reactor.callLater(RELEASE_AFTER, release_free_memory)
        self._patcher = self._views_patcher = None
        if isinstance(prepared.patcher, ViewsPatcher):
            self._views_patcher = prepared.patcher
        else:
            self._patcher = prepared.patcher
        missed = {k for k in self._since_snapshot if k[0] in _PATCHED_KINDS}
        if missed and not self._patch(missed):
            self.rebuild()


def release_free_memory() -> None:
    """
    Return the C allocator's free memory to the system (glibc's
    C{malloc_trim}; nothing where the C library has none): Python's own
    allocator gives back whole arenas only, and a build's dictionaries and
    lists leave the C heap full of holes that RSS keeps counting.
    """
    name = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    if trim is not None:
        trim(0)


def _default_client(config: KubernetesConfig) -> ApiClient:
    return ApiClient(config.kubeconfig, config.context)


def _istio_version(client: Any) -> str | None:
    """The version of Istio's API group to watch (v1, else v1beta1), or L{None}."""
    try:
        group = client.list_page(f"/apis/{ISTIO_GROUP}", {})
    except KubeError as e:
        if e.status == 404:
            return None
        raise
    served = {v.get("version") for v in group.get("versions") or () if isinstance(v, dict)}
    for version in ("v1", "v1beta1"):
        if version in served:
            return version
    return None


def _at_version(resource: Resource, version: str) -> Resource:
    return Resource(resource.kind, f"{ISTIO_GROUP}/{version}", resource.plural, resource.namespace)
