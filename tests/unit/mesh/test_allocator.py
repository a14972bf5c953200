"""
Tests for L{meshdns_plugin.mesh.allocator}: VIPs are deterministic, stable, unique,
inside their range, never network- or broadcast-looking, and persist in a state
file.

Tiny ranges such as 10.0.0.0/29 are used here only as arithmetic: nothing is
sent to those addresses.
"""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshdns_plugin.mesh.allocator import (
    Allocation,
    StateError,
    Vips,
    allocate,
    load_state,
    save_state,
)

V4 = ipaddress.IPv4Network("240.240.0.0/16")
V6 = ipaddress.IPv6Network("2001:2::/48")

label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
host_names = st.lists(label, min_size=1, max_size=4).map(".".join)
host_sets = st.sets(host_names, min_size=0, max_size=40)


def usable(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> set[str]:
    """Every address that may be handed out, counted one by one (small ranges only)."""
    result = set()
    for address in network:
        if address in (network.network_address, network.broadcast_address):
            continue
        if address.version == 4 and address.packed[-1] in (0, 255):
            continue
        result.add(str(address))
    return result


def assert_well_formed(allocation: Allocation, hosts: set[str], v4=V4, v6=V6) -> None:
    assert set(allocation.vips) == hosts
    ipv4 = [v.ipv4 for v in allocation.vips.values() if v.ipv4 is not None]
    ipv6 = [v.ipv6 for v in allocation.vips.values() if v.ipv6 is not None]
    assert len(ipv4) == len(set(ipv4)), "duplicate IPv4 VIP"
    assert len(ipv6) == len(set(ipv6)), "duplicate IPv6 VIP"
    for address in ipv4:
        ip = ipaddress.ip_address(address)
        assert ip in v4 and ip not in (v4.network_address, v4.broadcast_address)
        assert address.split(".")[-1] not in ("0", "255"), address
    for address in ipv6:
        ip = ipaddress.ip_address(address)
        assert ip in v6 and ip not in (v6.network_address, v6.broadcast_address)


# --- deterministic ---------------------------------------------------------------


@given(
    st.lists(host_names, min_size=0, max_size=30, unique=True).flatmap(
        lambda hosts: st.tuples(st.just(hosts), st.permutations(hosts))
    )
)
def test_same_hosts_in_any_order_get_the_same_vips(pair: tuple[list[str], list[str]]) -> None:
    hosts, shuffled = pair
    first = allocate(hosts, V4, V6)
    second = allocate(shuffled + shuffled[:3], V4, V6)  # duplicates do not matter either
    assert dict(first.vips) == dict(second.vips)
    assert_well_formed(first, set(hosts))
    assert first.problems == ()


def test_colliding_first_choices_are_settled_in_sorted_order() -> None:
    """
    DESIGN.md, "VIP allocation": deterministic, so replicas fed the same
    entries in another order agree. In a /28 (14 usable addresses) twelve
    hosts' first choices collide, so the order of placement decides who
    probes on: any arrival order gives the sorted order's result.
    """
    tiny4 = ipaddress.IPv4Network("240.240.0.0/28")
    tiny6 = ipaddress.IPv6Network("2001:2::/124")
    hosts = [f"h{n}.example" for n in range(12)]
    expected = dict(allocate(sorted(hosts), tiny4, tiny6).vips)
    for order in (list(reversed(hosts)), hosts[5:] + hosts[:5], hosts[1::2] + hosts[::2]):
        assert dict(allocate(order, tiny4, tiny6).vips) == expected, order


def test_both_families_for_every_host() -> None:
    hosts = {
        "auto.internal",
        "tcp-echo.external-1.svc.cluster.local",
        "tcp-echo.external-2.svc.cluster.local",
    }
    allocation = allocate(hosts, V4, V6)
    assert all(v.ipv4 and v.ipv6 for v in allocation.vips.values())
    assert_well_formed(allocation, hosts)


# --- stable ----------------------------------------------------------------------


@settings(max_examples=60)
@given(kept=host_sets, added=host_sets, removed_fraction=st.floats(0, 1))
def test_previous_assignments_are_kept(
    kept: set[str], added: set[str], removed_fraction: float
) -> None:
    before = allocate(kept, V4, V6)
    # Remove some of the original hosts and add others: the survivors do not move.
    survivors = set(sorted(kept)[: int(len(kept) * removed_fraction)])
    after = allocate(survivors | added, V4, V6, previous=before.vips)
    for host in survivors:
        assert after.vips[host] == before.vips[host]
    assert_well_formed(after, survivors | added)


def test_kept_even_when_a_new_host_wants_the_same_address() -> None:
    """A new host whose first choice is taken probes elsewhere; the old host keeps its VIP."""
    net = ipaddress.IPv4Network("10.0.0.0/29")
    six = ipaddress.IPv6Network("fd00::/125")
    old = allocate(["old.example"], net, six)
    # Adding many hosts to a tiny range forces some to collide with old.example.
    hosts = ["old.example"] + [f"h{i}.example" for i in range(5)]
    new = allocate(hosts, net, six, previous=old.vips)
    assert new.vips["old.example"] == old.vips["old.example"]
    assert_well_formed(new, set(hosts), net, six)


def test_previous_vip_outside_a_new_range_is_reallocated() -> None:
    old_range = ipaddress.IPv4Network("10.1.0.0/24")
    new_range = ipaddress.IPv4Network("10.2.0.0/24")
    new_six = ipaddress.IPv6Network("fd00:2::/64")
    old = allocate(["a.example", "b.example"], old_range, V6)
    new = allocate(["a.example", "b.example"], new_range, new_six, previous=old.vips)
    assert_well_formed(new, {"a.example", "b.example"}, new_range, new_six)
    for host in ("a.example", "b.example"):
        assert ipaddress.ip_address(new.vips[host].ipv4) in new_range


@pytest.mark.parametrize(
    "bad",
    [
        Vips("10.0.0.0", "fd00::"),  # network addresses
        Vips("10.0.0.255", "fd00::ffff:ffff:ffff:ffff"),  # broadcast addresses
        Vips("garbage", "also garbage"),
        Vips("fd00::5", "10.0.0.5"),  # families swapped
        Vips(None, None),
    ],
)
def test_unusable_previous_vips_are_replaced(bad: Vips) -> None:
    v4, v6 = ipaddress.IPv4Network("10.0.0.0/24"), ipaddress.IPv6Network("fd00::/64")
    allocation = allocate(["a.example"], v4, v6, previous={"a.example": bad})
    assert_well_formed(allocation, {"a.example"}, v4, v6)
    assert allocation.vips["a.example"].ipv4 is not None
    assert allocation.vips["a.example"].ipv6 is not None


def test_ipv4_in_an_ipv6_range_is_not_kept() -> None:
    """An IPv4 address never counts as inside an IPv6 range, even ::/125 (ints 0-7)."""
    v6 = ipaddress.IPv6Network("::/125")
    allocation = allocate(["a.example"], V4, v6, previous={"a.example": Vips(None, "0.0.0.5")})
    ip = ipaddress.ip_address(allocation.vips["a.example"].ipv6)
    assert ip.version == 6 and ip in v6


def test_two_hosts_claiming_the_same_previous_vip() -> None:
    v4, v6 = ipaddress.IPv4Network("10.0.0.0/24"), ipaddress.IPv6Network("fd00::/64")
    same = Vips("10.0.0.7", "fd00::7")
    allocation = allocate(
        ["a.example", "b.example"], v4, v6, previous={"a.example": same, "b.example": same}
    )
    assert_well_formed(allocation, {"a.example", "b.example"}, v4, v6)
    assert same.ipv4 in {v.ipv4 for v in allocation.vips.values()}


def test_forgotten_hosts_free_their_addresses() -> None:
    net, six = ipaddress.IPv4Network("10.0.0.0/29"), ipaddress.IPv6Network("fd00::/125")
    first = [f"first{i}.example" for i in range(6)]
    full = allocate(first, net, six)
    assert full.problems == ()
    second = [f"second{i}.example" for i in range(6)]
    replaced = allocate(second, net, six, previous=full.vips)
    assert replaced.problems == ()
    assert set(replaced.vips) == set(second)
    assert_well_formed(replaced, set(second), net, six)


# --- collisions, exhaustion, forbidden addresses ------------------------------------


def test_tiny_range_is_filled_exactly() -> None:
    net, six = ipaddress.IPv4Network("10.0.0.0/29"), ipaddress.IPv6Network("fd00::/125")
    hosts = {f"h{i}.example" for i in range(len(usable(net)))}
    allocation = allocate(hosts, net, six)
    assert allocation.problems == ()
    assert {v.ipv4 for v in allocation.vips.values()} == usable(net)
    assert {v.ipv6 for v in allocation.vips.values()} == usable(six)


def test_exhaustion_is_reported_per_host_without_duplicates() -> None:
    net, six = ipaddress.IPv4Network("10.0.0.0/29"), ipaddress.IPv6Network("fd00::/64")
    hosts = {f"h{i}.example" for i in range(len(usable(net)) + 3)}
    allocation = allocate(hosts, net, six)
    assert_well_formed(allocation, hosts, net, six)
    left_out = {h for h, v in allocation.vips.items() if v.ipv4 is None}
    assert len(left_out) == 3
    assert all(v.ipv6 is not None for v in allocation.vips.values())
    assert len(allocation.problems) == 3
    for host in left_out:
        (message,) = [p for p in allocation.problems if p.startswith(host + ":")]
        assert "IPv4" in message and str(net) in message


def test_ipv6_exhaustion_is_reported_too() -> None:
    six = ipaddress.IPv6Network("fd00::/126")
    hosts = {"a.example", "b.example", "c.example"}
    allocation = allocate(hosts, V4, six)
    assert_well_formed(allocation, hosts, V4, six)
    (host,) = [h for h, v in allocation.vips.items() if v.ipv6 is None]
    (message,) = allocation.problems
    assert message.startswith(host + ":") and "IPv6" in message and str(six) in message


@st.composite
def small_ipv4_ranges(draw: st.DrawFn) -> ipaddress.IPv4Network:
    prefix = draw(st.integers(min_value=22, max_value=30))
    base = draw(st.integers(min_value=0, max_value=2**32 - 1))
    return ipaddress.IPv4Network((base >> (32 - prefix) << (32 - prefix), prefix))


@settings(max_examples=80, deadline=None)
@given(net=small_ipv4_ranges(), extra=st.integers(min_value=-5, max_value=5), salt=label)
def test_never_a_forbidden_address_and_exact_exhaustion(
    net: ipaddress.IPv4Network, extra: int, salt: str
) -> None:
    free = usable(net)
    # Around the capacity (a /22 has 1016 usable addresses): below, at and past it.
    count = max(0, len(free) + extra)
    hosts = {f"h{i}.{salt}" for i in range(count)}
    allocation = allocate(hosts, net, V6)
    assert_well_formed(allocation, hosts, net, V6)
    given_out = {v.ipv4 for v in allocation.vips.values() if v.ipv4 is not None}
    assert given_out <= free
    assert len(given_out) == min(len(hosts), len(free))
    assert len(allocation.problems) == max(0, len(hosts) - len(free))


@settings(max_examples=40, deadline=None)
@given(prefix=st.integers(min_value=120, max_value=126), hosts=host_sets)
def test_small_ipv6_ranges(prefix: int, hosts: set[str]) -> None:
    six = ipaddress.IPv6Network(("fd00:1::", prefix))
    allocation = allocate(hosts, V4, six)
    assert_well_formed(allocation, hosts, V4, six)
    assert len(allocation.problems) == max(0, len(hosts) - len(usable(six)))




def test_empty_input() -> None:
    assert allocate([], V4, V6) == Allocation({}, ())


# --- state file --------------------------------------------------------------------


def test_state_round_trip(tmp_path: Path) -> None:
    allocation = allocate(["a.example", "b.example", "auto.internal"], V4, V6)
    path = tmp_path / "sub" / "dir" / "vips.json"
    save_state(str(path), allocation)
    assert load_state(str(path)) == dict(allocation.vips)
    # Only the state file is left behind (no temporary files).
    assert os.listdir(path.parent) == ["vips.json"]
    # It is plain JSON that a person can read.
    raw = json.loads(path.read_text())
    assert raw["hosts"]["a.example"] == {
        "ipv4": allocation.vips["a.example"].ipv4,
        "ipv6": allocation.vips["a.example"].ipv6,
    }


def test_state_survives_a_restart_with_more_hosts(tmp_path: Path) -> None:
    path = str(tmp_path / "vips.json")
    first = allocate(["a.example"], V4, V6)
    save_state(path, first)
    second = allocate(["a.example", "z.example"], V4, V6, previous=load_state(path))
    assert second.vips["a.example"] == first.vips["a.example"]


def test_save_replaces_an_existing_state(tmp_path: Path) -> None:
    path = str(tmp_path / "vips.json")
    save_state(path, allocate(["a.example", "b.example"], V4, V6))
    save_state(path, allocate(["c.example"], V4, V6))
    assert set(load_state(path)) == {"c.example"}


def test_missing_state_is_empty(tmp_path: Path) -> None:
    assert load_state(str(tmp_path / "none.json")) == {}


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[1, 2]", b'{"hosts": [1]}', b'{"version": 1}', b"\xff\xfe\x00", b""],
)
def test_corrupt_state_names_the_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "vips.json"
    path.write_bytes(content)
    with pytest.raises(StateError) as caught:
        load_state(str(path))
    assert str(path) in str(caught.value)


def test_state_that_is_a_folder(tmp_path: Path) -> None:
    with pytest.raises(StateError) as caught:
        load_state(str(tmp_path))
    assert str(tmp_path) in str(caught.value)
