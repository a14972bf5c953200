# -*- test-case-name: tests.unit.sources.test_reflector -*-
"""
List, then watch, one kind of object, as client-go's reflector does.

The loop and its states are client-go's (C{tools/cache/reflector.go}),
written again for a thread that hands what it reads to the reactor:
  - B{list} page by page (C{limit}/C{continue}); every page is a snapshot of
    the same C{resourceVersion}, and the whole list replaces what was known
    of the kind (so what was deleted while we were not watching goes too);
  - B{watch} from the list's C{resourceVersion}, with bookmarks, for a
    random 5 to 10 minutes (C{timeoutSeconds}), so that a fleet of proxies
    does not reconnect at once;
  - when a watch ends or breaks, B{watch again} from the last
    C{resourceVersion} seen (an event's or a bookmark's): nothing is listed
    again and nothing is lost;
  - B{relist} when the server says that version is gone (410, as a status
    or as an C{ERROR} event);
  - B{back off} with jitter on any other error (the server down, 429 with
    its C{Retry-After}, 5xx, 401/403), from 0.8 s up to 30 s, and start
    again from where it was.
What was served keeps serving through all of it: a failed list replaces
nothing.

Objects are read into meshdns's model in this thread (the reader is pure),
so the reactor thread only swaps small, ready objects in.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from meshdns_plugin.sources.kubeclient import KubeError, WatchStream

_T = TypeVar("_T")

#: The bounds of the watch's C{timeoutSeconds}: client-go's minimum watch
#: timeout and twice it.
WATCH_TIMEOUT_RANGE = (300, 600)
#: Backoff bounds in seconds (client-go: 800 ms, capped at 30 s).
BACKOFF_FIRST, BACKOFF_MAX = 0.8, 30.0


@dataclass(frozen=True)
class Resource:
    """
    One kind of object at one place: a cluster-wide or one namespace's
    collection of the API.

    @ivar kind: the object kind (C{Service}); list items carry none, so it
        is set on each one before it is read.
    @ivar api_version: C{v1}, C{discovery.k8s.io/v1}, ...
    @ivar plural: the collection's name in paths (C{services}).
    @ivar namespace: L{None}: every namespace.
    """

    kind: str
    api_version: str
    plural: str
    namespace: str | None = None

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def path(self) -> str:
        base = "/api/v1" if "/" not in self.api_version else f"/apis/{self.api_version}"
        if self.namespace is not None:
            base += f"/namespaces/{self.namespace}"
        return f"{base}/{self.plural}"

    def __str__(self) -> str:
        where = f" in {self.namespace}" if self.namespace else ""
        return f"{self.plural}.{self.group or 'core'}{where}"


class Client(Protocol):
    """What a reflector needs of L{meshdns_plugin.sources.kubeclient.ApiClient}."""

    def list_page(self, path: str, query: dict[str, Any]) -> dict[str, Any]: ...

    def watch(self, path: str, query: dict[str, Any], stopped: threading.Event) -> WatchStream: ...

    def reload_credentials(self) -> None: ...


class Sink(Protocol):
    """
    Where a reflector's news go. Each method is called in the reactor
    thread (through C{callFromThread}).
    """

    def listed(self, resource: Resource, objects: list[Any], version: str) -> None:
        """A whole list: C{objects} (as the reader made them) replace the kind's."""

    def changed(self, resource: Resource, kind: str, read: Any, version: str) -> None:
        """One watch event (C{ADDED}, C{MODIFIED} or C{DELETED}), read."""

    def bookmarked(self, resource: Resource, version: str) -> None:
        """A bookmark, or a watch opened: C{version} is where we are."""

    def failed(self, resource: Resource, error: KubeError, retry_in: float) -> None:
        """A request failed; the reflector tries again in C{retry_in} seconds."""


class Backoff:
    """Exponential backoff with jitter, as client-go's reflector backs off."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._next = BACKOFF_FIRST

    def reset(self) -> None:
        self._next = BACKOFF_FIRST

    def delay(self, at_least: float | None = None) -> float:
        """The next wait: doubling, capped, each scaled by a random 0.5 to 1.5."""
        delay = self._next * self._rng.uniform(0.5, 1.5)
        self._next = min(self._next * 2, BACKOFF_MAX)
        return max(delay, at_least or 0.0)


class Reflector:
    """
    The list-and-watch loop of one L{Resource}; L{run} is a thread's body.

    @ivar stopped: set it (and L{stop}) to end the loop.
    """

    def __init__(
        self,
        client: Client,
        resource: Resource,
        read: Callable[[dict[str, Any]], Any],
        sink: Sink,
        hand_over: Callable[..., None],
        page_size: int = 500,
        rng: random.Random | None = None,
    ) -> None:
        """
        @param read: turns one API object (a dict, C{kind} and C{apiVersion}
            set) into what the sink takes; pure, so it runs in this thread.
        @param hand_over: calls a function in the reactor thread
            (C{reactor.callFromThread}).
        """
        self.client = client
        self.resource = resource
        self.read = read
        self.sink = sink
        self.hand_over = hand_over
        self.page_size = page_size
        self.stopped = threading.Event()
        self._rng = rng or random.Random()
        self._backoff = Backoff(self._rng)
        self._stream: WatchStream | None = None
        #: Watch events and bookmarks read so far (a watch that reads none
        #: is not opened again at once).
        self._seen = 0

    def stop(self) -> None:
        """End the loop: a blocked watch is unblocked by closing its stream."""
        self.stopped.set()
        stream = self._stream
        if stream is not None:
            stream.close()

    def run(self) -> None:
        version: str | None = None
        while not self.stopped.is_set():
            try:
                if version is None:
                    version = self.list()
                seen = self._seen
                version = self.watch(version)
                if self._seen == seen:
                    # A watch that ended with nothing in it: not at once
                    # again, or a server that ends every watch is hammered.
                    self.stopped.wait(self._backoff.delay())
                else:
                    self._backoff.reset()
            except KubeError as error:
                if self.stopped.is_set():
                    return
                if error.gone:
                    # Too old to resume from: list again, at once.
                    version = None
                    self.hand_over(self.sink.failed, self.resource, error, 0.0)
                    continue
                if error.status == 401:
                    self._reload_credentials()
                delay = self._backoff.delay(error.retry_after)
                self.hand_over(self.sink.failed, self.resource, error, delay)
                self.stopped.wait(delay)

    def _reload_credentials(self) -> None:
        try:
            self.client.reload_credentials()
        except KubeError as error:
            self.hand_over(self.sink.failed, self.resource, error, 0.0)

    def list(self) -> str:
        """
        List every page; hand the whole list over at once.

        @return: the list's C{resourceVersion}, to watch from.
        """
        resource = self.resource
        objects: list[Any] = []
        query: dict[str, Any] = {"limit": self.page_size}
        while True:
            page = _as("list", self.client.list_page, resource.path, query)
            for item in page.get("items") or ():
                if isinstance(item, dict):
                    item["kind"], item["apiVersion"] = resource.kind, resource.api_version
                    objects.append(self.read(item))
            metadata = page.get("metadata") if isinstance(page.get("metadata"), dict) else {}
            version = str(metadata.get("resourceVersion") or "")
            following = metadata.get("continue")
            if not following:
                break
            query = {"limit": self.page_size, "continue": following}
        self.hand_over(self.sink.listed, resource, objects, version)
        return version

    def watch(self, version: str) -> str:
        """
        Watch from C{version} until the stream ends.

        @return: the last C{resourceVersion} seen, to watch again from.
        @raise KubeError: on a broken stream, an C{ERROR} event (410 Gone
            among them) or a failed request.
        """
        resource = self.resource
        query = {
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": self._rng.randint(*WATCH_TIMEOUT_RANGE),
        }
        self._stream = stream = _as("watch", self.client.watch, resource.path, query, self.stopped)
        self.hand_over(self.sink.bookmarked, resource, version)
        self._backoff.reset()
        try:
            for event in _events(stream):
                self._seen += 1
                kind, obj = event.get("type"), event["object"]
                if kind == "ERROR":
                    raise _status_event(resource, obj)
                metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
                seen = str(metadata.get("resourceVersion") or "")
                if kind == "BOOKMARK":
                    if seen:
                        version = seen
                        self.hand_over(self.sink.bookmarked, resource, version)
                    continue
                if kind not in ("ADDED", "MODIFIED", "DELETED"):
                    continue
                obj["kind"], obj["apiVersion"] = resource.kind, resource.api_version
                if seen:
                    version = seen
                self.hand_over(self.sink.changed, resource, kind, self.read(obj), version)
        finally:
            self._stream = None
        return version


def _as(verb: str, request: Callable[..., _T], *args: Any) -> _T:
    """Make a request; a failure says which verb failed (for RBAC's messages)."""
    try:
        return request(*args)
    except KubeError as error:
        error.verb = verb
        raise


def _events(stream: WatchStream) -> Iterator[dict[str, Any]]:
    try:
        yield from stream.events()
    except KubeError as error:
        error.verb = "watch"
        raise


def _status_event(resource: Resource, status: dict[str, Any]) -> KubeError:
    """The error an C{ERROR} event's C{Status} object stands for."""
    code = status.get("code")
    reason = str(status.get("reason") or "")
    message = str(status.get("message") or "").splitlines()[0:1]
    text = f"{resource.path}: watch error {code} {reason}".rstrip()
    if message:
        text += f": {message[0][:300]}"
    error = KubeError(text, code if isinstance(code, int) else None, reason)
    error.verb = "watch"
    return error
