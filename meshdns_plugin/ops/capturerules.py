# -*- test-case-name: tests.unit.ops.test_capture -*-
"""
The iptables rules of DNS capture, as pure functions of the parameters and
of the current state of the tables, so that they can be tested without root.

Everything meshdns adds lives in its own C{nat} chain, L{CHAIN}, reached by
one jump from C{OUTPUT}, so that C{install} can be repeated (flush and refill
the chain, add the jump only when absent) and C{remove} can restore the tables
exactly (delete the jumps, then the chain). Traffic from meshdns's own uid or
gid returns early: meshdns's upstream queries must leave, not loop back.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from meshdns_plugin.resolvconf import DNS_PORT

CHAIN = "MESHDNS_OUTPUT"
TABLE = "nat"
JUMP = ("-j", CHAIN)

#: Where REDIRECT sends this host's own packets, per IP version
#: (iptables-extensions: locally generated packets go to the localhost address).
REDIRECT_ADDRESSES = {4: "127.0.0.1", 6: "::1"}

Command = list[str]


class CaptureError(Exception):
    """
    Capture cannot be done; C{str()} is one line saying why, for the user.
    """


@dataclass(frozen=True)
class NatState:
    """
    What C{iptables -t nat -S} says about meshdns, for one IP version.

    @ivar chain_rules: the lines of L{CHAIN} (C{-N} and C{-A}), as printed.
    @ivar jumps: the rule specifications in C{OUTPUT} that jump to L{CHAIN}
        (C{-A OUTPUT} stripped), so that C{remove} deletes every one of them,
        even one that was added by hand.
    """

    chain_rules: tuple[str, ...] = ()
    jumps: tuple[tuple[str, ...], ...] = ()

    @property
    def installed(self) -> bool:
        """Whether anything of meshdns is in the table."""
        return bool(self.chain_rules or self.jumps)


def parse_nat_state(listing: str) -> NatState:
    """
    Read meshdns's chain and jumps from the output of C{iptables -t nat -S}.
    """
    chain_rules: list[str] = []
    jumps: list[tuple[str, ...]] = []
    for line in listing.splitlines():
        words = shlex.split(line)
        if words[:2] in (["-N", CHAIN], ["-A", CHAIN]):
            chain_rules.append(line)
        elif words[:2] == ["-A", "OUTPUT"] and _jumps_to_chain(words):
            jumps.append(tuple(words[2:]))
    return NatState(tuple(chain_rules), tuple(jumps))


def _jumps_to_chain(words: Sequence[str]) -> bool:
    """Whether a rule's words contain C{-j MESHDNS_OUTPUT} (or C{-g}, goto)."""
    return any(
        word in ("-j", "-g", "--jump", "--goto") and target == CHAIN
        for word, target in zip(words, words[1:], strict=False)
    )


def capture_rules(
    port: int, proxy_uid: int, proxy_gid: int, destinations: Sequence[str] | None
) -> list[Command]:
    """
    The rules of L{CHAIN}, as arguments of C{iptables -t nat}.

    The owner exclusions come first: a REDIRECT before them would catch
    meshdns's own upstream queries and loop them back to meshdns.

    @param port: meshdns's DNS port, where captured queries go.
    @param destinations: the addresses whose port 53 is captured, or L{None}
        to capture port 53 of every destination.
    """
    rules = [
        ["-A", CHAIN, "-m", "owner", "--uid-owner", str(proxy_uid), "-j", "RETURN"],
        ["-A", CHAIN, "-m", "owner", "--gid-owner", str(proxy_gid), "-j", "RETURN"],
    ]
    for destination in [None] if destinations is None else destinations:
        match = [] if destination is None else ["-d", destination]
        for protocol in ("udp", "tcp"):
            rules.append(
                ["-A", CHAIN, *match, "-p", protocol, "--dport", str(DNS_PORT),
                 "-j", "REDIRECT", "--to-ports", str(port)]
            )
    return rules


def install_commands(iptables: str, rules: Sequence[Command], state: NatState) -> list[Command]:
    """
    Commands that make the table hold exactly C{rules} in L{CHAIN}, jumped to
    once from C{OUTPUT}, whatever was installed before.

    The jump is inserted first in C{OUTPUT} so that DNS is captured before a
    broader rule (a sidecar's TCP redirect, say) takes it; it is added only
    when absent, so running C{install} again changes nothing.
    """
    if not rules:
        return remove_commands(iptables, state)
    prefix = [iptables, "-w", "-t", TABLE]
    commands = [] if state.chain_rules else [[*prefix, "-N", CHAIN]]
    commands.append([*prefix, "-F", CHAIN])
    commands.extend([*prefix, *rule] for rule in rules)
    if JUMP not in state.jumps:
        commands.append([*prefix, "-I", "OUTPUT", "1", *JUMP])
    return commands


def remove_commands(iptables: str, state: NatState) -> list[Command]:
    """
    Commands that take everything of meshdns out of the table: every jump to
    L{CHAIN} (a chain that is still referenced cannot be deleted), then the
    chain. Nothing when nothing is installed.
    """
    prefix = [iptables, "-w", "-t", TABLE]
    commands = [[*prefix, "-D", "OUTPUT", *jump] for jump in state.jumps]
    if state.chain_rules:
        commands += [[*prefix, "-F", CHAIN], [*prefix, "-X", CHAIN]]
    return commands


def route_commands(ranges: Sequence[str], present: Sequence[str], install: bool) -> list[Command]:
    """
    Commands that add (C{install}) or delete the local routes of the VIP
    ranges, so that connections to a VIP are delivered to this host.

    C{ip route replace} adds or leaves as is, so installing twice is harmless;
    only the routes in C{present} are deleted, so removing twice is too.
    """
    commands = []
    for network in ranges:
        family = ["-6"] if ipaddress.ip_network(network).version == 6 else []
        if install:
            commands.append(["ip", *family, "route", "replace", "local", network, "dev", "lo"])
        elif network in present:
            commands.append(
                ["ip", *family, "route", "del", "local", network, "dev", "lo", "table", "local"]
            )
    return commands


def split_nameservers(nameservers: Sequence[tuple[str, int]]) -> dict[int, list[str]]:
    """
    The nameserver addresses by IP version, in file order, without duplicates
    or IPv6 zone ids (iptables matches addresses, not interfaces).
    """
    by_version: dict[int, list[str]] = {4: [], 6: []}
    for address, _port in nameservers:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if str(ip) not in by_version[ip.version]:
            by_version[ip.version].append(str(ip))
    return by_version


