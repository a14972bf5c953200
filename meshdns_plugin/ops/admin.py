# -*- test-case-name: tests.unit.ops.test_admin -*-
"""
The admin HTTP endpoint (twisted.web): what Kubernetes probes, Prometheus
scrapes and an operator curls.

  - C{/healthz}: 200 while the process runs (liveness);
  - C{/readyz}: 200 once the table is loaded and DNS is being served (and,
    with the Kubernetes API source, once a table built from every kind's
    first list serves), 503 before and while shutting down (readiness). A
    failed reload does not make it unready: the previous table is still
    served;
  - C{/metrics}: Prometheus text from the service's own registry
    (L{meshdns_plugin.ops.metrics});
  - C{/debug/table}: the name table as JSON (L{table_document});
  - C{/debug/listeners}: the VIP listeners being served, as JSON
    (L{listeners_document});
  - C{/debug/problems}: the invalid documents the serving load left out,
    and the collisions of its view, as JSON (L{problems_document});
  - C{/debug/kubernetes}: with the Kubernetes API source, each watched
    collection: objects held, state, resourceVersion, lists, relists,
    events, errors.

It listens on loopback by default (C{admin.address}); C{admin.port: 0}
disables it. Failing to listen is logged once and leaves DNS serving (the
endpoint is for observing, and DNS matters more); it is tried again every
second, since during a rolling update the predecessor holds the port until
it exits.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry
from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.pages import notFound
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from meshdns_plugin.config import AdminConfig
from meshdns_plugin.endpoints import tcp_server
from meshdns_plugin.mesh.model import Problem
from meshdns_plugin.mesh.table import table_document
from meshdns_plugin.mesh.view import Collision
from meshdns_plugin.ops.listeners.plan import listeners_document
from meshdns_plugin.ops.metrics import registry_for
from meshdns_plugin.ops.reported import Reported

_log = Logger()

_TEXT = b"text/plain; charset=utf-8"
#: Seconds between tries to listen when the port is taken.
RETRY_LISTEN = 1.0


class _Leaf(Resource):
    """A resource that answers GET (and HEAD) itself, whatever follows its path."""

    isLeaf = True


class _Folder(Resource):
    """
    A resource with children; an unknown child is a plain 404 (the stock
    default is a deprecated page that does not escape the path).
    """

    def getChild(self, path: bytes, request: Request) -> Resource:
        return notFound()


class Index(_Folder):
    """C{/}: the list of endpoints, for whoever curls the port first."""

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", _TEXT)
        return (
            b"meshdns admin: /healthz /readyz /metrics /debug/table /debug/listeners "
            b"/debug/problems\n"
        )


class Health(_Leaf):
    """C{/healthz}: answering at all is the proof of life."""

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", _TEXT)
        return b"ok\n"


class DebugIndex(_Folder):
    """C{/debug}: the list of debug pages (GET and HEAD, as every page here)."""

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", _TEXT)
        return b"meshdns debug pages: /debug/table\n"


class Readiness(_Leaf):
    """
    C{/readyz}: whether DNS queries are being answered from a table: the
    first table is loaded and every DNS listener is bound (the service's
    C{listening}, false again as soon as it starts shutting down).
    """

    def __init__(self, ready: Callable[[], bool]) -> None:
        super().__init__()
        self._ready = ready

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", _TEXT)
        if self._ready():
            return b"ready\n"
        request.setResponseCode(503)
        return b"not ready\n"


class Metrics(_Leaf):
    """C{/metrics}: the Prometheus text format of one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self._registry)


class TableDump(_Leaf):
    """C{/debug/table}: the live table as JSON."""

    def __init__(self, reported: Reported) -> None:
        super().__init__()
        self._reported = reported

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        document = table_document(self._reported.table())
        # Which config this server runs, so that `meshdns table` asks only
        # the server of the config it was given.
        document["config"] = self._reported.config_source
        return json.dumps(document, indent=1).encode() + b"\n"


class ListenersDump(_Leaf):
    """C{/debug/listeners}: the listeners the server opens (none when they are off)."""

    def __init__(self, reported: Reported) -> None:
        super().__init__()
        self._reported = reported

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        document = listeners_document(self._reported.listener_plan())
        document["config"] = self._reported.config_source
        return json.dumps(document, indent=1).encode() + b"\n"


def problems_document(
    problems: tuple[Problem, ...], found: tuple[Collision, ...] = ()
) -> dict[str, Any]:
    """
    The invalid documents as JSON-able data: each one's file, document
    index, field, kind/namespace/name when known, and the reason, the same
    words as the log line; then the collisions, each naming both claimants.
    """
    return {
        "invalid": [
            {
                "file": p.file,
                "document": p.document,
                "field": p.field,
                "key": list(p.key) if p.key is not None else None,
                "message": p.message,
            }
            for p in problems
        ],
        "collisions": [
            {
                "address": c.address,
                "port": c.port,
                "first": c.first,
                "second": c.second,
                "message": str(c),
            }
            for c in found
        ],
    }


class ProblemsDump(_Leaf):
    """C{/debug/problems}: what the serving load left out, and why."""

    def __init__(self, reported: Reported) -> None:
        super().__init__()
        self._reported = reported

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        reported = self._reported
        document = problems_document(reported.problems(), reported.collisions())
        return json.dumps(document, indent=1).encode() + b"\n"


class KubernetesDump(_Leaf):
    """C{/debug/kubernetes}: each watched collection of the Kubernetes API source."""

    def __init__(self, status: Callable[[], list[dict[str, Any]]]) -> None:
        super().__init__()
        self._status = status

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"collections": self._status()}, indent=1).encode() + b"\n"


def admin_resource(reported: Reported, registry: CollectorRegistry) -> Resource:
    """The resource tree of the endpoint."""
    root = Index()
    root.putChild(b"", root)
    root.putChild(b"healthz", Health())
    root.putChild(b"readyz", Readiness(reported.ready))
    root.putChild(b"metrics", Metrics(registry))
    debug = DebugIndex()
    debug.putChild(b"", debug)
    debug.putChild(b"table", TableDump(reported))
    debug.putChild(b"problems", ProblemsDump(reported))
    debug.putChild(b"listeners", ListenersDump(reported))
    if reported.kubernetes is not None:
        debug.putChild(b"kubernetes", KubernetesDump(reported.kubernetes))
    root.putChild(b"debug", debug)
    return root


class AdminSite(Site):
    """
    A L{Site} without an access log: Twisted logs every request by default,
    and probes plus scrapes every few seconds would drown the reload lines.
    """

    noisy = False

    def log(self, request: Request) -> None:
        pass


class AdminService(service.Service):
    """
    Serves L{admin_resource} on C{admin.address}:C{admin.port}.

    @ivar reported: what it reports on.
    @ivar registry: the Prometheus registry holding this service's collector.
    @ivar port: the listening port once listening, else L{None}.
    """

    def __init__(self, reported: Reported, config: AdminConfig, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reported = reported
        self.registry = registry_for(reported)
        self.site = AdminSite(admin_resource(reported, self.registry))
        self.config = config
        self.port: IListeningPort | None = None
        self._reactor = reactor
        self._retry: Any = None
        self._failed = False

    def startService(self) -> None:
        super().startService()
        self._listen()

    def _listen(self) -> None:
        self._retry = None
        address, port = self.config.address, self.config.port
        listening = tcp_server(self._reactor, address, port).listen(self.site)
        listening.addCallbacks(self._listening, self._notListening)

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        host = port.getHost()
        _log.info("Admin endpoint on {address} port {port}", address=host.host, port=host.port)

    def _notListening(self, reason: Failure) -> None:
        if not self._failed:
            self._failed = True
            _log.error(
                "Admin endpoint disabled: cannot listen on {address} port {port}: {error}; "
                "trying again every {every:.0f} s",
                address=self.config.address,
                port=self.config.port,
                error=reason.getErrorMessage(),
                every=RETRY_LISTEN,
            )
        # A predecessor still draining during a rolling update holds the
        # port (the DNS ports are shared, this one is not): once it exits,
        # this process must answer the kubelet's probes, or be restarted.
        if self.running:
            self._retry = self._reactor.callLater(RETRY_LISTEN, self._listen)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        port, self.port = self.port, None
        if port is None:
            return defer.succeed(None)
        return defer.maybeDeferred(port.stopListening)
