# -*- test-case-name: tests.integration.test_kubernetes_source -*-
"""
Talking to the Kubernetes API server: one GET of a list page, one watch
stream read line by line, and errors that say what went wrong.

Where the server is, who we are and how TLS is checked come from the
official C{kubernetes} client (the C{meshdns[kubernetes]} extra): its
kubeconfig loader (contexts, tokens, token files, client certificates,
exec plugins) and its in-cluster loader (the service account's token and
CA, the token re-read as the kubelet rotates it), and its urllib3 pool,
which it sets up with the CA, client certificate, proxy and server name.
meshdns uses nothing of the client's generated API classes: objects are read
from JSON as plain data, once, into meshdns's own model, so none of the
client's per-object models is ever built.

Everything here blocks: it runs in the reflector threads, never in the
reactor thread.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

#: The longest watch event line accepted: etcd caps an object at 1.5 MiB,
#: so a longer line is a broken stream, not an object.
MAX_EVENT_LINE = 8 * 1024 * 1024
#: Seconds to wait for the API server to accept a connection and answer.
CONNECT_TIMEOUT = 10.0
#: Seconds a list page may take to arrive once asked.
READ_TIMEOUT = 60.0


class KubeError(Exception):
    """
    A request failed. C{status} is the HTTP status (L{None}: no answer at
    all: refused, reset, timed out, TLS failure); C{str()} is one line.

    @ivar reason: the C{Status} object's C{reason} (C{Expired}, C{Forbidden}),
        or a short word for a network failure.
    @ivar retry_after: seconds the server asked us to wait (429), or L{None}.
    @ivar verb: C{list} or C{watch}, once the reflector knows which failed.
    """

    verb = "list"

    def __init__(
        self,
        message: str,
        status: int | None = None,
        reason: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.retry_after = retry_after

    @property
    def gone(self) -> bool:
        """The resourceVersion asked for is too old (410 Gone): relist."""
        return self.status == 410


class MissingClientError(Exception):
    """The C{kubernetes} package is not installed."""


def _import_client() -> Any:
    try:
        import kubernetes.client
        import kubernetes.config
    except ImportError:
        raise MissingClientError(
            "kubernetes.enabled needs the Kubernetes client: pip install 'meshdns[kubernetes]'"
        ) from None
    return kubernetes


class ApiClient:
    """
    A connection pool to one API server, with its credentials.

    @ivar server: the API server's URL, for messages.
    """

    def __init__(self, kubeconfig: str | None, context: str | None = None) -> None:
        """
        @param kubeconfig: a kubeconfig file, or L{None} for the pod's
            service account.
        @raise MissingClientError: without the C{kubernetes} package.
        @raise KubeError: if the credentials cannot be loaded.
        """
        self._kubernetes = _import_client()
        self._kubeconfig = kubeconfig
        self._context = context
        self._lock = threading.Lock()
        self._configuration: Any = None
        self._pool: Any = None
        self.server = ""
        self.ca = ""
        self.reload_credentials()

    def reload_credentials(self) -> None:
        """
        Load (again) the kubeconfig or the service account: after a 401,
        the token may have been rotated under us (a C{tokenFile}, or the
        kubelet's projected token).

        @raise KubeError: if they cannot be loaded.
        """
        kubernetes = self._kubernetes
        configuration = kubernetes.client.Configuration()
        where = self._kubeconfig or "the in-cluster service account"
        try:
            if self._kubeconfig is not None:
                kubernetes.config.load_kube_config(
                    config_file=self._kubeconfig,
                    context=self._context,
                    client_configuration=configuration,
                    persist_config=False,
                )
            else:
                kubernetes.config.load_incluster_config(client_configuration=configuration)
        except kubernetes.config.ConfigException as e:
            raise KubeError(f"cannot load {where}: {e}", reason="config") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise KubeError(f"cannot load {where}: {e}", reason="config") from None
        pool = kubernetes.client.rest.RESTClientObject(configuration).pool_manager
        with self._lock:
            old, self._pool, self._configuration = self._pool, pool, configuration
        self.server = configuration.host
        self.ca = configuration.ssl_ca_cert or "the system's CAs"
        if old is not None:
            old.clear()

    def _headers(self) -> dict[str, str]:
        # auth_settings() runs the loaders' refresh hooks: an expired exec
        # credential or an in-cluster token older than a minute is re-read.
        headers = {"Accept": "application/json", "User-Agent": "meshdns"}
        for setting in self._configuration.auth_settings().values():
            if setting.get("in") == "header" and setting.get("value"):
                headers[setting["key"]] = setting["value"]
        return headers

    def _get(self, path: str, query: dict[str, Any], read_timeout: float) -> Any:
        import urllib3

        url = f"{self._configuration.host}{path}"
        if query:
            url += "?" + urlencode(query)
        try:
            response = self._pool.request(
                "GET",
                url,
                headers=self._headers(),
                preload_content=False,
                retries=False,
                timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT, read=read_timeout),
            )
        except urllib3.exceptions.SSLError as e:
            raise KubeError(
                f"TLS verification of {self.server} against {self.ca} failed: {_cause(e)}",
                reason="tls",
            ) from None
        except urllib3.exceptions.HTTPError as e:
            raise KubeError(_cause(e), reason="network") from None
        except ssl.SSLError as e:
            raise KubeError(f"TLS with {self.server} failed: {e}", reason="tls") from None
        if response.status != 200:
            raise _status_error(response, path)
        return response

    def list_page(self, path: str, query: dict[str, Any]) -> dict[str, Any]:
        """
        One page of a list.

        @raise KubeError: on any failure, the body unparsable included.
        """
        response = self._get(path, query, READ_TIMEOUT)
        try:
            body = response.read()
        except Exception as e:  # urllib3 and ssl raise several kinds here
            raise KubeError(f"{path}: the list was cut: {_cause(e)}", reason="network") from None
        finally:
            response.release_conn()
        try:
            page = json.loads(body)
        except ValueError:
            raise KubeError(f"{path}: the list is not JSON", reason="decode") from None
        if not isinstance(page, dict) or not isinstance(page.get("items", []), list):
            raise KubeError(f"{path}: the list has no items", reason="decode")
        return page

    def watch(self, path: str, query: dict[str, Any], stopped: threading.Event) -> WatchStream:
        """
        Open a watch; read its events with L{WatchStream.events}.

        @param query: the watch's parameters; its C{timeoutSeconds} bounds
            how long the server keeps the stream, and a stream silent for a
            minute longer than that is taken for dead.
        """
        timeout = float(query.get("timeoutSeconds", 300)) + 60.0
        return WatchStream(self._get(path, {**query, "watch": "true"}, timeout), path, stopped)


class WatchStream:
    """
    An open watch: one JSON event per line, in chunks of any size.

    L{close} may be called from another thread, to unblock a reader.
    """

    def __init__(self, response: Any, path: str, stopped: threading.Event) -> None:
        self._response = response
        self._path = path
        self._stopped = stopped

    def events(self) -> Iterator[dict[str, Any]]:
        """
        Every event until the server ends the stream.

        @raise KubeError: when the stream breaks (a cut in the middle of an
            event, a line that is not JSON or too long).
        """
        pending = b""
        try:
            for chunk in self._response.stream(65536):
                pending += chunk
                while True:
                    end = pending.find(b"\n")
                    if end < 0:
                        break
                    line, pending = pending[:end], pending[end + 1 :]
                    if line.strip():
                        yield self._event(line)
                if len(pending) > MAX_EVENT_LINE:
                    raise KubeError(f"{self._path}: a watch event over 8 MiB", reason="decode")
        except KubeError:
            raise
        except Exception as e:  # urllib3, http.client and ssl raise several kinds
            if self._stopped.is_set():
                return
            raise KubeError(
                f"{self._path}: the watch stream broke: {_cause(e)}", reason="stream"
            ) from None
        finally:
            self.close()
        if pending.strip():
            if self._stopped.is_set():
                return
            raise KubeError(
                f"{self._path}: the watch stream ended inside an event", reason="stream"
            )

    def _event(self, line: bytes) -> dict[str, Any]:
        try:
            event = json.loads(line)
        except ValueError:
            raise KubeError(f"{self._path}: a watch event is not JSON", reason="decode") from None
        if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
            raise KubeError(f"{self._path}: a watch event without an object", reason="decode")
        return event

    def close(self) -> None:
        """Drop the connection (from any thread)."""
        try:
            self._response.close()
        except Exception:  # already closed, or closing a broken socket
            pass


def _cause(error: BaseException) -> str:
    """The innermost reason of a urllib3 error, in one line."""
    reason = getattr(error, "reason", None)
    while isinstance(reason, BaseException) and getattr(reason, "reason", None) is not None:
        reason = reason.reason
    text = str(reason if reason is not None else error)
    return text.splitlines()[0] if text else type(error).__name__


def _status_error(response: Any, path: str) -> KubeError:
    """The error of a non-200 answer, from its C{Status} body where it has one."""
    try:
        body = response.read(64 * 1024)
    except Exception:  # the body is only for the message
        body = b""
    finally:
        response.release_conn()
    reason, message = "", ""
    try:
        status = json.loads(body)
        if isinstance(status, dict):
            reason = str(status.get("reason") or "")
            message = str(status.get("message") or "")
    except ValueError:
        pass
    retry_after = None
    header = response.headers.get("Retry-After")
    if header is not None:
        try:
            retry_after = max(0.0, min(float(header), 300.0))
        except ValueError:
            retry_after = None
    text = f"{path}: {response.status} {reason or response.reason or ''}".rstrip()
    if message:
        text += f": {message.splitlines()[0][:300]}"
    return KubeError(text, response.status, reason, retry_after)
