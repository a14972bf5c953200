# -*- test-case-name: tests.unit.dns.test_health,tests.integration.test_upstream_health -*-
"""
One question asked of the upstream servers until one gives a reply that is
not SERVFAIL or REFUSED, or the deadline passes.

The servers that are up (L{meshdns_plugin.dns.health}) are asked in the
configured order, each given its own timeout (its smoothed round-trip time)
before the next is asked. An attempt whose timeout passed is not closed: its
server is marked down, but a late reply from it is still taken until the
deadline, so a slow server loses nothing to a fast timeout. The last server
to ask gets whatever time remains. When no server is up, or every server
that was up has failed, those not asked yet are asked all at once: when all
are down, waiting on each in turn only adds their timeouts up.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from meshdns_plugin.dns.health import ServerHealth
from meshdns_plugin.dns.message import (
    REFUSED,
    SERVFAIL,
    TC,
    MalformedMessage,
    UpstreamReply,
    read_reply,
)
from meshdns_plugin.dns.stats import (
    MALFORMED,
    NETWORK,
    REFUSED_REPLY,
    SERVFAIL_REPLY,
    TIMEOUT,
    UpstreamStats,
)

#: What a finished attempt gives: the reply bytes, or L{None} and why not.
AttemptDone = Callable[[bytes | None, str], None]

#: Why an attempt ends without a reply when its time is up.
TIMED_OUT = "timeout"

#: TCP needs a handshake before the query: twice the UDP timeout.
TCP_TIMEOUT_FACTOR = 2


class Cancellable(Protocol):
    """An attempt in flight, which can be dropped without calling back."""

    def cancel(self) -> None: ...


class Sender(Protocol):
    """What an exchange needs of the upstream client."""

    reactor: IReactorTime
    timeout: float
    stats: UpstreamStats
    health: Sequence[ServerHealth]

    def send_datagram(
        self, server: tuple[str, int], packet: bytes, question: bytes, seconds: float,
        done: AttemptDone,
    ) -> Cancellable: ...

    def send_stream(
        self, server: tuple[str, int], packet: bytes, question: bytes, seconds: float,
        done: AttemptDone,
    ) -> Cancellable: ...


class _Try:
    """One attempt of the exchange: to which server, how, since when."""

    __slots__ = ("health", "tcp", "sent_at", "waited", "attempt", "move_on", "timed_out")

    def __init__(self, health: ServerHealth, tcp: bool, sent_at: float, waited: float) -> None:
        self.health = health
        self.tcp = tcp
        self.sent_at = sent_at
        #: The timeout after which the next server is asked.
        self.waited = waited
        self.attempt: Cancellable | None = None
        self.move_on: IDelayedCall | None = None
        #: Whether its timeout was already counted against its server.
        self.timed_out = False


class Exchange:
    """
    See the module docstring.

    @ivar failures: why each attempt failed, for the log.
    """

    def __init__(
        self,
        client: Sender,
        packet_tail: bytes,
        question: bytes,
        tcp: bool,
        done: Callable[[UpstreamReply | None, list[str]], None],
    ) -> None:
        """
        @param packet_tail: the query without its ID.
        @param question: the question section, lowercased.
        @param tcp: ask over TCP from the start.
        @param done: called once with the reply (or the last SERVFAIL or
            REFUSED one; L{None} if no server replied) and the failures.
        """
        self._client = client
        self._tail = packet_tail
        self._question = question
        self._question_end = 12 + len(question)
        self._tcp = tcp
        self._done: Callable[[UpstreamReply | None, list[str]], None] | None = done
        self._last: UpstreamReply | None = None
        self._asked: set[int] = set()
        self._open: list[_Try] = []
        #: The attempt whose timeout decides when the next server is asked.
        self._current: _Try | None = None
        self.failures: list[str] = []
        self._deadline = client.reactor.seconds() + client.timeout
        self._next()

    def _remaining(self) -> float:
        return self._deadline - self._client.reactor.seconds()

    def _next(self) -> None:
        """Ask the first server that is up and not asked yet, or else all the others at once."""
        if self._done is None:
            return
        healths = self._client.health
        waiting = [i for i in range(len(healths)) if i not in self._asked]
        up = [i for i in waiting if healths[i].up]
        if up:
            self._send(up[0], self._tcp, alone=len(waiting) == 1)
        elif waiting:
            for index in waiting:
                self._send(index, self._tcp, alone=True)
        elif not self._open:
            self._end()

    def _send(self, index: int, tcp: bool, alone: bool) -> None:
        """
        Ask server C{index}; unless C{alone} (nobody else is left to ask),
        ask the next one after its timeout.
        """
        client = self._client
        remaining = self._remaining()
        if remaining <= 0:
            self.failures.append("deadline passed")
            if not self._open:
                self._end()
            return
        self._asked.add(index)
        health = client.health[index]
        waited = health.timeout * (TCP_TIMEOUT_FACTOR if tcp else 1)
        attempt = _Try(health, tcp, client.reactor.seconds(), waited)
        self._open.append(attempt)
        client.stats.sent += 1
        health.counters.queries += 1
        packet = os.urandom(2) + self._tail

        def replied(data: bytes | None, why: str) -> None:
            self._replied(attempt, data, why)

        send = client.send_stream if tcp else client.send_datagram
        attempt.attempt = send(health.server, packet, self._question, remaining, replied)
        if attempt not in self._open:
            return  # failed at once (an unusable address)
        if not alone and waited < remaining:
            self._current = attempt
            attempt.move_on = client.reactor.callLater(waited, self._moveOn, attempt)

    def _moveOn(self, attempt: _Try) -> None:
        """C{attempt}'s timeout passed: its server is down; ask the next one, still listening."""
        attempt.move_on = None
        attempt.timed_out = True
        attempt.health.failed(TIMEOUT, attempt.waited)
        self._note(attempt, "no reply within its timeout, still listening")
        if self._current is attempt:
            self._current = None
            self._next()

    def _note(self, attempt: _Try, why: str) -> None:
        server = attempt.health.server
        transport = "TCP" if attempt.tcp else "UDP"
        self.failures.append(f"{server[0]}:{server[1]} ({transport}): {why}")

    def _replied(self, attempt: _Try, data: bytes | None, why: str) -> None:
        if self._done is None or attempt not in self._open:
            return
        self._open.remove(attempt)
        move_on, attempt.move_on = attempt.move_on, None
        if move_on is not None and move_on.active():
            move_on.cancel()
        health = attempt.health
        if data is None:
            if not attempt.timed_out:
                health.failed(TIMEOUT if why == TIMED_OUT else NETWORK, attempt.waited)
            self._note(attempt, why)
            self._failed(attempt)
            return
        rtt = None if attempt.tcp else self._client.reactor.seconds() - attempt.sent_at
        if data[2] << 8 & TC and not attempt.tcp:
            health.answered(rtt)
            index = self._client.health.index(health)
            self._asked.discard(index)
            if self._current is attempt:
                self._current = None
            waiting = [i for i in range(len(self._client.health)) if i not in self._asked]
            self._send(index, tcp=True, alone=len(waiting) == 1)
            return
        try:
            reply = read_reply(data, self._question_end)
        except MalformedMessage as e:
            health.failed(MALFORMED)
            self._note(attempt, f"malformed reply: {e}")
            self._failed(attempt)
            return
        if reply.rcode in (SERVFAIL, REFUSED):
            name = "SERVFAIL" if reply.rcode == SERVFAIL else "REFUSED"
            health.failed(SERVFAIL_REPLY if reply.rcode == SERVFAIL else REFUSED_REPLY)
            self._note(attempt, name)
            self._last = reply
            self._failed(attempt)
            return
        health.answered(rtt)
        self._finish(reply)

    def _failed(self, attempt: _Try) -> None:
        """C{attempt} ended without an answer: ask on, or end if nothing is left."""
        if self._current is attempt:
            self._current = None
            self._next()
        elif self._current is None:
            self._next()

    def _finish(self, reply: UpstreamReply | None) -> None:
        """Drop every attempt still open and give C{reply}."""
        for attempt in self._open:
            if attempt.move_on is not None and attempt.move_on.active():
                attempt.move_on.cancel()
            if attempt.attempt is not None:
                attempt.attempt.cancel()
        self._open.clear()
        self._current = None
        done, self._done = self._done, None
        if done is not None:
            done(reply, self.failures)

    def _end(self) -> None:
        self._finish(self._last)
