"""
Tests for L{meshdns_plugin.mesh.liveviews}: per-client views patched one
change at a time answer as views built whole from the same documents (every
namespace with clients: names, aliases and PTR names; and the client map,
with the addresses of Pods that have DNS settings of their own),
or the patcher says that only a whole build can apply the change.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from meshdns_plugin.mesh.allocator import Allocation
from meshdns_plugin.mesh.clients import client_map
from meshdns_plugin.mesh.liveviews import ViewsPatcher
from meshdns_plugin.mesh.model import EndpointSlice, Entries, Origin, Pod
from meshdns_plugin.mesh.views import MeshViews, build_views, views_built_whole
from tests.unit.mesh.test_livetable import ENTRIES, services

DOMAIN = "cluster.local"
DEFAULT = "a"
POD_ADDRESSES = ("10.244.0.1", "10.244.0.2", "10.244.0.3")


def endpoint_slice(
    namespace: str, name: str, owner: str, ready: tuple[str, ...], pods: tuple[str, ...], host: str
):
    ready = tuple(dict.fromkeys(ready))
    return EndpointSlice(
        Origin("kubernetes", 0, "EndpointSlice", namespace, name),
        owner,
        ready,
        {host: ready} if host and ready else {},
        tuple(dict.fromkeys(pods)),
    )


def pod(namespace: str, name: str, address: str, own_dns: bool = False) -> Pod:
    return Pod(Origin("kubernetes", 0, "Pod", namespace, name), (address,), own_dns)


slices = st.builds(
    endpoint_slice,
    st.sampled_from(("a", "b")),
    st.sampled_from(("s1", "s2")),
    st.sampled_from(("web", "db")),
    st.lists(st.sampled_from(("10.0.0.1", "10.0.0.2", "fd00::1")), max_size=2).map(tuple),
    st.lists(st.sampled_from(POD_ADDRESSES), max_size=2).map(tuple),
    st.sampled_from(("", "pod-0")),
)
pods = st.builds(
    pod,
    st.sampled_from(("a", "b", "c")),
    st.sampled_from(("p1", "p2")),
    st.sampled_from(POD_ADDRESSES),
    st.booleans(),
)
steps = st.lists(
    st.one_of(
        services.map(lambda s: ("service", (s.namespace, s.name), s)),
        st.tuples(st.sampled_from(("a", "b")), st.sampled_from(("web", "db"))).map(
            lambda k: ("service", k, None)
        ),
        slices.map(lambda s: ("slice", (s.origin.namespace, s.origin.name), s)),
        st.tuples(st.sampled_from(("a", "b")), st.sampled_from(("s1", "s2"))).map(
            lambda k: ("slice", k, None)
        ),
        pods.map(lambda p: ("pod", (p.namespace, p.origin.name), p)),
        st.tuples(st.sampled_from(("a", "b", "c")), st.sampled_from(("p1", "p2"))).map(
            lambda k: ("pod", k, None)
        ),
    ),
    max_size=10,
)


def whole(state: dict[str, dict[Any, Any]]) -> tuple[Entries, MeshViews]:
    entries = Entries(
        service_entries=ENTRIES,
        services=tuple(state["service"].values()),
        endpoint_slices=tuple(state["slice"].values()),
        pods=tuple(state["pod"].values()),
    )
    clients = client_map(entries, (), DEFAULT)
    views = build_views(
        entries,
        Allocation({}),
        clients,
        auto_allocate=False,
        cluster_domain=DOMAIN,
        ttl=30,
        whole=views_built_whole(entries, clients.namespaces()),
    )
    return entries, views


def same(patched: MeshViews, built: MeshViews) -> None:
    assert dict(patched.clients.addresses) == dict(built.clients.addresses)
    assert set(patched.clients.own_dns) == set(built.clients.own_dns)
    for namespace in built.clients.namespaces():
        mine, theirs = patched.tables[namespace], built.tables[namespace]
        assert dict(mine.names) == dict(theirs.names), namespace
        assert dict(mine.aliases) == dict(theirs.aliases), namespace
        assert dict(mine.pointers) == dict(theirs.pointers), namespace
        assert mine.search_suffix == theirs.search_suffix


@settings(max_examples=300, deadline=None)
@given(
    st.lists(services, max_size=2), st.lists(slices, max_size=2), st.lists(pods, max_size=2), steps
)
def test_patched_views_equal_whole_builds(
    first_services, first_slices, first_pods, changes
) -> None:
    state: dict[str, dict[Any, Any]] = {
        "service": {(s.namespace, s.name): s for s in first_services},
        "slice": {(s.origin.namespace, s.origin.name): s for s in first_slices},
        "pod": {(p.namespace, p.origin.name): p for p in first_pods},
    }
    entries, views = whole(state)
    patcher = ViewsPatcher(views, entries, cluster_domain=DOMAIN)
    for what, key, value in changes:
        if value is None:
            state[what].pop(key, None)
        else:
            state[what][key] = value
        change: dict[str, dict[Any, Any]] = {"service": {}, "slice": {}, "pod": {}}
        change[what][key] = value
        result = patcher.apply(change["service"], change["slice"], change["pod"])
        entries, built = whole(state)
        if result is None or result.rebuild:
            patcher = ViewsPatcher(built, entries, cluster_domain=DOMAIN)
            continue
        same(result.views, built)


def test_a_pod_of_a_namespace_without_a_view_needs_a_whole_build() -> None:
    state: dict[str, dict[Any, Any]] = {"service": {}, "slice": {}, "pod": {}}
    entries, views = whole(state)
    patcher = ViewsPatcher(views, entries, cluster_domain=DOMAIN)
    assert patcher.apply({}, {}, {("c", "p1"): pod("c", "p1", "10.244.0.1")}) is None


def test_a_pod_moves_between_namespaces_with_views() -> None:
    """client_map: an address belongs to the namespace of its Pod."""
    state: dict[str, dict[Any, Any]] = {
        "service": {},
        "slice": {},
        "pod": {
            ("b", "p1"): pod("b", "p1", "10.244.0.1"),
            ("a", "p2"): pod("a", "p2", "10.244.0.2"),
        },
    }
    entries, views = whole(state)
    patcher = ViewsPatcher(views, entries, cluster_domain=DOMAIN)
    result = patcher.apply({}, {}, {("b", "p1"): None, ("a", "p1"): pod("a", "p1", "10.244.0.1")})
    assert result is not None and not result.rebuild
    assert result.views.clients.namespace_of("10.244.0.1") == "a"
