# -*- test-case-name: tests.unit.test_kubeapi,tests.integration.test_kubeapi_kubectl -*-
"""
A test Kubernetes API server, in a thread of the test process, for meshdns's
Kubernetes source: HTTPS with a throwaway CA, bearer tokens, discovery, list
(with C{limit}/C{continue}) and watch (chunked, replay from a
C{resourceVersion}, bookmarks, C{timeoutSeconds}, 410 after compaction) of
Services, Pods, EndpointSlices and, when their CRDs are said to exist, Istio's
ServiceEntries and Sidecars. It answers as the Kubernetes "API concepts" page
and the real server do (checked with Debian's C{kubectl} in
L{tests.integration.test_kubeapi_kubectl}), and it fails on demand: injected
HTTP errors, token rotation, going down and up on the same port, watches cut
in the middle of an event. Every request is logged for the tests to assert on.

Only reads are served over HTTP (C{GET}); tests change the objects through
L{FakeKubeAPI.create}, L{FakeKubeAPI.update} and L{FakeKubeAPI.delete}.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from tests.support.kubeobjects import ResourceType, resource_types, table_columns, table_row
from tests.support.kubestore import APIError, Event, Store, render

DEFAULT_TOKEN = "meshdns-test-token"
DEFAULT_USER = "system:serviceaccount:meshdns:meshdns"
VERSION = {"major": "1", "minor": "30", "gitVersion": "v1.30.0", "gitTreeState": "clean",
           "buildDate": "2024-04-17T17:27:05Z", "goVersion": "go1.22.2", "compiler": "gc",
           "platform": "linux/amd64"}
REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
           405: "MethodNotAllowed", 409: "Conflict", 410: "Expired", 429: "TooManyRequests",
           500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout"}


@dataclass(frozen=True)
class Request:
    """One request as the server saw and answered it."""

    method: str
    path: str
    query: dict[str, str]
    token: str | None
    status: int
    watch: bool
    time: float = field(default_factory=time.monotonic)


@dataclass
class _Failure:
    target: str
    status: int
    count: int | None
    verbs: tuple[str, ...]
    retry_after: int | None


@dataclass(eq=False)
class _Watch:
    """An open watch stream; C{cut} says how the test wants it ended."""

    cut: str = ""  # "", "mid-event" or "drop"


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """
    A throwaway CA and a server certificate for C{127.0.0.1} and C{localhost}
    (subject alternative names: Go's TLS, hence C{kubectl}, ignores the CN), made
    with the C{openssl} command. Return the CA, certificate and key paths.
    """
    ca, ca_key = folder / "ca.crt", folder / "ca.key"
    cert, key, request = folder / "server.crt", folder / "server.key", folder / "server.csr"
    extensions = folder / "server.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                          "keyUsage=digitalSignature,keyEncipherment\n"
                          "extendedKeyUsage=serverAuth\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    for command in (
        ["req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2",
         "-subj", "/CN=meshdns-test-kube-ca"],
        ["req", *ec, "-keyout", key, "-out", request, "-subj", "/CN=kube-apiserver"],
        ["x509", "-req", "-in", request, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
         "-out", cert, "-days", "2", "-extfile", extensions],
    ):
        subprocess.run(["openssl", *map(str, command)], check=True, capture_output=True)
    return ca, cert, key


def status(code: int, message: str, reason: str = "", details: dict | None = None) -> dict:
    """A C{Status} object, as the real server writes for a failed request."""
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                            "status": "Failure", "message": message,
                            "reason": reason or REASONS.get(code, "Unknown")}
    if details is not None:
        body["details"] = details
    body["code"] = code
    return body


class FakeKubeAPI:
    """
    The test API server. Construct it (it starts at once), feed it objects,
    point a kubeconfig at it (L{write_kubeconfig}), then L{close} it.

    @ivar host: Always C{127.0.0.1}.
    @ivar port: The port, kept across L{stop} and L{start}.
    @ivar ca_path: The CA certificate (PEM) that signed the server's certificate.
    @ivar tokens: The bearer tokens accepted now.
    @ivar user: The user name that RBAC messages (403) name.
    @ivar store: The objects and their history (L{tests.support.kubestore.Store}).
    @ivar bookmark_interval: Seconds between BOOKMARK events on watches that allow them.
    @ivar watch_timeout: A watch's length when the client gives no C{timeoutSeconds}.
    """

    def __init__(self, istio: bool = True, istio_versions: tuple[str, ...] = ("v1", "v1beta1"),
                 port: int = 0, tokens: tuple[str, ...] = (DEFAULT_TOKEN,),
                 bookmark_interval: float = 1.0, watch_timeout: float = 1800.0,
                 user: str = DEFAULT_USER) -> None:
        self.host, self.port = "127.0.0.1", port
        self.tokens, self.user = set(tokens), user
        self.bookmark_interval, self.watch_timeout = bookmark_interval, watch_timeout
        self.types = resource_types(istio_versions if istio else ())
        self.store = Store(self.types)
        self._folder = Path(tempfile.mkdtemp(prefix="kubeapi-"))
        self.ca_path, cert, key = make_certificates(self._folder)
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._tls.load_cert_chain(cert, key)
        self._lock = threading.Lock()
        self._requests: list[Request] = []
        self._failures: list[_Failure] = []
        self._watches: set[_Watch] = set()
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def start(self) -> None:
        """Listen (again) on L{port}, with the store as it was."""
        server = _Server((self.host, self.port), _Handler)
        server.api = self
        server.socket = self._tls.wrap_socket(server.socket, server_side=True,
                                              do_handshake_on_connect=False)
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True,
                         name=f"kubeapi:{self.port}").start()

    def stop(self) -> None:
        """Go down: close the listening socket and cut every open connection and watch."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        self._end_watches("drop")
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._folder, ignore_errors=True)

    def __enter__(self) -> FakeKubeAPI:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # The store, for tests.
    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self.store.create(obj)

    def bulk_create(self, objects: list[dict[str, Any]]) -> int:
        return self.store.bulk_create(objects)

    def update(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self.store.update(obj)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        """Delete the object of C{kind} (C{"Service"}, or its plural) named C{name}."""
        plurals = {t.kind: t.plural for t in self.types}
        self.store.delete(plurals.get(kind, kind), namespace, name)

    def compact(self) -> None:
        self.store.compact()

    @property
    def resource_version(self) -> int:
        return self.store.revision

    # Authentication, faults and what happened.
    def rotate_token(self, new: str) -> None:
        """Accept only C{new} from now on: the old token gets 401, as a revoked one does."""
        self.tokens = {new}

    def fail(self, target: str, status: int, count: int | None = None,
             verbs: tuple[str, ...] = ("list", "watch"), retry_after: int | None = None) -> None:
        """
        Answer C{status} to the next C{count} requests (all, when None) whose
        path starts with C{target} (when it starts with C{/}) or whose resource
        is C{target} (C{"services"}), for C{verbs} (C{list}, C{watch}, C{get};
        discovery and C{/version} are C{get}). C{retry_after} adds that header.
        """
        with self._lock:
            self._failures.append(_Failure(target, status, count, tuple(verbs), retry_after))

    def clear_failures(self) -> None:
        with self._lock:
            self._failures.clear()

    @property
    def requests(self) -> list[Request]:
        """Every request so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    def watches(self, resource: str = "") -> list[Request]:
        """The watch requests so far, of C{resource} (a plural) if given."""
        return [r for r in self.requests
                if r.watch and (not resource or r.path.rstrip("/").endswith("/" + resource))]

    @property
    def open_watches(self) -> int:
        with self._lock:
            return len(self._watches)

    def cut_watches(self, mid_event: bool = True, timeout: float = 5.0) -> int:
        """
        End every open watch abruptly: half an event line (when C{mid_event}),
        then the connection closed without the chunked body's end. Return how
        many were cut, once they are (at most C{timeout} seconds).
        """
        return self._end_watches("mid-event" if mid_event else "drop", timeout)

    def _end_watches(self, how: str, timeout: float = 5.0) -> int:
        with self._lock:
            watches = list(self._watches)
            for watch in watches:
                watch.cut = how
        with self.store.changed:
            self.store.changed.notify_all()
        self.wait_for(lambda: not (self._watches & set(watches)), timeout)
        return len(watches)

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> bool:
        """Poll C{predicate} until true or C{timeout} seconds pass; return its last answer."""
        deadline = time.monotonic() + timeout
        while not (answer := bool(predicate())) and time.monotonic() < deadline:
            time.sleep(0.02)
        return answer

    def write_kubeconfig(self, path: str | Path, token: str | None = None,
                         token_file: str | Path | None = None, ca: bool = True) -> Path:
        """
        A kubeconfig for this server: its CA (or C{insecure-skip-tls-verify}
        when C{ca} is false), and the user's C{token} or C{tokenFile}
        (default: the first accepted token).
        """
        cluster: dict[str, Any] = {"server": self.url}
        if ca:
            cluster["certificate-authority"] = str(self.ca_path)
        else:
            cluster["insecure-skip-tls-verify"] = True
        user = ({"tokenFile": str(token_file)} if token_file
                else {"token": token or sorted(self.tokens)[0]})
        config = {
            "apiVersion": "v1", "kind": "Config", "preferences": {},
            "clusters": [{"name": "fake", "cluster": cluster}],
            "users": [{"name": "meshdns", "user": user}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "meshdns"}}],
            "current-context": "fake",
        }
        Path(path).write_text(yaml.safe_dump(config))
        return Path(path)

    def _failure(self, path: str, plural: str, verb: str) -> _Failure | None:
        """The injected failure for this request, counted (lock taken here)."""
        with self._lock:
            for failure in self._failures:
                target = failure.target
                if verb in failure.verbs and (path.startswith(target) if target[:1] == "/"
                                              else target == plural):
                    if failure.count is not None:
                        failure.count -= 1
                        if failure.count == 0:
                            self._failures.remove(failure)
                    return failure
        return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    api: FakeKubeAPI

    def handle_error(self, request: Any, client_address: Any) -> None:
        """
        A client that went away (or a cut connection) is not an error worth a
        traceback; anything else is a bug of this server, printed.
        """
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.api = self.server.api
        self.request.do_handshake()
        with self.api._lock:
            self.api._connections.add(self.request)

    def finish(self) -> None:
        with self.api._lock:
            self.api._connections.discard(self.request)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """The request log (L{FakeKubeAPI.requests}) replaces the server's stderr lines."""

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        self.watching = self.query.get("watch") in ("1", "true")
        header = self.headers.get("Authorization", "")
        # The scheme is case-insensitive (RFC 7235), as the API server's
        # bearer token authenticator reads it; the in-cluster loader of the
        # kubernetes client writes "bearer".
        scheme, _, credentials = header.partition(" ")
        self.token = credentials.strip() if scheme.lower() == "bearer" else None
        try:
            self._route(url.path)
        except APIError as error:
            self._send_status(status(error.code, error.message, error.reason, error.details))
        except _Answered:
            pass
        except (OSError, ssl.SSLError):
            self.close_connection = True

    def _route(self, path: str) -> None:
        if self.token not in self.api.tokens:
            raise APIError(401, "Unauthorized", "Unauthorized")
        parts = [part for part in path.split("/") if part]
        found = self._resource(parts)
        if found is None:
            self._fault(path, "", "get", "")
            return self._send_json(self._discovery(parts))
        rtype, version, namespace, name = found
        verb = "get" if name else "watch" if self.watching else "list"
        self._fault(path, rtype.plural, verb, namespace, rtype, name)
        for selector in ("labelSelector", "fieldSelector"):
            if self.query.get(selector):
                raise APIError(400, "BadRequest", f"{selector} is not served by the test server")
        if name:
            body = self.api.store.get(rtype.plural, namespace, name)
            return self._send_json(render(body, rtype.kind, rtype.api_version(version)))
        if self.watching:
            return self._watch(rtype, version, namespace)
        self._list(rtype, version, namespace)

    def _resource(self, parts: list[str]) -> tuple[ResourceType, str, str, str] | None:
        """The resource type, version, namespace and name a path names; None for discovery."""
        if parts[:1] == ["api"] and len(parts) > 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) > 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return None
        namespace = ""
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        for rtype in self.api.types:
            if (rtype.group, rtype.plural) == (group, rest[0]) and version in rtype.versions \
                    and len(rest) <= 2:
                return rtype, version, namespace, rest[1] if len(rest) == 2 else ""
        raise APIError(404, "NotFound", "the server could not find the requested resource", {})

    def _fault(self, path: str, plural: str, verb: str, namespace: str,
               rtype: ResourceType | None = None, name: str = "") -> None:
        failure = self.api._failure(path, plural, verb)
        if failure is None:
            return
        details: dict[str, Any] = {}
        code, message = failure.status, "injected failure"
        if code == 401:
            message = "Unauthorized"
        elif code == 403:
            scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
            group = rtype.group if rtype else ""
            what = f'{plural} "{name}"' if name else plural
            message = (f'{what} is forbidden: User "{self.api.user}" cannot {verb} resource '
                       f'"{plural}" in API group "{group}" {scope}')
            details = {"name": name, "group": group, "kind": plural} if name else \
                {"group": group, "kind": plural} if group else {"kind": plural}
        elif code == 404:
            message = "the server could not find the requested resource"
        elif code == 429:
            message = "Too many requests, please try again later."
            details = {"retryAfterSeconds": failure.retry_after or 1}
        elif code == 500:
            message = "Internal error occurred: injected failure"
            details = {"causes": [{"message": "injected failure"}]}
        elif code == 503:
            message = "the server is currently unable to handle the request"
        self._send_status(status(code, message, details=details), failure.retry_after)
        raise _Answered

    def _discovery(self, parts: list[str]) -> dict[str, Any]:
        groups: dict[str, list[ResourceType]] = {}
        for rtype in self.api.types:
            groups.setdefault(rtype.group, []).append(rtype)

        def group(name: str) -> dict[str, Any]:
            versions = [{"groupVersion": f"{name}/{v}", "version": v}
                        for v in groups[name][0].versions]
            return {"name": name, "versions": versions, "preferredVersion": versions[0]}

        match parts:
            case ["version"]:
                return VERSION
            case ["api"]:
                address = {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self.api.port}"}
                return {"kind": "APIVersions", "versions": ["v1"],
                        "serverAddressByClientCIDRs": [address]}
            case ["apis"]:
                return {"kind": "APIGroupList", "apiVersion": "v1",
                        "groups": [group(name) for name in groups if name]}
            case ["apis", name] if name in groups and name:
                return {"kind": "APIGroup", "apiVersion": "v1", **group(name)}
            case ["api", "v1"] | ["apis", _, _]:
                name, version = ("", "v1") if parts[0] == "api" else (parts[1], parts[2])
                served = [t for t in groups.get(name, ()) if version in t.versions]
                if served:
                    head = {"kind": "APIResourceList"} if not name else \
                        {"kind": "APIResourceList", "apiVersion": "v1"}
                    return {**head, "groupVersion": served[0].api_version(version),
                            "resources": [t.discovery() for t in served]}
        raise APIError(404, "NotFound", "the server could not find the requested resource", {})

    def _wants_table(self) -> bool:
        return "as=Table" in self.headers.get("Accept", "")

    def _list(self, rtype: ResourceType, version: str, namespace: str) -> None:
        query = self.query
        page = self.api.store.list(
            rtype.plural, namespace, int(query.get("limit") or 0), query.get("continue", ""),
            query.get("resourceVersion", ""), query.get("resourceVersionMatch", ""))
        metadata: dict[str, Any] = {"resourceVersion": str(page.revision)}
        if page.token:
            metadata.update({"continue": page.token, "remainingItemCount": page.remaining})
        api_version = rtype.api_version(version)
        if self._wants_table():
            table = self._table(rtype, api_version, page.bodies)
            return self._send_json({**table, "metadata": metadata})
        items = page.bodies
        if rtype.custom:
            items = [render(body, rtype.kind, api_version) for body in items]
        head = json.dumps({"kind": rtype.kind + "List", "apiVersion": api_version,
                           "metadata": metadata}, separators=(",", ":")).encode()
        self._send_json(head[:-1] + b',"items":[' + b",".join(items) + b"]}")

    def _table(self, rtype: ResourceType, api_version: str, bodies: list[bytes]) -> dict:
        """The server-side table C{kubectl get} asks for (C{Accept: ...;as=Table}) ."""
        rows = [table_row(json.loads(render(body, rtype.kind, api_version))) for body in bodies]
        return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {},
                "columnDefinitions": table_columns(rtype.kind), "rows": rows}

    def _event(self, kind: str, obj: bytes) -> bytes:
        return b'{"type":"%s","object":%s}\n' % (kind.encode(), obj)

    def _watch(self, rtype: ResourceType, version: str, namespace: str) -> None:
        """
        Stream events after the requested revision (or the current objects as
        C{ADDED} first, without one), then live ones, with bookmarks when
        allowed, until C{timeoutSeconds}, a cut, or a 410 C{ERROR} event.
        """
        api, store = self.api, self.api.store
        after, initial = store.watch_start(rtype.plural, namespace,
                                           self.query.get("resourceVersion", ""))
        timeout = float(self.query.get("timeoutSeconds") or api.watch_timeout)
        bookmarks = self.query.get("allowWatchBookmarks") == "true"
        api_version = rtype.api_version(version)
        self._start_response(200, "application/json", {"Transfer-Encoding": "chunked"})
        watch = _Watch()
        with api._lock:
            api._watches.add(watch)
        try:
            deadline = time.monotonic() + timeout
            next_bookmark = time.monotonic() + api.bookmark_interval
            self._send_events(rtype, api_version, initial)
            while not watch.cut:
                now = time.monotonic()
                if now >= deadline:
                    break
                if bookmarks and now >= next_bookmark:
                    bookmark = {"kind": rtype.kind, "apiVersion": api_version,
                                "metadata": {"resourceVersion": str(after)}}
                    self._chunk(self._event("BOOKMARK", _compact(bookmark)))
                    next_bookmark = now + api.bookmark_interval
                wake = min(deadline, next_bookmark) if bookmarks else deadline
                try:
                    events, after = store.events_after(rtype.plural, namespace, after,
                                                       max(wake - now, 0.001))
                except APIError as error:
                    gone = status(error.code, error.message, error.reason)
                    self._chunk(self._event("ERROR", _compact(gone)))
                    break
                self._send_events(rtype, api_version, events)
            if watch.cut == "mid-event":
                line = self._event("MODIFIED", render(b'{"metadata":{}}', rtype.kind, api_version))
                self._chunk(line[: len(line) // 2])
            if watch.cut:
                self.request.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
            else:
                self.wfile.write(b"0\r\n\r\n")
        finally:
            with api._lock:
                api._watches.discard(watch)

    def _send_events(self, rtype: ResourceType, api_version: str, events: list[Event]) -> None:
        for event in events:
            obj = render(event.body, rtype.kind, api_version)
            if self._wants_table():
                table = self._table(rtype, api_version, [event.body])
                table["metadata"] = {"resourceVersion": str(event.revision)}
                obj = _compact(table)
            self._chunk(self._event(event.type, obj))

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _start_response(self, code: int, content_type: str, headers: dict[str, str]) -> None:
        with self.api._lock:
            self.api._requests.append(Request(self.command, urlsplit(self.path).path, self.query,
                                              self.token, code, self.watching))
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-cache, private")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def _send_json(self, body: dict[str, Any] | bytes, code: int = 200,
                   retry_after: int | None = None) -> None:
        data = body if isinstance(body, bytes) else _compact(body)
        headers = {"Content-Length": str(len(data))}
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        self._start_response(code, "application/json", headers)
        self.wfile.write(data)

    def _send_status(self, body: dict[str, Any], retry_after: int | None = None) -> None:
        self._send_json(body, body["code"], retry_after)

    def do_POST(self) -> None:
        """Writes go through L{FakeKubeAPI}'s methods, not HTTP."""
        self.query, self.watching, self.token = {}, False, None
        self.close_connection = True
        self._send_status(status(405, "the server does not allow this method on the requested "
                                 "resource"))

    do_PUT = do_PATCH = do_DELETE = do_POST


class _Answered(Exception):
    """The request was answered already (by an injected failure)."""


def _compact(obj: dict[str, Any]) -> bytes:
    """JSON without spaces, as the real server writes it."""
    return json.dumps(obj, separators=(",", ":")).encode()
