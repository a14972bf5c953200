"""
The test Kubernetes API server (L{tests.support.kubeapi}) answers as the
Kubernetes "API concepts" page says a real one does: paged lists are
snapshots at one resourceVersion, watches replay from a resourceVersion, send
bookmarks, end after C{timeoutSeconds}, and report 410 Expired once the
history is compacted; and its injected faults look like the real server's.
Checked over HTTPS with C{http.client}, and with the official C{kubernetes}
client the way meshdns's source will use it.
"""

from __future__ import annotations

import http.client
import json
import queue
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from tests.support import kubeobjects
from tests.support.kubeapi import DEFAULT_TOKEN, DEFAULT_USER, FakeKubeAPI


@pytest.fixture
def api() -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI(bookmark_interval=0.2) as server:
        yield server


def connect(api: FakeKubeAPI, timeout: float = 10.0) -> http.client.HTTPSConnection:
    context = ssl.create_default_context(cafile=str(api.ca_path))
    return http.client.HTTPSConnection(api.host, api.port, context=context, timeout=timeout)


def get(api: FakeKubeAPI, path: str, token: str | None = DEFAULT_TOKEN,
        headers: dict[str, str] | None = None) -> tuple[int, http.client.HTTPMessage, Any]:
    connection = connect(api)
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    connection.request("GET", path, headers={**auth, **(headers or {})})
    response = connection.getresponse()
    body = json.loads(response.read())
    connection.close()
    return response.status, response.headers, body


def open_watch(api: FakeKubeAPI, path: str) -> http.client.HTTPResponse:
    connection = connect(api)
    connection.request("GET", path, headers={"Authorization": f"Bearer {DEFAULT_TOKEN}"})
    response = connection.getresponse()
    assert response.status == 200
    assert response.headers["Transfer-Encoding"] == "chunked"
    return response


def read_stream(response: http.client.HTTPResponse) -> tuple[list[dict], bytes, bool]:
    """
    Everything a watch sends until it ends: the complete events, the bytes
    after the last newline, and whether it ended cleanly (chunked terminator).
    """
    data, clean = b"", True
    try:
        while chunk := response.read1(65536):
            data += chunk
    except (http.client.IncompleteRead, OSError):
        clean = False
    *lines, rest = data.split(b"\n")
    return [json.loads(line) for line in lines], rest, clean


def names(items: list[dict]) -> list[str]:
    return [item["metadata"]["name"] for item in items]


def services(api: FakeKubeAPI, count: int, namespace: str = "ns1") -> None:
    api.bulk_create([kubeobjects.service(namespace, f"s{i}", (f"10.96.0.{i + 1}",))
                     for i in range(count)])


def test_list_pages_are_one_snapshot(api: FakeKubeAPI) -> None:
    services(api, 5)
    status, _, first = get(api, "/api/v1/services?limit=2")
    assert status == 200
    assert first["kind"] == "ServiceList" and first["apiVersion"] == "v1"
    revision = first["metadata"]["resourceVersion"]
    assert first["metadata"]["remainingItemCount"] == 3
    assert all("kind" not in item and "apiVersion" not in item for item in first["items"])
    api.create(kubeobjects.service("ns1", "s00", ("10.96.1.1",)))
    api.delete("Service", "ns1", "s3")
    pages = [first]
    while token := pages[-1]["metadata"].get("continue"):
        pages.append(get(api, f"/api/v1/services?limit=2&continue={token}")[2])
    assert [page["metadata"]["resourceVersion"] for page in pages] == [revision] * 3
    assert [names(page["items"]) for page in pages] == [["s0", "s1"], ["s2", "s3"], ["s4"]]
    fresh = get(api, "/api/v1/services")[2]
    assert names(fresh["items"]) == ["s0", "s00", "s1", "s2", "s4"]
    assert "continue" not in fresh["metadata"]
    assert int(fresh["metadata"]["resourceVersion"]) == int(revision) + 2


def test_continue_expires_after_compaction(api: FakeKubeAPI) -> None:
    services(api, 3)
    token = get(api, "/api/v1/services?limit=1")[2]["metadata"]["continue"]
    api.create(kubeobjects.service("ns1", "later", ("10.96.1.1",)))
    api.compact()
    status, _, body = get(api, f"/api/v1/services?limit=1&continue={token}")
    assert (status, body["kind"], body["reason"], body["code"]) == (410, "Status", "Expired", 410)
    assert body["message"].startswith("The provided continue parameter is too old")


def test_exact_list_serves_an_older_revision_until_compacted(api: FakeKubeAPI) -> None:
    services(api, 2)
    revision = get(api, "/api/v1/services")[2]["metadata"]["resourceVersion"]
    api.create(kubeobjects.service("ns1", "s9", ("10.96.0.9",)))
    path = f"/api/v1/services?resourceVersion={revision}&resourceVersionMatch=Exact"
    status, _, old = get(api, path)
    assert (status, names(old["items"]), old["metadata"]["resourceVersion"]) == (
        200, ["s0", "s1"], revision)
    ahead = int(revision) + 5
    status, _, body = get(api, f"/api/v1/services?resourceVersion={ahead}")
    assert (status, body["reason"]) == (504, "Timeout")
    api.compact()
    status, _, body = get(api, path)
    assert (status, body["reason"], body["message"]) == (
        410, "Expired", f"too old resource version: {revision} ({api.resource_version})")


def test_namespaced_list_and_get(api: FakeKubeAPI) -> None:
    services(api, 2, "ns1")
    services(api, 1, "ns1-b")
    services(api, 3, "ns2")
    assert names(get(api, "/api/v1/namespaces/ns1/services")[2]["items"]) == ["s0", "s1"]
    status, _, one = get(api, "/api/v1/namespaces/ns2/services/s2")
    assert (status, one["kind"], one["spec"]["clusterIP"]) == (200, "Service", "10.96.0.3")
    status, _, missing = get(api, "/api/v1/namespaces/ns2/services/nope")
    assert (status, missing["reason"], missing["message"]) == (
        404, "NotFound", 'services "nope" not found')


def test_custom_resource_items_keep_kind_and_requested_version(api: FakeKubeAPI) -> None:
    api.create(kubeobjects.service_entry("ns1", "ext", ("api.example.com",)))
    body = get(api, "/apis/networking.istio.io/v1beta1/serviceentries")[2]
    assert body["kind"] == "ServiceEntryList"
    [item] = body["items"]
    assert (item["kind"], item["apiVersion"]) == ("ServiceEntry", "networking.istio.io/v1beta1")
    assert item["metadata"]["generation"] == 1


def test_watch_replays_from_resource_version_and_times_out(api: FakeKubeAPI) -> None:
    start = api.resource_version
    api.create(kubeobjects.service("ns1", "a", ("10.96.0.1",)))
    api.create(kubeobjects.service("ns1", "b", ("10.96.0.2",)))
    api.update(kubeobjects.service("ns1", "a", ("10.96.0.1",), ports=(8080,)))
    api.delete("Service", "ns1", "b")
    begun = time.monotonic()
    response = open_watch(api, f"/api/v1/services?watch=1&resourceVersion={start + 1}"
                               "&timeoutSeconds=1")
    events, rest, clean = read_stream(response)
    assert 0.9 < time.monotonic() - begun < 3
    assert clean and rest == b""
    assert [(e["type"], e["object"]["metadata"]["name"],
             e["object"]["metadata"]["resourceVersion"]) for e in events] == [
        ("ADDED", "b", str(start + 2)), ("MODIFIED", "a", str(start + 3)),
        ("DELETED", "b", str(start + 4))]
    assert all(e["object"]["kind"] == "Service" and e["object"]["apiVersion"] == "v1"
               for e in events)
    assert events[1]["object"]["spec"]["ports"][0]["port"] == 8080


def lines_of(response: http.client.HTTPResponse) -> queue.Queue:
    """The watch's events, read in a thread as they arrive."""
    events: queue.Queue = queue.Queue()

    def read() -> None:
        try:
            while line := response.readline():
                events.put(json.loads(line))
        except (http.client.IncompleteRead, OSError, ValueError):
            pass
        events.put(None)

    threading.Thread(target=read, daemon=True).start()
    return events


def test_watch_streams_live_events_of_its_namespace(api: FakeKubeAPI) -> None:
    now = api.resource_version
    events = lines_of(open_watch(
        api, f"/api/v1/namespaces/ns1/services?watch=true&resourceVersion={now}"
             "&timeoutSeconds=5"))
    assert api.wait_for(lambda: api.open_watches == 1, 5)
    api.create(kubeobjects.service("ns2", "other", ("10.96.0.9",)))
    api.create(kubeobjects.service("ns1", "mine", ("10.96.0.1",)))
    event = events.get(timeout=5)
    assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "mine")


def test_watch_without_resource_version_starts_with_the_objects(api: FakeKubeAPI) -> None:
    services(api, 2)
    events, _, _ = read_stream(open_watch(api, "/api/v1/services?watch=1&timeoutSeconds=1"))
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "s0"), ("ADDED", "s1")]


@pytest.mark.parametrize("allowed", [True, False])
def test_bookmarks_only_when_allowed(api: FakeKubeAPI, allowed: bool) -> None:
    services(api, 1)
    now = api.resource_version
    flag = "&allowWatchBookmarks=true" if allowed else ""
    events, _, clean = read_stream(open_watch(
        api, f"/apis/discovery.k8s.io/v1/endpointslices?watch=1&resourceVersion={now}"
             f"&timeoutSeconds=1{flag}"))
    assert clean
    if not allowed:
        assert events == []
        return
    assert len(events) >= 3  # every 0.2 s for a second
    assert {e["type"] for e in events} == {"BOOKMARK"}
    assert events[0]["object"] == {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
                                   "metadata": {"resourceVersion": str(now)}}


def test_watch_from_compacted_revision_gets_410(api: FakeKubeAPI) -> None:
    services(api, 3)
    api.compact()
    events, rest, clean = read_stream(open_watch(api, "/api/v1/services?watch=1&resourceVersion=2"))
    assert clean and rest == b""
    [error] = events
    assert error["type"] == "ERROR"
    assert error["object"]["kind"] == "Status"
    assert (error["object"]["code"], error["object"]["reason"]) == (410, "Expired")
    assert error["object"]["message"] == f"too old resource version: 2 ({api.resource_version})"


def test_wrong_and_rotated_tokens_get_401(api: FakeKubeAPI) -> None:
    assert get(api, "/api/v1/pods", token="guess")[0] == 401
    assert get(api, "/api/v1/pods", token=None)[0] == 401
    api.rotate_token("new-token")
    status, _, body = get(api, "/api/v1/pods")
    assert (status, body["kind"], body["reason"], body["message"]) == (
        401, "Status", "Unauthorized", "Unauthorized")
    assert get(api, "/api/v1/pods", token="new-token")[0] == 200
    assert [(r.token, r.status) for r in api.requests] == [
        ("guess", 401), (None, 401), (DEFAULT_TOKEN, 401), ("new-token", 200)]


def test_injected_forbidden_is_rbac_shaped(api: FakeKubeAPI) -> None:
    api.fail("services", 403)
    status, _, body = get(api, "/api/v1/services")
    assert (status, body["reason"], body["details"]) == (403, "Forbidden", {"kind": "services"})
    assert body["message"] == (f'services is forbidden: User "{DEFAULT_USER}" cannot list resource '
                               '"services" in API group "" at the cluster scope')
    assert get(api, "/apis/networking.istio.io/v1/namespaces/ns1/serviceentries")[0] == 200
    api.fail("serviceentries", 403)
    body = get(api, "/apis/networking.istio.io/v1/namespaces/ns1/serviceentries?watch=1")[2]
    assert body["message"].endswith('cannot watch resource "serviceentries" in API group '
                                    '"networking.istio.io" in the namespace "ns1"')


@pytest.mark.parametrize(("code", "reason"), [
    (404, "NotFound"), (429, "TooManyRequests"), (500, "InternalError")])
def test_injected_failures_count_down(api: FakeKubeAPI, code: int, reason: str) -> None:
    api.fail("/apis/discovery.k8s.io/", code, count=2, retry_after=3 if code == 429 else None)
    for _ in range(2):
        status, headers, body = get(api, "/apis/discovery.k8s.io/v1/endpointslices")
        assert (status, body["kind"], body["status"], body["reason"], body["code"]) == (
            code, "Status", "Failure", reason, code)
        assert headers["Retry-After"] == ("3" if code == 429 else None)
    assert get(api, "/apis/discovery.k8s.io/v1/endpointslices")[0] == 200
    assert get(api, "/api/v1/services")[0] == 200
    assert [r.status for r in api.requests] == [code, code, 200, 200]


def test_clear_failures(api: FakeKubeAPI) -> None:
    api.fail("pods", 500)
    assert get(api, "/api/v1/pods")[0] == 500
    api.clear_failures()
    assert get(api, "/api/v1/pods")[0] == 200


@pytest.mark.parametrize("versions", [(), ("v1beta1",)])
def test_istio_crds_absent_or_one_version(versions: tuple[str, ...]) -> None:
    with FakeKubeAPI(istio=bool(versions), istio_versions=versions) as api:
        status, _, body = get(api, "/apis/networking.istio.io/v1/serviceentries")
        assert (status, body["reason"]) == (404, "NotFound")
        groups = [group["name"] for group in get(api, "/apis")[2]["groups"]]
        assert ("networking.istio.io" in groups) == bool(versions)
        assert get(api, "/apis/networking.istio.io/v1beta1/sidecars")[0] == (
            200 if versions else 404)


def test_discovery_names_resources_as_the_real_server(api: FakeKubeAPI) -> None:
    core = get(api, "/api/v1")[2]
    services_entry = next(r for r in core["resources"] if r["name"] == "services")
    assert services_entry["shortNames"] == ["svc"] and services_entry["kind"] == "Service"
    assert {"list", "watch", "get"} <= set(services_entry["verbs"])
    istio = get(api, "/apis/networking.istio.io/v1")[2]
    assert istio["groupVersion"] == "networking.istio.io/v1"
    assert {r["name"] for r in istio["resources"]} == {"serviceentries", "sidecars"}
    assert get(api, "/api")[2]["versions"] == ["v1"]


def test_stop_cuts_watches_and_start_serves_the_same_store(api: FakeKubeAPI) -> None:
    services(api, 2)
    port = api.port
    response = open_watch(api, f"/api/v1/services?watch=1&resourceVersion={api.resource_version}")
    idle = connect(api)
    idle.request("GET", "/version", headers={"Authorization": f"Bearer {DEFAULT_TOKEN}"})
    idle.getresponse().read()
    assert api.wait_for(lambda: api.open_watches == 1, 5)
    api.stop()
    assert read_stream(response)[2] is False
    assert api.wait_for(lambda: api.open_watches == 0, 5)
    with pytest.raises((http.client.HTTPException, OSError)):
        idle.request("GET", "/version", headers={"Authorization": f"Bearer {DEFAULT_TOKEN}"})
        idle.getresponse()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((api.host, port), timeout=2)
    api.start()
    assert api.port == port
    assert names(get(api, "/api/v1/services")[2]["items"]) == ["s0", "s1"]


def test_cut_watch_mid_event(api: FakeKubeAPI) -> None:
    services(api, 1)
    response = open_watch(api, "/api/v1/services?watch=1")
    assert api.wait_for(lambda: api.open_watches == 1, 5)
    assert api.cut_watches() == 1
    events, rest, clean = read_stream(response)
    assert [e["type"] for e in events] == ["ADDED"]
    assert not clean
    assert rest.startswith(b'{"type":"MODIFIED","object":{') and len(rest) > 10
    with pytest.raises(ValueError):
        json.loads(rest)
    assert api.open_watches == 0


def test_table_for_kubectl(api: FakeKubeAPI) -> None:
    api.create(kubeobjects.service("ns1", "web", ("10.96.0.7", "fd00::7")))
    accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
    table = get(api, "/api/v1/services", headers={"Accept": accept})[2]
    assert table["kind"] == "Table"
    assert [c["name"] for c in table["columnDefinitions"]][:5] == [
        "Name", "Type", "Cluster-IP", "External-IP", "Port(s)"]
    [row] = table["rows"]
    assert row["cells"][:5] == ["web", "ClusterIP", "10.96.0.7", "<none>", "80/TCP"]
    assert row["object"]["metadata"]["namespace"] == "ns1"


@pytest.mark.parametrize("seconds, age", [(5, "5s"), (150, "2m30s"), (900, "15m"),
                                          (3 * 3600 + 60, "3h1m"), (20 * 3600, "20h"),
                                          (5 * 86400, "5d"), (5 * 86400 + 7200, "5d2h"),
                                          (30 * 86400 + 7200, "30d")])
def test_human_age(seconds: int, age: str) -> None:
    assert kubeobjects.human_age(seconds) == age


def kubernetes_client(api: FakeKubeAPI, tmp_path: Path, **kubeconfig: Any
                      ) -> kubernetes.client.ApiClient:
    path = api.write_kubeconfig(tmp_path / "kubeconfig", **kubeconfig)
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(path),
                                       client_configuration=configuration)
    return kubernetes.client.ApiClient(configuration)


def call(client: kubernetes.client.ApiClient, path: str, **query: str) -> Any:
    """
    A raw GET, unread (the client's C{RESTResponse}; its C{response} is
    urllib3's, streamable), as C{kubernetes} 37's generated client makes one:
    C{param_serialize} adds the query and the bearer token, C{call_api} sends.
    """
    method, url, headers, _, _ = client.param_serialize(
        "GET", path, query_params=list(query.items()), auth_settings=["BearerToken"])
    return client.call_api(method, url, header_params=headers)


def test_kubernetes_client_lists_and_watches(api: FakeKubeAPI, tmp_path: Path) -> None:
    services(api, 3)
    token_file = tmp_path / "token"
    token_file.write_text(DEFAULT_TOKEN)
    client = kubernetes_client(api, tmp_path, token_file=token_file)
    listed = json.loads(call(client, "/api/v1/services", limit="2").read())
    assert names(listed["items"]) == ["s0", "s1"]
    assert listed["metadata"]["remainingItemCount"] == 1
    revision = listed["metadata"]["resourceVersion"]
    api.create(kubeobjects.service("ns2", "new", ("10.96.0.99",)))
    response = call(client, "/api/v1/services", watch="true", resourceVersion=revision,
                    timeoutSeconds="1", allowWatchBookmarks="true")
    assert response.status == 200
    events = []
    while line := response.response.readline():
        events.append(json.loads(line))
    assert (events[0]["type"], events[0]["object"]["metadata"]["name"]) == ("ADDED", "new")
    assert api.watches("services")[-1].query["resourceVersion"] == revision


def test_kubernetes_client_rejects_a_rotated_token(api: FakeKubeAPI, tmp_path: Path) -> None:
    client = kubernetes_client(api, tmp_path, ca=False)
    assert call(client, "/api/v1/pods").status == 200
    api.rotate_token("rotated")
    refused = call(client, "/api/v1/pods")
    assert refused.status == 401
    assert json.loads(refused.read())["reason"] == "Unauthorized"


def test_large_lists_come_in_whole_pages(api: FakeKubeAPI) -> None:
    """
    20,000 Services in pages of 500: 40 pages, each name once. (How fast
    is the benchmark's business, bench/kube_freshness.py, not a test's.)
    """
    api.bulk_create([kubeobjects.service(f"ns{i % 50}", f"s{i}", (f"10.{96 + i // 65536}."
                                                                  f"{i // 256 % 256}.{i % 256}",))
                     for i in range(20000)])
    connection = connect(api)
    token, pages, names = "", 0, []
    while pages == 0 or token:
        connection.request("GET", f"/api/v1/services?limit=500&continue={token}",
                           headers={"Authorization": f"Bearer {DEFAULT_TOKEN}"})
        page = json.loads(connection.getresponse().read())
        assert len(page["items"]) == 500
        names.extend(item["metadata"]["name"] for item in page["items"])
        token, pages = page["metadata"].get("continue", ""), pages + 1
    assert pages == 40
    assert sorted(names) == sorted(f"s{i}" for i in range(20000))
