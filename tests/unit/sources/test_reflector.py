"""
Tests for L{meshdns_plugin.sources.reflector}: the list-and-watch loop as
client-go's reflector runs it and the Kubernetes API concepts page
describes it, driven by a scripted client: pages joined with C{continue},
a watch from the list's C{resourceVersion} with bookmarks, resuming from the
last version seen, relisting on 410 Gone (as a status and as an C{ERROR}
event), backing off on errors with C{Retry-After} honoured, and re-reading
credentials after a 401.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from typing import Any

from meshdns_plugin.sources.kubeclient import KubeError
from meshdns_plugin.sources.reflector import BACKOFF_MAX, Backoff, Reflector, Resource

SERVICES = Resource("Service", "v1", "services")


def item(name: str, version: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": version}}


class Stream:
    def __init__(self, events: list[Any]) -> None:
        self._events = events

    def events(self) -> Iterator[dict[str, Any]]:
        for event in self._events:
            if isinstance(event, KubeError):
                raise event
            yield event

    def close(self) -> None:
        pass


class ScriptedClient:
    """Answers each request with the next step of its script; records requests."""

    def __init__(self, script: list[Any], reflector_box: list[Reflector]) -> None:
        self.script = script
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.reloads = 0
        self._box = reflector_box

    def _next(self, verb: str, query: dict[str, Any]) -> Any:
        self.requests.append((verb, dict(query)))
        if not self.script:
            self._box[0].stopped.set()
            raise KubeError("script over", reason="network")
        step = self.script.pop(0)
        if isinstance(step, KubeError):
            raise step
        return step

    def list_page(self, path: str, query: dict[str, Any]) -> dict[str, Any]:
        return self._next("list", query)

    def watch(self, path: str, query: dict[str, Any], stopped: threading.Event) -> Stream:
        return Stream(self._next("watch", query))

    def reload_credentials(self) -> None:
        self.reloads += 1


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def listed(self, resource: Resource, objects: list[Any], version: str) -> None:
        self.calls.append(("listed", [o["metadata"]["name"] for o in objects], version))

    def changed(self, resource: Resource, kind: str, read: Any, version: str) -> None:
        self.calls.append(("changed", kind, read["metadata"]["name"], version))

    def bookmarked(self, resource: Resource, version: str) -> None:
        self.calls.append(("bookmarked", version))

    def failed(self, resource: Resource, error: KubeError, retry_in: float) -> None:
        self.calls.append(("failed", error.status, error.reason, retry_in, error.verb))


def run(script: list[Any]) -> tuple[ScriptedClient, Recorder, list[float]]:
    box: list[Reflector] = []
    client = ScriptedClient(script, box)
    sink = Recorder()
    reflector = Reflector(
        client, SERVICES, lambda raw: raw, sink, lambda f, *a: f(*a), 2, random.Random(1)
    )
    box.append(reflector)
    waits: list[float] = []
    reflector.stopped.wait = lambda delay: waits.append(delay)  # type: ignore[method-assign]
    reflector.run()
    return client, sink, waits


def page(names: list[str], version: str, following: str = "") -> dict[str, Any]:
    metadata = {"resourceVersion": version, **({"continue": following} if following else {})}
    return {"metadata": metadata, "items": [item(n, "1") for n in names]}


def test_list_pages_then_watch_from_the_lists_version() -> None:
    """
    Pages are joined with C{continue} and handed over whole; the watch
    starts from the list's resourceVersion, with bookmarks asked for.
    """
    client, sink, _ = run(
        [
            page(["a", "b"], "10", following="tok"),
            page(["c"], "10"),
            [{"type": "ADDED", "object": item("d", "11")}],
        ]
    )
    assert client.requests[0] == ("list", {"limit": 2})
    assert client.requests[1] == ("list", {"limit": 2, "continue": "tok"})
    verb, query = client.requests[2]
    assert verb == "watch"
    assert query["resourceVersion"] == "10"
    assert query["allowWatchBookmarks"] == "true"
    assert 300 <= query["timeoutSeconds"] <= 600
    assert sink.calls[0] == ("listed", ["a", "b", "c"], "10")
    assert ("changed", "ADDED", "d", "11") in sink.calls


def test_resume_from_the_last_version_seen_without_listing_again() -> None:
    """A watch that ends is opened again from its last event's or bookmark's version."""
    client, sink, _ = run(
        [
            page(["a"], "10"),
            [
                {"type": "MODIFIED", "object": item("a", "12")},
                {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "15"}}},
            ],
            [KubeError("cut", reason="network")],
        ]
    )
    verbs = [verb for verb, _ in client.requests]
    assert verbs[:3] == ["list", "watch", "watch"]
    assert client.requests[2][1]["resourceVersion"] == "15"
    assert ("bookmarked", "15") in sink.calls


def test_gone_relists_at_once() -> None:
    """410, as an ERROR event, means list again, without backing off."""
    client, sink, waits = run(
        [
            page(["a"], "10"),
            [{"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}],
            page(["b"], "20"),
        ]
    )
    assert [verb for verb, _ in client.requests][:3] == ["list", "watch", "list"]
    assert ("failed", 410, "Expired", 0.0, "watch") in sink.calls
    assert ("listed", ["b"], "20") in sink.calls
    assert waits == []


def test_errors_back_off_with_retry_after_and_401_reloads_credentials() -> None:
    client, sink, waits = run(
        [
            KubeError("down", reason="network"),
            KubeError("slow down", 429, "TooManyRequests", retry_after=7.0),
            KubeError("who", 401, "Unauthorized"),
            page(["a"], "5"),
        ]
    )
    assert waits[0] > 0
    assert waits[1] >= 7.0
    assert client.reloads == 1
    assert ("listed", ["a"], "5") in sink.calls
    failures = [c for c in sink.calls if c[0] == "failed"]
    assert [f[1] for f in failures[:3]] == [None, 429, 401]
    assert all(f[4] == "list" for f in failures[:3])


def test_backoff_doubles_with_jitter_up_to_its_cap() -> None:
    backoff = Backoff(random.Random(3))
    delays = [backoff.delay() for _ in range(12)]
    assert 0.4 <= delays[0] <= 1.2
    assert delays[3] > delays[0]
    assert max(delays) <= BACKOFF_MAX * 1.5
    backoff.reset()
    assert backoff.delay() <= 1.2


def test_a_watch_that_ends_empty_is_not_opened_again_at_once() -> None:
    """A server that ends every watch with nothing in it is not asked in a tight loop."""
    client, _, waits = run([page(["a"], "10"), [], [], []])
    assert [verb for verb, _ in client.requests][:4] == ["list", "watch", "watch", "watch"]
    # A backoff's first wait each time (the open watch resets it), not none.
    assert len(waits) >= 3 and all(w >= 0.4 for w in waits[:3])
