# -*- test-case-name: tests.unit.test_kubeapi -*-
"""
The object store behind the test Kubernetes API server: what etcd and the
API server's storage layer do for it, with the semantics the Kubernetes "API
concepts" page documents.

One global revision counts every change (etcd's revision); each object's
C{metadata.resourceVersion} is the revision of its last change. Objects are
kept as serialised JSON without C{kind} and C{apiVersion} (the server adds
them per request), so that lists of tens of thousands of objects are joins of
bytes. Every change is also kept as an event, per resource, until
L{Store.compact}; watches replay them. A list page belongs to a snapshot taken
at one revision; the following pages (the C{continue} token names the
revision) are served from the same snapshot, as a real server serves them from
etcd at that revision, until compaction expires them (410 Gone).
"""

from __future__ import annotations

import base64
import binascii
import bisect
import json
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tests.support.kubeobjects import ResourceType

#: How many list snapshots per resource stay available to continue tokens.
SNAPSHOTS_KEPT = 32


class APIError(Exception):
    """A request the real server would refuse: its HTTP code, C{Status} reason and message."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details


def expired(message: str) -> APIError:
    return APIError(410, "Expired", message)


@dataclass(frozen=True)
class Event:
    """One change: its revision, C{ADDED}/C{MODIFIED}/C{DELETED}, the namespace and the object."""

    revision: int
    type: str
    namespace: str
    body: bytes


@dataclass(frozen=True)
class Page:
    """
    One list answer: the snapshot's revision, the objects (serialised, without
    C{kind}/C{apiVersion}), and when more follow, the C{continue} token and how
    many objects remain.
    """

    revision: int
    bodies: list[bytes]
    token: str = ""
    remaining: int = 0


@dataclass
class _Snapshot:
    valid_from: int
    keys: list[str]
    bodies: list[bytes]


@dataclass
class _Resource:
    type: ResourceType
    bodies: dict[str, bytes] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    event_revisions: list[int] = field(default_factory=list)
    snapshots: list[_Snapshot] = field(default_factory=list)
    last_change: int = 0


def render(body: bytes, kind: str, api_version: str) -> bytes:
    """An object with C{kind} and C{apiVersion} first, as the real server writes them."""
    head = b'{"kind":"%s","apiVersion":"%s"' % (kind.encode(), api_version.encode())
    return head + (b"," + body[1:] if len(body) > 2 else b"}")


def _timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Store:
    """
    The served objects, their history, and the list snapshots.

    @ivar changed: Notified after every change; watches wait on it.
    @ivar revision: The newest revision (etcd's); it starts at 1, as a fresh etcd does.
    @ivar compacted: Events and snapshots before this revision are gone.
    """

    def __init__(self, types: Iterable[ResourceType]) -> None:
        self.changed = threading.Condition()
        self.revision = 1
        self.compacted = 1
        self._resources = {t.plural: _Resource(t) for t in types}
        self._kinds = {(r.type.group, r.type.kind): r.type for r in self._resources.values()}

    def resource(self, plural: str) -> ResourceType:
        return self._resources[plural].type

    def _of(self, obj: dict[str, Any]) -> tuple[_Resource, str]:
        group, _, version = obj["apiVersion"].rpartition("/")
        rtype = self._kinds.get((group, obj["kind"]))
        if rtype is None or version not in rtype.versions:
            raise ValueError(f"{obj['apiVersion']} {obj['kind']} is not served")
        metadata = obj["metadata"]
        return self._resources[rtype.plural], f"{metadata['namespace']}/{metadata['name']}"

    def _serialise(self, obj: dict[str, Any], old: dict[str, Any] | None,
                   custom: bool) -> bytes:
        given = dict(obj["metadata"])
        metadata = {"name": given.pop("name")}
        for name in ("generateName", "namespace"):
            if name in given:
                metadata[name] = given.pop(name)
        metadata["uid"] = old["uid"] if old else str(uuid.uuid4())
        metadata["resourceVersion"] = str(self.revision)
        if custom:
            metadata["generation"] = old["generation"] + 1 if old else 1
        metadata["creationTimestamp"] = old["creationTimestamp"] if old else _timestamp()
        given.pop("resourceVersion", None)
        metadata.update(given)
        rest = {k: v for k, v in obj.items() if k not in ("kind", "apiVersion", "metadata")}
        return json.dumps({"metadata": metadata, **rest}, separators=(",", ":")).encode()

    def _record(self, resource: _Resource, kind: str, namespace: str, body: bytes) -> None:
        resource.events.append(Event(self.revision, kind, namespace, body))
        resource.event_revisions.append(self.revision)
        resource.last_change = self.revision

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Store a new object, as the server stores it; return it so."""
        with self.changed:
            body = self._add(obj)
            self.changed.notify_all()
        return json.loads(body)

    def bulk_create(self, objects: Iterable[dict[str, Any]]) -> int:
        """
        Store many new objects, one revision each, under one lock and one
        notification: tens of thousands load in about a second. Return how many.
        """
        count = 0
        with self.changed:
            for obj in objects:
                self._add(obj)
                count += 1
            self.changed.notify_all()
        return count

    def _add(self, obj: dict[str, Any]) -> bytes:
        """Store a new object (lock held)."""
        obj = {**obj, "metadata": {"namespace": "default", **obj["metadata"]}}
        resource, key = self._of(obj)
        if key in resource.bodies:
            raise ValueError(f"{resource.type.plural} {key} already exists")
        self.revision += 1
        body = self._serialise(obj, None, resource.type.custom)
        resource.bodies[key] = body
        self._record(resource, "ADDED", obj["metadata"]["namespace"], body)
        return body

    def update(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Replace a stored object (its uid and creation time stay); return it as stored."""
        with self.changed:
            obj = {**obj, "metadata": {"namespace": "default", **obj["metadata"]}}
            resource, key = self._of(obj)
            if key not in resource.bodies:
                raise KeyError(f"{resource.type.plural} {key} not found")
            self.revision += 1
            old = json.loads(resource.bodies[key])["metadata"]
            body = self._serialise(obj, old, resource.type.custom)
            resource.bodies[key] = body
            self._record(resource, "MODIFIED", obj["metadata"]["namespace"], body)
            self.changed.notify_all()
        return json.loads(body)

    def delete(self, plural: str, namespace: str, name: str) -> None:
        """
        Remove an object. Its C{DELETED} event carries the deletion's revision
        as C{resourceVersion}, as the real server's does.
        """
        with self.changed:
            resource = self._resources[plural]
            body = resource.bodies.pop(f"{namespace}/{name}", None)
            if body is None:
                raise KeyError(f"{plural} {namespace}/{name} not found")
            self.revision += 1
            obj = json.loads(body)
            obj["metadata"]["resourceVersion"] = str(self.revision)
            self._record(resource, "DELETED", namespace,
                         json.dumps(obj, separators=(",", ":")).encode())
            self.changed.notify_all()

    def get(self, plural: str, namespace: str, name: str) -> bytes:
        with self.changed:
            body = self._resources[plural].bodies.get(f"{namespace}/{name}")
        if body is None:
            raise APIError(404, "NotFound", f'{plural} "{name}" not found',
                           {"name": name, "kind": plural})
        return body

    def compact(self) -> None:
        """Forget all history up to now: older revisions and continue tokens expire (410)."""
        with self.changed:
            self.compacted = self.revision
            for resource in self._resources.values():
                resource.events.clear()
                resource.event_revisions.clear()
                resource.snapshots.clear()
            self.changed.notify_all()

    def _snapshot(self, resource: _Resource, revision: int) -> _Snapshot:
        """The resource's objects as they were at C{revision}, if still known (lock held)."""
        if revision < self.compacted:
            raise expired(f"too old resource version: {revision} ({self.compacted})")
        if not resource.snapshots or resource.snapshots[-1].valid_from != resource.last_change:
            keys = sorted(resource.bodies)
            resource.snapshots.append(
                _Snapshot(resource.last_change, keys, [resource.bodies[k] for k in keys]))
            del resource.snapshots[:-SNAPSHOTS_KEPT]
        changes = resource.event_revisions
        for snapshot in reversed(resource.snapshots):
            if snapshot.valid_from <= revision:
                unchanged = bisect.bisect_right(changes, revision) == bisect.bisect_right(
                    changes, snapshot.valid_from)
                if unchanged and revision <= self.revision:
                    return snapshot
                break
        raise expired(f"too old resource version: {revision} ({self.compacted})")

    def list(self, plural: str, namespace: str = "", limit: int = 0, token: str = "",
             resource_version: str = "", match: str = "") -> Page:
        """
        One page of a list, as the "API concepts" page's C{resourceVersion}
        table says: unset or C{0} (any) serve the newest state; C{NotOlderThan}
        (or a version without a match) too, unless the version is in the future
        (504, as the real server answers after waiting); C{Exact} the state at
        that revision, or 410 when compacted. A C{continue} token serves the
        next page of its snapshot, or 410 once expired.
        """
        if token and resource_version:
            raise APIError(400, "BadRequest", "specifying resource version is not allowed "
                           "when using continue")
        start = ""
        with self.changed:
            revision = self.revision
            if token:
                revision, start = _decode_token(token)
            elif match == "Exact":
                revision = _revision(resource_version)
            elif resource_version not in ("", "0") and _revision(resource_version) > revision:
                raise APIError(504, "Timeout", f"Too large resource version: "
                               f"{resource_version}, current: {revision}",
                               {"causes": [{"reason": "ResourceVersionTooLarge",
                                            "message": "Too large resource version"}],
                                "retryAfterSeconds": 1})
            try:
                snapshot = self._snapshot(self._resources[plural], revision)
            except APIError as error:
                if token:
                    raise expired(CONTINUE_EXPIRED) from error
                raise
        keys = snapshot.keys
        low, high = 0, len(keys)
        if namespace:
            low = bisect.bisect_left(keys, namespace + "/")
            high = bisect.bisect_left(keys, namespace + "0")  # "0" follows "/"
        low = max(low, bisect.bisect_left(keys, start)) if start else low
        end = min(high, low + limit) if limit else high
        page = Page(revision, snapshot.bodies[low:end])
        if end < high:
            page = Page(revision, page.bodies, _encode_token(revision, keys[end - 1] + "\0"),
                        high - end)
        return page

    def watch_start(self, plural: str, namespace: str, resource_version: str
                    ) -> tuple[int, list[Event]]:
        """
        Where a watch starts: from a given revision, nothing replayed here (the
        events after it follow); unset or C{0}, the current objects as
        synthetic C{ADDED} events, then what changes after the current revision.
        """
        if resource_version not in ("", "0"):
            return _revision(resource_version), []
        with self.changed:
            page = self.list(plural, namespace)
        return page.revision, [Event(page.revision, "ADDED", namespace, body)
                               for body in page.bodies]

    def events_after(self, plural: str, namespace: str, after: int, timeout: float
                     ) -> tuple[list[Event], int]:
        """
        The resource's events after revision C{after} (in C{namespace} if
        given), waiting up to C{timeout} seconds for one; and the revision they
        bring the watch to. Raise 410 once C{after} is older than the history.
        """
        with self.changed:
            resource = self._resources[plural]
            for attempt in (1, 2):
                if after < self.compacted:
                    raise expired(f"too old resource version: {after} ({self.compacted})")
                index = bisect.bisect_right(resource.event_revisions, after)
                if index < len(resource.events) or attempt == 2 or timeout <= 0:
                    break
                self.changed.wait(timeout)
            events = [event for event in resource.events[index:]
                      if not namespace or event.namespace == namespace]
            return events, self.revision


CONTINUE_EXPIRED = (
    "The provided continue parameter is too old to display a consistent list result. You "
    "can start a new list without the continue parameter, or use the continue token in "
    "this response to retrieve the remainder of the results. Continuing with the provided "
    "token results in an inconsistent list - objects that were created, modified, or "
    "deleted between the time the first chunk was returned and now may show up in the list."
)


def _revision(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise APIError(400, "BadRequest",
                       f'resourceVersion: Invalid value: "{text}": must be a number') from None


def _encode_token(revision: int, start: str) -> str:
    """A continue token as the real server makes one: base64 of its version, revision and key."""
    text = json.dumps({"v": "meta.k8s.io/v1", "rv": revision, "start": start})
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _decode_token(token: str) -> tuple[int, str]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        return int(data["rv"]), str(data["start"])
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise APIError(400, "BadRequest", f"continue key is not valid: {token}") from None
