# -*- test-case-name: tests.unit.ops.test_querylog -*-
"""
Query logging (C{log.queries: true}): one line per answered query, with the
client, the question, the rcode, the answers and the time taken.

It is a subclass of the server factory chosen at start-up, not a flag tested
per query, so that with logging off (the default) the query path carries no
trace of it. The reply is decoded with dnspython only to be logged, after it
has been sent.
"""

from __future__ import annotations

import time
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
from twisted.logger import Logger

from meshdns_plugin.dns.server import MeshDNSServerFactory

_log = Logger()


def describe_reply(data: bytes) -> tuple[str, str]:
    """
    C{(question, outcome)} of a reply, as a log line shows them:
    C{("auto.internal. A", "NOERROR 240.240.0.1")}.
    """
    try:
        message = dns.message.from_wire(data, ignore_trailing=True)
    except dns.exception.DNSException as e:
        return "?", f"unreadable reply ({e})"
    question = " ".join(
        f"{q.name} {dns.rdatatype.to_text(q.rdtype)}" for q in message.question
    ) or "?"
    outcome = [dns.rcode.to_text(message.rcode())]
    if message.flags & dns.flags.TC:
        outcome.append("truncated")
    outcome.extend(
        f"{rrset.name} CNAME {rdata}" if rrset.rdtype == dns.rdatatype.CNAME else rdata.to_text()
        for rrset in message.answer
        for rdata in rrset
    )
    return question, " ".join(outcome)


class _ReplyLogger:
    """
    Stands in for the protocol while one query is answered: forwards the
    reply, then logs it. Anything else is the protocol's.
    """

    def __init__(self, protocol: Any, client: str, transport: str) -> None:
        self._protocol = protocol
        self._client = client
        self._transport = transport
        self._started = time.monotonic()

    def writeBytes(self, data: bytes, *address: Any) -> None:
        self._protocol.writeBytes(data, *address)
        question, outcome = describe_reply(data)
        _log.info(
            "Query from {client} ({transport}): {question} -> {outcome} ({ms:.1f} ms)",
            client=self._client,
            transport=self._transport,
            question=question,
            outcome=outcome,
            ms=(time.monotonic() - self._started) * 1000,
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._protocol, name)


class QueryLoggingFactory(MeshDNSServerFactory):
    """
    A L{MeshDNSServerFactory} that logs every reply it sends.

    It gives no reply from the memo: every query goes through
    L{packetReceived}, where the reply is logged.
    """

    def memoized(self, data: bytes, host: str, local_only: bool = False) -> None:
        return None

    def packetReceived(self, data: bytes, proto: Any, address: Any = None) -> None:
        if address is not None:
            client, transport = f"{address[0]}:{address[1]}", "udp"
        else:
            peer = proto.transport.getPeer() if proto.transport is not None else None
            client, transport = (f"{peer.host}:{peer.port}" if peer else "?"), "tcp"
        super().packetReceived(data, _ReplyLogger(proto, client, transport), address)
