# -*- test-case-name: tests.unit.dns.test_health,tests.integration.test_upstream_health -*-
"""
Each upstream server's health: whether it is asked in turn, and how long an
attempt waits for it before the next server is asked.

A server that fails an attempt (no reply within its timeout, a network
error, SERVFAIL or REFUSED) is marked down: exchanges skip it while another
server is up, so a dead first server costs one client one timeout, not every
client every time. While it is down it is probed in the background (the
root's NS, as CoreDNS's forward plugin asks), first after L{FIRST_PROBE}
seconds, then twice as long after each failed probe up to
C{probe_max_interval}; any reply that is not SERVFAIL or REFUSED, to a probe
or to a client's query still open, marks it up again, and the configured
order puts it first again.

The timeout of an attempt follows the server's smoothed round-trip time as
unbound's infra cache computes it (Stevens' retransmission timer): an
unknown server gets L{UNKNOWN_TIMEOUT}; each reply over UDP updates the
smoothed RTT (gain 1/8) and its mean deviation (gain 1/4); the timeout is
the RTT plus four deviations, at least L{MIN_TIMEOUT}; a timeout doubles the
timeout the lost attempt had.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from meshdns_plugin.dns.stats import TIMEOUT, ServerCounters

_log = Logger()

#: The first attempt's timeout for a server never heard from (unbound's).
UNKNOWN_TIMEOUT = 0.376
#: The least timeout of an attempt, however fast the server has been:
#: unbound's floor for authoritative servers. A recursive upstream's cold
#: answer can take longer; its reply still counts while the exchange lasts
#: (see L{meshdns_plugin.dns.exchange}), so it is marked up again at once.
MIN_TIMEOUT = 0.05
#: Seconds from a server going down to its first probe.
FIRST_PROBE = 0.25
#: The default bound of the interval between two probes of a down server.
PROBE_MAX_INTERVAL = 10.0

#: Sends one probe to a server and calls back with whether it answered
#: well and, if so, the round-trip time.
ProbeSender = Callable[["ServerHealth", float, Callable[[bool, float], None]], None]


class ServerHealth:
    """
    The state of one upstream server (see the module docstring).

    @ivar server: C{(ip, port)}.
    @ivar up: whether exchanges ask it in turn.
    @ivar timeout: seconds an attempt waits for it before moving on.
    @ivar counters: its L{ServerCounters}, which the metrics read.
    """

    def __init__(
        self,
        server: tuple[str, int],
        reactor: IReactorTime,
        send_probe: ProbeSender,
        max_timeout: float,
        probe_max_interval: float = PROBE_MAX_INTERVAL,
    ) -> None:
        """
        @param send_probe: how a probe is sent (by the upstream client).
        @param max_timeout: the most an attempt or a probe waits (the whole
            forward's deadline).
        @param probe_max_interval: the bound of the probe backoff.
        """
        self.server = server
        self.up = True
        self.counters = ServerCounters(f"{server[0]}:{server[1]}")
        self._reactor = reactor
        self._send_probe = send_probe
        self._max_timeout = max(max_timeout, MIN_TIMEOUT)
        self._probe_max_interval = max(probe_max_interval, FIRST_PROBE)
        self._srtt = 0.0
        self._rttvar = UNKNOWN_TIMEOUT / 4
        self.timeout = self._computed_timeout()
        self.counters.timeout = self.timeout
        self._probe_interval = FIRST_PROBE
        self._probe_call: IDelayedCall | None = None
        self._probing = False

    def _computed_timeout(self) -> float:
        return min(max(self._srtt + 4 * self._rttvar, MIN_TIMEOUT), self._max_timeout)

    def answered(self, rtt: float | None) -> None:
        """
        The server replied (not SERVFAIL or REFUSED) after C{rtt} seconds
        (L{None}: over TCP, whose handshake is no round-trip sample).
        """
        if rtt is not None:
            delta = rtt - self._srtt
            self._srtt += delta / 8
            self._rttvar += (abs(delta) - self._rttvar) / 4
            self.timeout = self._computed_timeout()
            self.counters.timeout = self.timeout
            self.counters.rtt.observe(rtt)
        if not self.up:
            self._mark_up()

    def failed(self, kind: str, waited: float | None = None) -> None:
        """
        An attempt failed; C{kind} is one of L{meshdns_plugin.dns.stats.FAILURE_KINDS}.

        @param waited: for a timeout, the timeout the attempt had: the next
            one waits twice that (unbound's exponential backoff, doubling
            the lost attempt's timeout, not the current one, so that many
            queries timing out together double it once).
        """
        self.counters.failures[kind] += 1
        if kind == TIMEOUT and waited is not None and self.timeout <= 2 * waited:
            self.timeout = min(2 * waited, self._max_timeout)
            self.counters.timeout = self.timeout
        if self.up:
            self._mark_down(kind)

    def _mark_down(self, kind: str) -> None:
        self.up = False
        self.counters.up = False
        self._probe_interval = FIRST_PROBE
        _log.warn(
            "Upstream {server} is down ({kind}): other servers are asked first; "
            "probing it until it answers",
            server=self.counters.server,
            kind=kind,
        )
        self._schedule_probe()

    def _mark_up(self) -> None:
        self.up = True
        self.counters.up = True
        call, self._probe_call = self._probe_call, None
        if call is not None and call.active():
            call.cancel()
        _log.info("Upstream {server} answers again", server=self.counters.server)

    def _schedule_probe(self) -> None:
        # A little jitter, so that the probes of several servers that went
        # down together do not leave together forever.
        delay = self._probe_interval * random.uniform(0.9, 1.0)
        self._probe_call = self._reactor.callLater(delay, self._probe)

    def _probe(self) -> None:
        self._probe_call = None
        if self.up or self._probing:
            return
        self._probing = True
        self.counters.probes += 1
        self._send_probe(self, min(self.timeout, self._max_timeout), self._probed)

    def _probed(self, ok: bool, rtt: float) -> None:
        self._probing = False
        if self.up:
            return
        if ok:
            self.answered(rtt)
            return
        # The server may be back but slower than it was: wait longer next time.
        self.timeout = min(2 * self.timeout, self._max_timeout)
        self.counters.timeout = self.timeout
        self._probe_interval = min(self._probe_interval * 2, self._probe_max_interval)
        self._schedule_probe()

    def stop(self) -> None:
        """Stop probing (the forwarder is closing)."""
        call, self._probe_call = self._probe_call, None
        if call is not None and call.active():
            call.cancel()
