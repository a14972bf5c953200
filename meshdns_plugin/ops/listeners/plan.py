# -*- test-case-name: tests.unit.ops.listeners.test_plan -*-
"""
The VIP listener plan: a pure function of the mesh view, one
L{ListenerSpec} per (address, port) with its backends, and a note for every
TCP port that gets no listener, saying why. C{meshdns listeners} and the
server share it, so the listing is what is served.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from meshdns_plugin.mesh.kinds.serviceentry import DNS_RESOLUTIONS
from meshdns_plugin.mesh.model import Port, ServiceEntry
from meshdns_plugin.mesh.view import Collision, MeshView

if TYPE_CHECKING:
    pass



def endpoint_text(address: str, port: int) -> str:
    """C{address:port}, with an IPv6 address in brackets."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


@dataclass(frozen=True)
class Backend:
    """
    A place connections are forwarded to.

    @ivar address: an IP address, or a host name resolved at each connect.
    """

    address: str
    port: int

    def __str__(self) -> str:
        return endpoint_text(self.address, self.port)


@dataclass(frozen=True)
class ListenerSpec:
    """
    One listener: connections to C{address}:C{port} go to C{backends}.

    @ivar host: the ServiceEntry host the address stands for.
    @ivar source: the ServiceEntry it comes from, for messages.
    @ivar backends: used in turn, one per connection.
    """

    address: str
    port: int
    host: str
    source: str
    backends: tuple[Backend, ...]

    @property
    def key(self) -> tuple[str, int]:
        """What identifies a listening socket."""
        return (self.address, self.port)

    def __str__(self) -> str:
        return f"{endpoint_text(self.address, self.port)} ({self.host})"


@dataclass(frozen=True)
class ListenerPlan:
    """
    The listeners a load asks for.

    @ivar listeners: one per (address, port), in entry order.
    @ivar notes: one line per TCP port that gets no listener, saying why.
    @ivar collisions: each (address, port) that a later host also claims;
        the first host keeps it.
    """

    listeners: tuple[ListenerSpec, ...] = ()
    notes: tuple[str, ...] = ()
    collisions: tuple[Collision, ...] = ()


def is_tcp(protocol: str) -> bool:
    """Whether an Istio port protocol runs over TCP: every one but UDP."""
    return protocol.upper() != "UDP"


def _backends(entry: ServiceEntry, host: str, port: Port) -> tuple[Backend, ...]:
    """
    Where connections to C{host}'s C{port} go, as Istio's clusters would send
    them: the entry's endpoints (at their own port for this port's name, else
    C{targetPort}, else the port itself); without endpoints, for DNS
    resolution, the host itself.
    """
    default = port.target_port or port.number
    if entry.endpoints:
        return tuple(
            Backend(endpoint.address, endpoint.ports.get(port.name, default))
            for endpoint in entry.endpoints
        )
    if entry.resolution in DNS_RESOLUTIONS and not host.startswith("*"):
        return (Backend(host, default),)
    return ()


def _no_backend_reason(entry: ServiceEntry, host: str) -> str:
    if entry.resolution == "NONE":
        return "resolution NONE without endpoints: connections go to the address itself"
    if host.startswith("*"):
        return "a wildcard host cannot be resolved, and there are no endpoints"
    return f"resolution {entry.resolution} without endpoints: nowhere to forward to"


def listener_plan(view: MeshView) -> ListenerPlan:
    """
    The listeners of a mesh view: for each TCP port of each visible
    ServiceEntry host, one listener per address that DNS answers for the
    host (explicit, status or VIP).

    When several hosts claim one (address, port), the first in file order
    keeps it; the others are collisions.
    """
    specs: dict[tuple[str, int], ListenerSpec] = {}
    notes: list[str] = []
    collisions: list[Collision] = []
    for entry in view.service_entries:
        for host in entry.hosts:
            found = view.hosts.get(host)
            addresses = found.addresses if found is not None else ()
            for port in entry.ports:
                if not is_tcp(port.protocol):
                    continue
                where = f"{entry.origin}: {host} port {port.number}"
                if not addresses:
                    notes.append(f"{where}: no address and no VIP: no listener")
                    continue
                backends = _backends(entry, host, port)
                if not backends:
                    notes.append(f"{where}: {_no_backend_reason(entry, host)}: no listener")
                    continue
                for address in addresses:
                    spec = ListenerSpec(address, port.number, host, str(entry.origin), backends)
                    taken = specs.setdefault(spec.key, spec)
                    if taken is not spec and taken.host != host:
                        collisions.append(
                            Collision(
                                address,
                                port.number,
                                f"{taken.host} ({taken.source})",
                                f"{host} ({entry.origin}), which gets no listener",
                            )
                        )
    return ListenerPlan(tuple(specs.values()), tuple(notes), tuple(collisions))


def collisions(view: MeshView) -> tuple[Collision, ...]:
    """
    Every collision of a view: addresses two hosts answer (the view's own),
    then listeners two hosts claim (L{listener_plan}'s); what the log,
    C{meshdns check} and C{/debug/problems} report alike.
    """
    return (*view.collisions, *listener_plan(view).collisions)


def listeners_document(plan: ListenerPlan) -> dict[str, Any]:
    """
    The VIP listeners of a plan as JSON-able data, for C{/debug/listeners}
    and C{meshdns listeners}: each one's address, port and host.
    """
    return {
        "listeners": [
            {"address": spec.address, "port": spec.port, "host": spec.host}
            for spec in plan.listeners
        ]
    }
