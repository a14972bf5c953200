# -*- test-case-name: tests.unit.dns.test_clusterauthority -*-
"""
Authority for the cluster domain: NXDOMAIN, with the SOA kube-dns gives,
for the names under C{<cluster_domain>} that do not exist
(L{meshdns_plugin.mesh.clusternames}), without asking upstream.

Only a source that holds every Service of the cluster can say a name does
not exist: the Kubernetes API source watching every namespace, once every
kind has been listed. With entry files alone, or before that, nothing is
claimed and every such name goes upstream as before. A name the mesh
answers (a ServiceEntry host under the cluster domain, say) is never
claimed either.

The SOA is CoreDNS's (C{plugin/backend_lookup.go}): C{<zone> SOA
ns.dns.<zone> hostmaster.<zone> <serial> 7200 1800 86400 <ttl>}, with the
kubernetes plugin's default TTL of 5 s as its TTL and MINIMUM. Its serial
is the time of the answer (CoreDNS gives the time of the last change it saw).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from meshdns_plugin.dns.message import (
    AA,
    CLASS_IN,
    HEADER,
    NXDOMAIN,
    QR,
    RD,
    TYPE_SOA,
    Query,
    UpstreamReply,
    name_to_wire,
    read_reply,
    wire_to_name,
)
from meshdns_plugin.mesh.clusternames import absent
from meshdns_plugin.mesh.table import NameTable

#: The TTL and negative TTL of the SOA (CoreDNS kubernetes' default C{ttl}).
SOA_TTL = 5


@dataclass(slots=True)
class ClusterReply(UpstreamReply):
    """
    An NXDOMAIN of the cluster authority, read as an upstream reply: the
    server renders it with AA, as kube-dns's own, wherever it ends up (a
    plain query's answer, or autopath's original name's).
    """


@dataclass
class ClusterAuthorityStats:
    """@ivar nxdomains: names answered NXDOMAIN here (autopath's candidates included)."""

    nxdomains: int = 0


class ClusterAuthority:
    """
    Says which queries get a local NXDOMAIN, and gives it.

    @ivar stats: the L{ClusterAuthorityStats}.
    """

    def __init__(
        self,
        zone: str,
        service_exists: Callable[[str, str], bool],
        ready: Callable[[], bool],
        clock: Callable[[], float] = time.time,
    ) -> None:
        """
        @param zone: the cluster domain.
        @param service_exists: whether the cluster has the Service
            C{(namespace, name)}.
        @param ready: whether the source holds every Service of the cluster
            now (checked at each query).
        @param clock: gives the SOA's serial.
        """
        self.zone = zone.lower().rstrip(".").encode()
        self._exists = service_exists
        self._ready = ready
        self._clock = clock
        self._zone_wire = name_to_wire(self.zone)
        self._soa_names = name_to_wire(b"ns.dns." + self.zone) + name_to_wire(
            b"hostmaster." + self.zone
        )
        self.stats = ClusterAuthorityStats()

    def answer(self, query: Query, table: NameTable) -> ClusterReply | None:
        """
        The NXDOMAIN reply for C{query}, if its name is under the zone,
        absent from the cluster and unknown to C{table}; else L{None} (it goes
        upstream). Read as an upstream reply, so that it is rendered, and
        taken by autopath, as any other.
        """
        if not query.key.endswith(self._zone_wire) or not self._ready():
            return None
        name = wire_to_name(query.key)
        if not absent(name, self.zone, self._exists):
            return None
        if table.resolve(name) is not None or table.cname(name) is not None:
            return None
        self.stats.nxdomains += 1
        rdata = self._soa_names + struct.pack(
            "!IIIII", int(self._clock()) & 0xFFFFFFFF, 7200, 1800, 86400, SOA_TTL
        )
        soa = (
            self._zone_wire
            + struct.pack("!HHIH", TYPE_SOA, CLASS_IN, SOA_TTL, len(rdata))
            + rdata
        )
        question = query.key + query.qtype.to_bytes(2) + query.qclass.to_bytes(2)
        data = HEADER.pack(0, QR | AA | RD | NXDOMAIN, 1, 0, 1, 0) + question + soa
        reply = read_reply(data, 12 + len(question))
        return ClusterReply(
            reply.data,
            reply.rcode,
            reply.flags,
            reply.question_end,
            reply.ttl_offsets,
            reply.ttls,
            reply.min_ttl,
            reply.negative_ttl,
            reply.options,
        )
