"""
A paced DNS load that retries nothing, for the handover tests: every query
is sent once (UDP) or on a connection of its own (TCP), at a fixed rate, and
every one that gets no reply is counted, with its name and what went wrong.

It runs in a thread of its own (L{LoadThread}) so that a test can start and
stop processes while it runs; the bound on everything is the query count
over the rate, plus C{wait} seconds for the last replies.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import dns.message
import dns.rcode

#: UDP client sockets the queries are spread over (as many clients would).
UDP_SOCKETS = 32


@dataclass
class LoadResult:
    """
    @ivar sent: queries sent.
    @ivar answered: queries that got a reply (any rcode).
    @ivar failures: C{(index, name, reason)} of each query without a reply,
        or whose reply was not NOERROR (the index tells when it was sent).
    @ivar seconds: from the first query sent to the last.
    """

    sent: int = 0
    answered: int = 0
    failures: list[tuple[int, str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def unanswered(self) -> int:
        return self.sent - self.answered


def _query(name: str, qid: int) -> bytes:
    query = dns.message.make_query(name, "A")
    query.id = qid
    return query.to_wire()


async def _paced(names: Sequence[str], rate: float, send) -> float:
    """Call C{send(index, name)} for each name at C{rate} per second; the seconds taken."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for index, name in enumerate(names):
        delay = start + index / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        send(index, name)
    return loop.time() - start


class _Replies(asyncio.DatagramProtocol):
    def __init__(self, got: dict[int, int]) -> None:
        self.got = got

    def datagram_received(self, data: bytes, addr) -> None:
        if len(data) >= 4:
            self.got.setdefault(struct.unpack("!H", data[:2])[0], data[3] & 0x0F)


async def udp_load(address: str, port: int, names: Sequence[str], rate: float, wait: float
                   ) -> LoadResult:
    """
    Send each of C{names} once over UDP from L{UDP_SOCKETS} sockets (query
    N on socket N mod L{UDP_SOCKETS}, its ID N // L{UDP_SOCKETS}).
    """
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    got: list[dict[int, int]] = [{} for _ in range(UDP_SOCKETS)]
    transports = []
    for replies in got:
        transport, _ = await loop.create_datagram_endpoint(
            lambda replies=replies: _Replies(replies), remote_addr=(address, port), family=family
        )
        transports.append(transport)

    def send(index: int, name: str) -> None:
        transports[index % UDP_SOCKETS].sendto(_query(name, index // UDP_SOCKETS))

    result = LoadResult(sent=len(names))
    result.seconds = await _paced(names, rate, send)
    deadline = loop.time() + wait
    while sum(map(len, got)) < len(names) and loop.time() < deadline:
        await asyncio.sleep(0.05)
    for transport in transports:
        transport.close()
    for index, name in enumerate(names):
        rcode = got[index % UDP_SOCKETS].get(index // UDP_SOCKETS)
        if rcode is None:
            result.failures.append((index, name, "no reply"))
            continue
        result.answered += 1
        if rcode != dns.rcode.NOERROR:
            result.failures.append((index, name, dns.rcode.to_text(rcode)))
    return result


async def _tcp_query(address: str, port: int, name: str, timeout: float) -> int:
    """One query on a connection of its own; its reply's rcode."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(address, port), timeout)
    try:
        data = _query(name, 1)
        writer.write(struct.pack("!H", len(data)) + data)
        length = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), timeout))[0]
        reply = await asyncio.wait_for(reader.readexactly(length), timeout)
        return reply[3] & 0x0F
    finally:
        writer.close()


async def tcp_load(address: str, port: int, names: Sequence[str], rate: float, wait: float
                   ) -> LoadResult:
    """Send each of C{names} once over TCP, a connection per query."""
    tasks: list[asyncio.Task] = []

    def send(index: int, name: str) -> None:
        tasks.append(asyncio.ensure_future(_tcp_query(address, port, name, wait)))

    result = LoadResult(sent=len(names))
    result.seconds = await _paced(names, rate, send)
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    for index, (name, outcome) in enumerate(zip(names, outcomes, strict=True)):
        if isinstance(outcome, BaseException):
            result.failures.append((index, name, repr(outcome)))
            continue
        result.answered += 1
        if outcome != dns.rcode.NOERROR:
            result.failures.append((index, name, dns.rcode.to_text(outcome)))
    return result


class LoadThread(threading.Thread):
    """
    L{udp_load} or L{tcp_load} in a thread of its own; L{result} once
    joined.
    """

    def __init__(self, address: str, port: int, names: Sequence[str], rate: float,
                 tcp: bool = False, wait: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.run_load = tcp_load if tcp else udp_load
        self.arguments = (address, port, names, rate, wait)
        self.result: LoadResult | None = None
        self.started_at = 0.0

    def run(self) -> None:
        self.started_at = time.monotonic()
        self.result = asyncio.run(self.run_load(*self.arguments))
