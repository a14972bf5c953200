"""
Upstream queries that resist spoofing (issue 11, "Done when"), tested from
outside: the real C{twistd -n meshdns} forwards to a small UDP upstream run by
the test itself on C{127.0.0.44}, which records where each query came from and
can send forged replies before the genuine one.

An off-path attacker must guess the source port and the ID of a query and
answer its question from the server's address and port (RFC 5452 section 9.1);
so each query should leave from a fresh random port with a random ID, and a
reply that gets any of these wrong is ignored, the genuine one still taken.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rrset
import pytest

from tests.support.processes import MeshdnsProcess, launch_meshdns

#: The stand-in upstream's address, and where wrong-address forgeries come from.
SERVER_ADDRESS = "127.0.0.44"
OTHER_ADDRESS = "127.0.0.45"
ZONE = dns.name.from_text("spoof.test.")
GENUINE = "192.0.2.1"
FORGED = "192.0.2.66"
#: How long after a forgery the genuine reply is sent.
GENUINE_AFTER = 0.1
#: Queries in the source-port test, and the fewest distinct ports they need.
QUERIES = 1000
MIN_PORTS = 500


@dataclass(frozen=True)
class Received:
    """One query meshdns sent upstream."""

    port: int
    ident: int
    name: str


class StandInUpstream:
    """
    A UDP upstream on L{SERVER_ADDRESS}, served by one thread: records every
    query and answers C{NAME A GENUINE}, after a forgery first when the name's
    first label says so (C{wrong-port-*}, C{wrong-address-*}, C{wrong-id-*},
    C{wrong-question-*}); C{mixed-case-*} names are answered (only) with the
    question and owner in the opposite letter case.
    """

    def __init__(self) -> None:
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((SERVER_ADDRESS, 0))
        self.port = self.sock.getsockname()[1]
        self.sock.settimeout(0.2)
        # Forgeries from the right address but another port, and from
        # another address with the right port.
        self.other_port = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.other_port.bind((SERVER_ADDRESS, 0))
        self.other_address = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.other_address.bind((OTHER_ADDRESS, self.port))
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def server(self) -> str:
        return f"{SERVER_ADDRESS}:{self.port}"

    def queries(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for sock in (self.sock, self.other_port, self.other_address):
            sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            query = dns.message.from_wire(data)
            name = query.question[0].name
            with self._lock:
                self.received.append(Received(peer[1], query.id, name.to_text().lower()))
            self._answer(query, name, peer)

    def _answer(self, query: dns.message.Message, name: dns.name.Name, peer: tuple) -> None:
        kind = name.labels[0].decode().lower().rsplit("-", 1)[0]
        if kind == "mixed-case":
            swapped = dns.name.from_text(name.to_text().swapcase())
            self.sock.sendto(_reply(query, swapped, GENUINE), peer)
            return
        genuine = _reply(query, name, GENUINE)
        if kind == "wrong-port":
            self.other_port.sendto(_reply(query, name, FORGED), peer)
        elif kind == "wrong-address":
            self.other_address.sendto(_reply(query, name, FORGED), peer)
        elif kind == "wrong-id":
            self.sock.sendto(_reply(query, name, FORGED, ident=query.id ^ 0x5A5A), peer)
        elif kind == "wrong-question":
            other = dns.name.from_text("other", ZONE)
            self.sock.sendto(_reply(query, other, FORGED), peer)
        else:
            self.sock.sendto(genuine, peer)
            return
        timer = threading.Timer(GENUINE_AFTER, self._send_late, (genuine, peer))
        timer.daemon = True
        timer.start()

    def _send_late(self, data: bytes, peer: tuple) -> None:
        try:
            self.sock.sendto(data, peer)
        except OSError:
            pass  # stopped while the genuine reply waited


def _reply(
    query: dns.message.Message, name: dns.name.Name, address: str, ident: int | None = None
) -> bytes:
    """A response to C{query} about C{name} (the question too) with A C{address}."""
    response = dns.message.make_response(query)
    asked = query.question[0]
    response.question = [dns.rrset.RRset(name, asked.rdclass, asked.rdtype)]
    response.answer.append(dns.rrset.from_text(name, 300, "IN", "A", address))
    if ident is not None:
        response.id = ident
    return response.to_wire()


@pytest.fixture(scope="module")
def stand_in() -> Iterator[StandInUpstream]:
    upstream = StandInUpstream()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def meshdns(
    stand_in: StandInUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MeshdnsProcess]:
    process = launch_meshdns(
        tmp_path_factory.mktemp("meshdns"),
        {"upstream": {"servers": [stand_in.server], "timeout": 2}},
    )
    yield process
    process.stop()


@pytest.fixture(scope="module")
def consecutive(meshdns: MeshdnsProcess, stand_in: StandInUpstream) -> list[Received]:
    """The upstream queries of L{QUERIES} distinct names (none cached, none merged)."""
    start = len(stand_in.queries())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for i in range(QUERIES):
            query = dns.message.make_query(f"port-{i}.spoof.test.", "A")
            reply = dns.query.udp(query, meshdns.address, port=meshdns.port, timeout=5, sock=sock)
            assert reply.rcode() == dns.rcode.NOERROR
    received = stand_in.queries()[start:]
    assert sorted(r.name for r in received) == sorted(
        f"port-{i}.spoof.test." for i in range(QUERIES)
    )
    return received


def test_queries_leave_from_many_source_ports(consecutive: list[Received]) -> None:
    ports = {r.port for r in consecutive}
    assert len(ports) >= MIN_PORTS, f"{QUERIES} upstream queries from {len(ports)} ports"


def test_query_ids_are_random(consecutive: list[Received]) -> None:
    """
    1,000 random 16-bit IDs repeat about 8 times (birthday bound): far fewer
    than 50 repeats, and no simple sequence.
    """
    ids = [r.ident for r in consecutive]
    assert len(set(ids)) >= QUERIES - 50
    steps = {(b - a) & 0xFFFF for a, b in zip(ids, ids[1:], strict=False)}
    assert len(steps) > QUERIES / 2


@pytest.mark.parametrize("kind", ["wrong-port", "wrong-address", "wrong-id", "wrong-question"])
def test_forged_reply_ignored_genuine_taken(meshdns, stand_in, kind) -> None:
    """
    The forged reply (A C{192.0.2.66}) arrives first, the genuine one (A
    C{192.0.2.1}) 0.1 s later: the client gets the genuine answer, so the
    forgery was neither taken nor allowed to end the wait.
    """
    name = f"{kind}-1.spoof.test."
    reply = meshdns.query(name, timeout=5)
    assert reply.rcode() == dns.rcode.NOERROR, f"{kind}: the forgery ended the wait"
    assert [rdata.address for rrset in reply.answer for rdata in rrset] == [GENUINE]
    assert [r.name for r in stand_in.queries()].count(name) == 1


def test_question_in_other_letter_case_accepted(meshdns, stand_in) -> None:
    """DNS names compare case-insensitively (RFC 4343): the reply is about the question."""
    name = "mixed-case-1.spoof.test."
    reply = meshdns.query(name, timeout=5)
    assert reply.rcode() == dns.rcode.NOERROR
    assert [rdata.address for rrset in reply.answer for rdata in rrset] == [GENUINE]
