"""
Tests for L{meshdns_plugin.mesh.livetable}: a table patched one Service or
EndpointSlice change at a time is the table a whole build gives for the
same documents (names, aliases and PTR names), whatever the order of the
changes, with ServiceEntry hosts of the same names, shared addresses,
headless Services with per-pod names, ExternalName Services and exportTo.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from meshdns_plugin.mesh.allocator import Allocation
from meshdns_plugin.mesh.livetable import TablePatcher
from meshdns_plugin.mesh.model import EndpointSlice, Entries, Origin, Service, ServiceEntry
from meshdns_plugin.mesh.table import NameTable, build_table
from meshdns_plugin.mesh.view import mesh_view

NAMESPACE = "a"
DOMAIN = "cluster.local"
ADDRESSES = ("10.0.0.1", "10.0.0.2", "10.0.0.3", "fd00::1")
NAMESPACES = ("a", "b")
SERVICE_NAMES = ("web", "db")
#: ServiceEntry hosts that are also names of the Services above.
ENTRIES = (
    ServiceEntry(Origin("f", 0, "ServiceEntry", "a", "se1"), ("web.a", "x.example"), ("10.0.0.9",)),
    ServiceEntry(
        Origin("f", 1, "ServiceEntry", "b", "se2"), ("db.b.svc.cluster.local",), ("10.0.0.1",)
    ),
    ServiceEntry(Origin("f", 2, "ServiceEntry", "a", "se3"), ("web",), ("10.0.0.2",)),
)


def service(namespace: str, name: str, kind: str, addresses: tuple[str, ...], export: str):
    origin = Origin("kubernetes", 0, "Service", namespace, name)
    export_to = (export,) if export else ()
    if kind == "external":
        return Service(
            origin, type="ExternalName", external_name="ext.example", export_to=export_to
        )
    if kind == "headless":
        return Service(origin, export_to=export_to)
    ips = tuple(dict.fromkeys(a for a in addresses if ":" not in a))[:1]
    return Service(origin, cluster_ips=ips or ("10.0.0.1",), export_to=export_to)


def endpoint_slice(namespace: str, name: str, owner: str, addresses: tuple[str, ...], host: str):
    """
    A slice whose endpoints all have hostname C{host}, none ("") or, for
    C{"first"}, only the first one (PTR names differ with and without).
    """
    unique = tuple(dict.fromkeys(addresses))
    named = unique[:1] if host == "first" else unique
    return EndpointSlice(
        Origin("kubernetes", 0, "EndpointSlice", namespace, name),
        owner,
        unique,
        {"pod-0": named} if host and named else {},
    )


services = st.builds(
    service,
    st.sampled_from(NAMESPACES),
    st.sampled_from(SERVICE_NAMES),
    st.sampled_from(("ip", "headless", "external")),
    st.lists(st.sampled_from(ADDRESSES), max_size=2).map(tuple),
    st.sampled_from(("", ".", "b")),
)
slices = st.builds(
    endpoint_slice,
    st.sampled_from(NAMESPACES),
    st.sampled_from(("s1", "s2", "s3")),
    st.sampled_from(SERVICE_NAMES),
    st.lists(st.sampled_from(ADDRESSES), max_size=3).map(tuple),
    st.sampled_from(("", "all", "first")),
)
changes = st.lists(
    st.one_of(
        services.map(lambda s: ("service", (s.namespace, s.name), s)),
        st.tuples(st.sampled_from(NAMESPACES), st.sampled_from(SERVICE_NAMES)).map(
            lambda k: ("service", k, None)
        ),
        slices.map(lambda s: ("slice", (s.origin.namespace, s.origin.name), s)),
        st.tuples(st.sampled_from(NAMESPACES), st.sampled_from(("s1", "s2", "s3"))).map(
            lambda k: ("slice", k, None)
        ),
    ),
    max_size=12,
)


def whole(services: dict[Any, Service], slices: dict[Any, EndpointSlice]) -> NameTable:
    entries = Entries(
        service_entries=ENTRIES,
        services=tuple(services.values()),
        endpoint_slices=tuple(slices.values()),
    )
    view = mesh_view(entries, Allocation({}), namespace=NAMESPACE, auto_allocate=False)
    return build_table(view, cluster_domain=DOMAIN, search=(), ttl=30)


def same(patched: NameTable, built: NameTable) -> None:
    assert dict(patched.names) == dict(built.names)
    assert dict(patched.aliases) == dict(built.aliases)
    assert dict(patched.pointers) == dict(built.pointers)


@settings(max_examples=300, deadline=None)
@given(st.lists(services, max_size=3), st.lists(slices, max_size=3), changes, st.booleans())
def test_patched_equals_whole_build(
    first_services: list[Service],
    first_slices: list[EndpointSlice],
    steps: list[tuple[str, Any, Any]],
    batched: bool,
) -> None:
    """Each change, alone or all in one batch, gives what a whole build gives."""
    current_services = {(s.namespace, s.name): s for s in first_services}
    current_slices = {(s.origin.namespace, s.origin.name): s for s in first_slices}
    start = whole(current_services, current_slices)
    patcher = TablePatcher.alone(
        start,
        Entries(
            service_entries=ENTRIES,
            services=tuple(current_services.values()),
            endpoint_slices=tuple(current_slices.values()),
        ),
        namespace=NAMESPACE,
        cluster_domain=DOMAIN,
    )
    pending_services: dict[Any, Service | None] = {}
    pending_slices: dict[Any, EndpointSlice | None] = {}
    for what, key, value in steps:
        target, pending = (
            (current_services, pending_services)
            if what == "service"
            else (current_slices, pending_slices)
        )
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value
        pending[key] = value
        if not batched:
            same(
                patcher.apply(pending_services, pending_slices),
                whole(current_services, current_slices),
            )
            pending_services, pending_slices = {}, {}
    same(patcher.apply(pending_services, pending_slices), whole(current_services, current_slices))


def test_removed_service_gives_its_name_back_to_the_service_entry() -> None:
    """
    DESIGN.md: a Service wins over a ServiceEntry for the same name; when the
    Service goes, the ServiceEntry's address answers the name again, and its
    PTR name comes back.
    """
    web = service("a", "web", "ip", ("10.0.0.3",), "")
    start = whole({("a", "web"): web}, {})
    assert start.names[b"web.a"].ipv4 == ("10.0.0.3",)
    patcher = TablePatcher.alone(
        start,
        Entries(service_entries=ENTRIES, services=(web,)),
        namespace=NAMESPACE,
        cluster_domain=DOMAIN,
    )
    table = patcher.apply({("a", "web"): None}, {})
    assert table.names[b"web.a"].ipv4 == ("10.0.0.9",)
    assert table.pointers[b"9.0.0.10.in-addr.arpa"] == (b"web.a", b"x.example")
    assert b"3.0.0.10.in-addr.arpa" not in table.pointers
    assert table is not start


#: More ServiceEntries a load may have: a wildcard, another address for a
#: Service's name, one that another namespace's entry also defines.
MORE_ENTRIES = (
    ServiceEntry(Origin("f", 3, "ServiceEntry", "b", "se4"), ("*.wild.example",), ("10.0.0.7",)),
    ServiceEntry(Origin("f", 4, "ServiceEntry", "a", "se5"), ("web.a", "db"), ("10.0.0.3",)),
    ServiceEntry(Origin("f", 5, "ServiceEntry", "b", "se6"), ("x.example",), ("10.0.0.8",)),
)
entry_sets = st.lists(
    st.sampled_from(range(len(ENTRIES + MORE_ENTRIES))), unique=True, max_size=4
).map(lambda picked: tuple((ENTRIES + MORE_ENTRIES)[i] for i in sorted(picked)))


def whole_with(entries: tuple[ServiceEntry, ...], services, slices, only_entries: bool = False):
    document = Entries(
        service_entries=entries,
        services=() if only_entries else tuple(services.values()),
        endpoint_slices=() if only_entries else tuple(slices.values()),
    )
    view = mesh_view(document, Allocation({}), namespace=NAMESPACE, auto_allocate=False)
    return build_table(view, cluster_domain=DOMAIN, search=(), ttl=30)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(services, max_size=3),
    entry_sets,
    st.lists(st.one_of(entry_sets, services), max_size=8),
)
def test_swapped_service_entries_equal_whole_build(
    first_services: list[Service], first_entries: tuple[ServiceEntry, ...], steps: list[Any]
) -> None:
    """
    A load of ServiceEntries alone swapped into a patched table gives what
    a whole build gives: Services keep their names over ServiceEntries of
    the same name, and a name a Service leaves is the new entries'.
    """
    current = {(s.namespace, s.name): s for s in first_services}
    entries = first_entries
    patcher = TablePatcher.alone(
        whole_with(entries, current, {}),
        Entries(service_entries=entries, services=tuple(current.values())),
        namespace=NAMESPACE,
        cluster_domain=DOMAIN,
    )
    for step in steps:
        if isinstance(step, tuple):
            entries = step
            table = patcher.swap_entries(whole_with(entries, {}, {}, only_entries=True))
        else:
            current[(step.namespace, step.name)] = step
            table = patcher.apply({(step.namespace, step.name): step}, {})
        same(table, whole_with(entries, current, {}))
