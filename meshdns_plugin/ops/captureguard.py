# -*- test-case-name: tests.unit.ops.test_captureguard -*-
"""
Refuse to start a meshdns whose own upstream queries DNS capture would send
back to it.

C{meshdns capture install} redirects port 53 except for one uid and one gid,
meshdns's own (1337 by default, as Istio's). A meshdns running as anyone else
(root, say, without twistd's C{--uid}) has its upstream queries redirected to
itself: every forwarded name ends in SERVFAIL after the timeout, and nothing
says why. meshdns refuses to start then, rather than warn: a looping proxy
answers nothing outside the mesh while looking healthy, which is worse than
no proxy, and the fix is one option.

L{parse_capture} and L{capture_loop} decide, from the rules and nothing else
(no tables, no process state), so that the rule is tested without root;
L{CaptureGuard} gathers the rules and the process's uid and gid at start-up.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from twisted.application import service
from twisted.logger import Logger

from meshdns_plugin.ops.capture import installed_rules
from meshdns_plugin.ops.capturerules import CaptureError
from meshdns_plugin.resolvconf import DNS_PORT

_log = Logger()

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class CaptureLoopError(Exception):
    """
    DNS capture would send meshdns's upstream queries back to it; C{str()}
    is one line saying so and naming the fix.
    """


@dataclass(frozen=True)
class Exclusion:
    """
    One C{RETURN} rule matching the socket's owner: traffic of a uid in
    C{uids} and a gid in C{gids} (either L{None}: any) is not captured.
    """

    uids: range | None
    gids: range | None

    def covers(self, uid: int, gid: int) -> bool:
        """Whether traffic of C{uid} and C{gid} returns here."""
        return (self.uids is None or uid in self.uids) and (self.gids is None or gid in self.gids)


@dataclass(frozen=True)
class Redirect:
    """
    One C{REDIRECT} rule of port 53: to C{destination} (L{None}: anywhere),
    sent to local port C{port}.
    """

    destination: IPNetwork | None
    port: int


@dataclass(frozen=True)
class Capture:
    """meshdns's capture rules for one IP version, as far as a loop depends on them."""

    exclusions: tuple[Exclusion, ...] = ()
    redirects: tuple[Redirect, ...] = ()


def _value(words: Sequence[str], option: str) -> str | None:
    """The word after C{option} in a rule's words, or L{None} when it has none."""
    return words[words.index(option) + 1] if option in words[:-1] else None


def _ids(text: str | None) -> range | None:
    """An owner match's uid or gid, C{N} or C{N-M} as iptables prints it."""
    if text is None:
        return None
    low, _, high = text.partition("-")
    return range(int(low), int(high or low) + 1)


def parse_capture(rules: Iterable[str]) -> Capture:
    """
    Read the lines of meshdns's chain, as C{iptables -S} prints them or as
    the capture record holds them (L{meshdns_plugin.ops.capture.write_record}).

    Only what capture writes is understood: C{RETURN} by owner, and
    C{REDIRECT} of destination port 53. A rule that negates a match, or that
    cannot be read, is not one of them and is left out, as is every other
    rule: they cannot make meshdns's own queries loop.
    """
    exclusions: list[Exclusion] = []
    redirects: list[Redirect] = []
    for rule in rules:
        try:
            words = shlex.split(rule)
            target = _value(words, "-j")
            if "!" in words:
                continue
            if target == "RETURN":
                exclusion = Exclusion(
                    _ids(_value(words, "--uid-owner")), _ids(_value(words, "--gid-owner"))
                )
                if exclusion != Exclusion(None, None):
                    exclusions.append(exclusion)
            elif target == "REDIRECT" and _value(words, "--dport") == str(DNS_PORT):
                destination = _value(words, "-d")
                network = None if destination is None else ipaddress.ip_network(destination, False)
                to_port = _value(words, "--to-ports") or str(DNS_PORT)
                redirects.append(Redirect(network, int(to_port.split("-")[0])))
        except ValueError:
            continue
    return Capture(tuple(exclusions), tuple(redirects))


def capture_loop(
    captures: Mapping[int, Capture],
    uid: int,
    gid: int,
    servers: Iterable[tuple[str, int]],
    listen_port: int,
) -> str | None:
    """
    Why meshdns must not start, or L{None} when it may.

    @param captures: the capture rules in force, per IP version.
    @param uid: the effective uid meshdns's upstream sockets belong to.
    @param gid: their effective gid (the owner match ignores supplementary
        groups).
    @param servers: the upstream C{(ip, port)} pairs.
    @param listen_port: meshdns's DNS port, to say whether the queries would
        come back to this meshdns or go to another port.
    @return: one line naming the excluded uid and gid, the captured server
        and the fix, without the C{meshdns: } prefix.
    """
    for address, port in servers:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        capture = captures.get(ip.version)
        if port != DNS_PORT or capture is None:
            continue
        if any(exclusion.covers(uid, gid) for exclusion in capture.exclusions):
            continue
        for redirect in capture.redirects:
            if redirect.destination is None or ip in redirect.destination:
                return _refusal(capture.exclusions, uid, gid, address, redirect.port, listen_port)
    return None


def _refusal(
    exclusions: Sequence[Exclusion], uid: int, gid: int, address: str, port: int, listen_port: int
) -> str:
    """The line of L{capture_loop}: what is excluded, who runs, where queries go, the fix."""
    excluded = {}
    for exclusion in exclusions:
        for kind, ids in (("uid", exclusion.uids), ("gid", exclusion.gids)):
            if ids is not None:
                excluded.setdefault(kind, ids.start)
    switches = " ".join(f"--{kind} {n}" for kind, n in excluded.items())
    where = "back to meshdns" if port == listen_port else "away from the upstream"
    run_as = f"run it with twistd {switches}, or " if switches else ""
    return (
        f"DNS capture is installed and excludes "
        f"{' and '.join(f'{kind} {n}' for kind, n in excluded.items()) or 'no uid or gid'}, "
        f"but meshdns runs as uid {uid} gid {gid}: its upstream queries to {address} port "
        f"{DNS_PORT} would be redirected to port {port}, {where}; "
        f"{run_as}exclude uid {uid} with meshdns capture install --proxy-uid {uid}"
    )


class CaptureGuard(service.Service):
    """
    Stops start-up when DNS capture would loop meshdns's upstream queries
    (L{capture_loop}). Make it a child ahead of the meshdns service, so that
    it decides before anything serves.

    The rules are read in L{privilegedStartService}, where twistd still runs
    as the user it was started as (listing the tables needs root), and the
    decision is made in L{startService}, after twistd's C{--uid}/C{--gid}
    have dropped privileges: the uid and gid checked are the ones meshdns's
    sockets will have, however they were set. Nothing is read when no
    upstream server is on port 53, which no rule captures.
    """

    def __init__(
        self, servers: Sequence[tuple[str, int]], listen_port: int, record: str
    ) -> None:
        """
        @param servers: the forwarder's upstream C{(ip, port)} pairs.
        @param listen_port: meshdns's DNS port.
        @param record: the record of C{meshdns capture install}, read when
            the tables cannot be.
        """
        self.servers = servers
        self.listen_port = listen_port
        self.record = record
        self._captures: dict[int, Capture] | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._captures = self._read()

    def startService(self) -> None:
        """
        @raise CaptureLoopError: if meshdns's upstream queries would be
            captured.
        """
        super().startService()
        captures = self._read() if self._captures is None else self._captures
        line = capture_loop(captures, os.geteuid(), os.getegid(), self.servers, self.listen_port)
        if line is not None:
            raise CaptureLoopError(line)

    def _read(self) -> dict[int, Capture]:
        """
        The capture rules in force; none when no server is on port 53, and
        none, with a warning, when the record cannot be read.
        """
        if all(port != DNS_PORT for _, port in self.servers):
            return {}
        try:
            rules = installed_rules(self.record)
        except CaptureError as e:
            _log.warn("Cannot tell whether DNS capture loops meshdns's upstream queries: {e}",
                      e=str(e))
            return {}
        return {version: parse_capture(lines) for version, lines in rules.items()}
