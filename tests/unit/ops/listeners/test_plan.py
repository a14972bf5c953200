"""
Tests for L{meshdns_plugin.ops.listeners.plan}: which listeners the entries ask for
(ports, protocols, DNS or static endpoints, VIPs), and C{meshdns listeners}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from meshdns_plugin.cli import main
from meshdns_plugin.config import load_config
from meshdns_plugin.mesh.allocator import Allocation, Vips
from meshdns_plugin.mesh.loader import TableLoader
from meshdns_plugin.mesh.view import mesh_view
from meshdns_plugin.ops.listeners.plan import (
    Backend,
    ListenerPlan,
    ListenerSpec,
    is_tcp,
    listener_plan,
)
from meshdns_plugin.sources.files import load_entries, parse_entries
from tests.support.samples import guide_config, service_entry


def plan_of(*documents: str, vips: dict[str, Vips] | None = None, **kw: Any) -> ListenerPlan:
    entries = parse_entries("---\n".join(documents))
    view = mesh_view(
        entries,
        Allocation(vips or {}),
        namespace=kw.get("namespace", "default"),
        auto_allocate=kw.get("auto", True),
    )
    return listener_plan(view)


def test_the_guide_entries() -> None:
    """Each tcp-echo VIP gets its own listener on 9000, forwarding to its own host."""
    prepared = TableLoader(load_config(None), load_entries).prepare()
    vips = prepared.allocation.vips
    plan = listener_plan(prepared.view)
    by_host: dict[str, list[ListenerSpec]] = {}
    for spec in plan.listeners:
        by_host.setdefault(spec.host, []).append(spec)
    for n in (1, 2):
        host = f"tcp-echo.external-{n}.svc.cluster.local"
        assert [(s.address, s.port) for s in by_host[host]] == [
            (vips[host].ipv4, 9000),
            (vips[host].ipv6, 9000),
        ]
        assert all(s.backends == (Backend(host, 9000),) for s in by_host[host])
    assert [s.port for s in by_host["auto.internal"]] == [80, 80]
    # address.internal has resolution NONE and no endpoints: its traffic goes
    # to 198.51.100.1 itself, so meshdns must not take it.
    assert "address.internal" not in by_host
    assert plan.notes == (
        "ServiceEntry default/external-address: address.internal port 80: resolution NONE "
        "without endpoints: connections go to the address itself: no listener",
    )


def test_the_cli_lists_every_listener_for_the_guides_pipeline(capsys, tmp_path: Path) -> None:
    """
    `meshdns listeners` prints istioctl's table, one row per listener the
    server opens, so the guide's `grep tcp-echo | awk '{printf "ADDRESS=%s,
    DESTINATION=%s %s\\n", $1, $4, $5}'` gives its documented lines.
    """
    config = guide_config(tmp_path)
    prepared = TableLoader(load_config(config), load_entries).prepare()
    plan = listener_plan(prepared.view)
    assert main(["listeners", "-c", config]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ADDRESSES", "PORT", "MATCH", "DESTINATION"]
    assert len(lines) == 1 + len(plan.listeners)
    awk = [
        "ADDRESS={}, DESTINATION={} {}".format(*(line.split()[i] for i in (0, 3, 4)))
        for line in lines
        if "tcp-echo" in line
    ]
    vips = prepared.allocation.vips
    assert awk == [
        f"ADDRESS={address}, DESTINATION=Cluster: outbound|9000||{host}"
        for host in (f"tcp-echo.external-{n}.svc.cluster.local" for n in (1, 2))
        for address in (vips[host].ipv4, vips[host].ipv6)
    ]


def test_static_endpoints_ports_and_protocols() -> None:
    plan = plan_of(
        service_entry(
            "db",
            """
            hosts: [db.example]
            addresses: [10.1.0.1]
            resolution: STATIC
            ports:
            - {number: 3306, name: mysql, protocol: MYSQL, targetPort: 13306}
            - {number: 53, name: dns, protocol: UDP}
            - {number: 443, name: https, protocol: HTTPS}
            endpoints:
            - {address: 10.2.0.1}
            - {address: 10.2.0.2, ports: {mysql: 23306}}
            """,
        )
    )
    assert plan.notes == ()
    assert plan.listeners == (
        ListenerSpec(
            "10.1.0.1", 3306, "db.example", "ServiceEntry default/db",
            (Backend("10.2.0.1", 13306), Backend("10.2.0.2", 23306)),
        ),
        ListenerSpec(
            "10.1.0.1", 443, "db.example", "ServiceEntry default/db",
            (Backend("10.2.0.1", 443), Backend("10.2.0.2", 443)),
        ),
    )


def test_dns_endpoints_are_host_names_to_resolve() -> None:
    plan = plan_of(
        service_entry(
            "api",
            """
            hosts: [api.example]
            resolution: DNS
            ports: [{number: 8443, name: tls, protocol: TLS}]
            endpoints: [{address: eu.api.example}, {address: 192.0.2.7}]
            """,
        ),
        vips={"api.example": Vips("240.240.0.9", None)},
    )
    (spec,) = plan.listeners
    assert (spec.address, spec.port) == ("240.240.0.9", 8443)
    assert spec.backends == (Backend("eu.api.example", 8443), Backend("192.0.2.7", 8443))


def test_no_listener_notes() -> None:
    plan = plan_of(
        service_entry("wild", "hosts: ['*.wild.example']\nresolution: NONE\nports: [{number: 80}]"),
        service_entry("static", "hosts: [s.example]\naddresses: [10.0.0.1]\nresolution: STATIC\n"
              "ports: [{number: 80}]"),
        service_entry("hidden", "hosts: [h.example]\naddresses: [10.0.0.2]\nresolution: DNS\n"
              "exportTo: [other]\nports: [{number: 80}]"),
        service_entry("udp", "hosts: [u.example]\naddresses: [10.0.0.3]\nresolution: DNS\n"
              "ports: [{number: 53, protocol: UDP}]"),
    )
    assert plan.listeners == ()
    assert plan.notes == (
        "ServiceEntry default/wild: *.wild.example port 80: no address and no VIP: no listener",
        "ServiceEntry default/static: s.example port 80: resolution STATIC without endpoints: "
        "nowhere to forward to: no listener",
    )


def test_vips_only_when_auto_allocate() -> None:
    text = service_entry("a", "hosts: [a.example]\nresolution: DNS\nports: [{number: 80}]")
    vips = {"a.example": Vips("240.240.0.1", "2001:2::1")}
    assert [s.address for s in plan_of(text, vips=vips).listeners] == ["240.240.0.1", "2001:2::1"]
    plan = plan_of(text, vips=vips, auto=False)
    assert plan.listeners == ()
    assert len(plan.notes) == 1


def test_first_claim_of_an_address_wins() -> None:
    plan = plan_of(
        service_entry(
            "one",
            "hosts: [a.example, b.example]\naddresses: [10.0.0.1]\nresolution: DNS\n"
            "ports: [{number: 80}]",
        ),
    )
    assert [s.host for s in plan.listeners] == ["a.example"]
    (collision,) = plan.collisions
    assert str(collision) == (
        "collision: 10.0.0.1 port 80 is claimed by a.example (ServiceEntry default/one) "
        "and by b.example (ServiceEntry default/one), which gets no listener"
    )


def test_is_tcp() -> None:
    assert all(is_tcp(p) for p in ("TCP", "HTTP", "HTTP2", "HTTPS", "TLS", "GRPC", "MONGO"))
    assert not is_tcp("UDP") and not is_tcp("udp")


def test_the_cli_lists_no_listener_when_the_server_opens_none(capsys, tmp_path: Path) -> None:
    config = guide_config(tmp_path)
    Path(config).write_text(Path(config).read_text().replace("enabled: true", "enabled: false"))
    assert main(["listeners", "-c", config]) == 0
    captured = capsys.readouterr()
    assert captured.out.split() == ["ADDRESSES", "PORT", "MATCH", "DESTINATION"]
    assert "vip_listeners.enabled is off" in captured.err
    assert "from the files of" in captured.err
