# -*- test-case-name: tests.test_capture -*-
"""
C{meshdns capture install|remove|show}: send the host's DNS traffic to meshdns
with iptables, as Istio's C{istio-iptables} does for a sidecar.

Everything meshdns adds lives in its own C{nat} chain, L{CHAIN}, reached by
one jump from C{OUTPUT}, so that C{install} can be repeated (flush and refill
the chain, add the jump only when absent) and C{remove} can restore the tables
exactly (delete the jumps, then the chain). Traffic from meshdns's own uid or
gid returns early: meshdns's upstream queries must leave, not loop back.

The commands are computed by pure functions of the parameters and of the
current state of the tables (L{install_commands}, L{remove_commands},
L{route_commands}) so the rules can be tested without root; L{_run} is the
only place that executes anything.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshdns_plugin.resolvconf import DNS_PORT, read_resolv_conf

CHAIN = "MESHDNS_OUTPUT"
TABLE = "nat"
JUMP = ("-j", CHAIN)

DEFAULT_PORT = 15053
#: Istio's proxy uid and gid, so that an Istio-style deployment needs no option.
DEFAULT_PROXY_ID = 1337
DEFAULT_RESOLV_CONF = "/etc/resolv.conf"
DEFAULT_VIP_RANGES = ("240.240.0.0/16", "2001:2::/48")
#: Where REDIRECT sends this host's own packets, per IP version
#: (iptables-extensions: locally generated packets go to the localhost address).
REDIRECT_ADDRESSES = {4: "127.0.0.1", 6: "::1"}
#: Where C{install} records its rules. C{/run} is a tmpfs, emptied at boot
#: like the rules themselves, so a record never outlives what it describes.
RECORD_PATH = "/run/meshdns/capture.json"

#: The iptables binaries to try, per IP version, in order. The first is the
#: system's choice (on Debian, the nf_tables backend through alternatives);
#: the legacy x_tables one is the fallback for kernels or containers where
#: nf_tables is unavailable and the default binary cannot even list a table.
IPTABLES_CANDIDATES = {
    4: ("iptables", "iptables-legacy"),
    6: ("ip6tables", "ip6tables-legacy"),
}

if TYPE_CHECKING:
    from meshdns_plugin.config import Config

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


def _run(argv: Command) -> str:
    """
    Run one command and return its standard output; a failure becomes a
    L{CaptureError} that shows the command and the first line of its stderr.
    """
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise CaptureError(f"{argv[0]} not found") from None
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or [f"exit code {result.returncode}"]
        raise CaptureError(f"{shlex.join(argv)} failed: {lines[0]}")
    return result.stdout


def _find_iptables(version: int) -> tuple[str, NatState] | None:
    """
    The first candidate binary for C{version} that can list the C{nat} table,
    with what it lists; L{None} when no candidate is installed.
    """
    installed = [name for name in IPTABLES_CANDIDATES[version] if shutil.which(name)]
    if not installed:
        return None
    errors = []
    for name in installed:
        try:
            return name, parse_nat_state(_run([name, "-w", "-t", TABLE, "-S"]))
        except CaptureError as e:
            errors.append(e)
    raise errors[0]


def _tables() -> tuple[dict[int, tuple[str, NatState] | None], str]:
    """
    The iptables binary and meshdns's state per IP version, and why IPv6 has
    none (empty when it has one). IPv4 is required; IPv6 is best effort,
    because a kernel without IPv6 (or its nat table) has no IPv6 DNS to
    capture and must not stop IPv4 capture.
    """
    ipv4 = _find_iptables(4)
    if ipv4 is None:
        raise CaptureError("iptables not found; install the iptables package")
    try:
        ipv6 = _find_iptables(6)
    except CaptureError as e:
        return {4: ipv4, 6: None}, str(e)
    return {4: ipv4, 6: ipv6}, "" if ipv6 else "ip6tables not found"


def _load_config(args: argparse.Namespace) -> Config | None:
    """
    The config named by C{--config}, if any. The config module is imported
    only here: capture needs nothing else from it.
    """
    if args.config is None:
        return None
    from meshdns_plugin.config import ConfigError, load_config

    try:
        return load_config(args.config)
    except ConfigError as e:
        raise CaptureError(str(e)) from None


def _vip_ranges(config: Config | None) -> list[str]:
    """
    The VIP ranges to route locally: the config's, or the defaults; without
    IPv6 in the kernel, the IPv4 one only (C{ip -6 route} would fail).
    """
    ranges = DEFAULT_VIP_RANGES
    if config is not None:
        ranges = (str(config.mesh.ipv4_range), str(config.mesh.ipv6_range))
    ipv6 = os.path.exists("/proc/net/if_inet6")
    return [r for r in ranges if ipv6 or ipaddress.ip_network(r).version == 4]


def listens_for_redirect(addresses: Sequence[str], version: int) -> bool:
    """
    Whether a meshdns listening on C{addresses} receives the queries that
    capture redirects for IP C{version}: it listens on that version's
    L{REDIRECT_ADDRESSES} itself, or on a wildcard covering it (C{0.0.0.0}
    for IPv4, C{::} for both).
    """
    covering = {REDIRECT_ADDRESSES[version], "::"} | ({"0.0.0.0"} if version == 4 else set())
    return not covering.isdisjoint(addresses)


def _present_routes(ranges: Sequence[str]) -> list[str]:
    """
    The VIP ranges that have a local route now. It asks C{table all}: naming
    C{table local} fails while that table does not exist yet (C{lo} down).
    """
    present = []
    for network in ranges:
        family = ["-6"] if ipaddress.ip_network(network).version == 6 else []
        listing = _run(["ip", *family, "route", "show", "table", "all", "type", "local",
                        "exact", network])
        if listing.strip():
            present.append(network)
    return present


def installed_rules(record: str) -> dict[int, tuple[str, ...]]:
    """
    meshdns's capture rules in force, per IP version: the lines of L{CHAIN}
    where C{OUTPUT} jumps to it, listed from the tables when running as root
    (the right C{install} needs too), or else read from C{record}. A version
    whose nat table cannot be listed even by root captures nothing.

    @param record: the record C{install} wrote (L{RECORD_PATH} by default).
    @raise CaptureError: if the record is unreadable or not one C{install}
        wrote.
    """
    if os.geteuid() != 0:
        return read_record(record)
    rules = {}
    for version in IPTABLES_CANDIDATES:
        try:
            found = _find_iptables(version)
        except CaptureError:
            continue
        if found is not None and found[1].jumps:
            rules[version] = found[1].chain_rules
    return rules


def write_record(path: str, rules: dict[int, list[Command]]) -> None:
    """
    Record the rules installed per IP version, as C{-A} lines that
    L{installed_rules} returns as they are: one reader serves the tables and
    the record. Written to a temporary file and renamed, so that a meshdns
    starting meanwhile reads the old record or the new one, never half.
    """
    text = json.dumps(
        {"rules": {str(version): [shlex.join(rule) for rule in lines]
                   for version, lines in rules.items()}},
        indent=2,
    )
    temporary = f"{path}.tmp"
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(temporary, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        os.chmod(temporary, 0o644)  # meshdns reads it after dropping root
        os.replace(temporary, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise CaptureError(
            f"cannot record the rules in {path}: {e.strerror}; give --record PATH"
        ) from None


def read_record(path: str) -> dict[int, tuple[str, ...]]:
    """
    The rules L{write_record} recorded in C{path}; none when it does not exist.

    @raise CaptureError: if C{path} cannot be read or is not such a record.
    """
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise CaptureError(f"cannot read {path}: {e.strerror}") from None
    except ValueError:
        record = None
    rules = record.get("rules") if isinstance(record, dict) else None
    if not (
        isinstance(rules, dict)
        and set(rules) <= {"4", "6"}
        and all(isinstance(lines, list) and all(isinstance(line, str) for line in lines)
                for lines in rules.values())
    ):
        raise CaptureError(f"{path} is not a record of meshdns capture install")
    return {int(version): tuple(lines) for version, lines in rules.items()}


def _remove_record(path: str) -> None:
    """Delete the record; a no-op when there is none."""
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise CaptureError(f"cannot remove {path}: {e.strerror}") from None


def _install(args: argparse.Namespace) -> None:
    """Install the capture rules (and the VIP routes with C{--vip-routes})."""
    config = _load_config(args)
    port = args.port
    if port is None:
        port = config.listen.port if config else DEFAULT_PORT
    if port == 0:
        raise CaptureError("the config's listen.port is 0 (any free port): give --port")
    destinations: dict[int, list[str] | None] = {4: None, 6: None}
    if not args.capture_all:
        resolv_conf = args.resolv_conf
        if resolv_conf is None:
            resolv_conf = config.upstream.resolv_conf if config else DEFAULT_RESOLV_CONF
        nameservers = read_resolv_conf(resolv_conf).nameservers
        if not nameservers:
            raise CaptureError(f"no nameserver in {resolv_conf}; fix it or use --all")
        destinations = split_nameservers(nameservers)
    tables, ipv6_problem = _tables()
    installed: dict[int, list[Command]] = {}
    for version, found in tables.items():
        wanted = destinations[version]
        if found is None:
            if wanted != []:
                print(f"meshdns capture: warning: IPv6 DNS is not captured: {ipv6_problem}",
                      file=sys.stderr)
            continue
        iptables, state = found
        rules = [] if wanted == [] else capture_rules(
            port, args.proxy_uid, args.proxy_gid, wanted
        )
        for command in install_commands(iptables, rules, state):
            _run(command)
        if rules:
            installed[version] = rules
        if rules and config is not None and not listens_for_redirect(
            config.listen.addresses, version
        ):
            target = REDIRECT_ADDRESSES[version]
            print(f"meshdns capture: warning: captured IPv{version} DNS goes to {target} "
                  f"port {port}, but listen.address in {config.source} does not include "
                  f"{target}", file=sys.stderr)
    write_record(args.record, installed)
    if args.vip_routes:
        for command in route_commands(_vip_ranges(config), (), install=True):
            _run(command)


def _remove(args: argparse.Namespace) -> None:
    """Take out whatever C{install} added, in both IP versions; a no-op when absent."""
    ranges = _vip_ranges(_load_config(args))
    for found in _tables()[0].values():
        if found is not None:
            for command in remove_commands(*found):
                _run(command)
    _remove_record(args.record)
    for command in route_commands(ranges, _present_routes(ranges), install=False):
        _run(command)


def _show(args: argparse.Namespace) -> None:
    """Print meshdns's chains and jumps, and its VIP routes, per IP version."""
    ranges = _vip_ranges(_load_config(args))
    installed = False
    for found in _tables()[0].values():
        if found is not None and found[1].installed:
            iptables, state = found
            installed = True
            print(f"# {iptables} -t {TABLE}")
            for jump in state.jumps:
                print(shlex.join(["-A", "OUTPUT", *jump]))
            for line in state.chain_rules:
                print(line)
    present = _present_routes(ranges)
    if present:
        installed = True
        print("# VIP routes")
        for network in present:
            print(f"local {network} dev lo")
    if not installed:
        print("capture is not installed")


def _command(action: Callable[[argparse.Namespace], None]) -> Callable[[argparse.Namespace], int]:
    """
    Wrap a subcommand so that every expected failure is one line on stderr and
    exit code 1, never a traceback.
    """

    def run(args: argparse.Namespace) -> int:
        try:
            if os.geteuid() != 0:
                raise CaptureError("must run as root (iptables needs CAP_NET_ADMIN)")
            action(args)
        except CaptureError as e:
            print(f"meshdns capture: error: {e}", file=sys.stderr)
            return 1
        return 0

    return run


def _integer(low: int, high: int, what: str) -> Callable[[str], int]:
    """
    An argparse type for an integer in C{[low, high]}: checked here, because
    iptables would reject it only halfway through an install.
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what} ({low}..{high})")
        return value

    return parse


_port = _integer(1, 65535, "a port")
#: (uid_t)-1 means "no change" to the kernel, so it is not a uid.
_id = _integer(0, 2**32 - 2, "a uid/gid")


def register(subparsers: argparse._SubParsersAction) -> None:
    """
    Add C{capture install|remove|show} to the C{meshdns} command line; each
    sets C{func}, which returns the exit code.
    """
    capture = subparsers.add_parser(
        "capture", help="redirect DNS (port 53) to meshdns with iptables",
        description="Redirect this host's DNS queries to meshdns with iptables (nat OUTPUT).",
    )
    actions = capture.add_subparsers(dest="capture_action", required=True)

    def add(
        name: str, action: Callable[[argparse.Namespace], None], summary: str
    ) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=summary, description=summary)
        parser.add_argument(
            "--config", metavar="PATH",
            help="meshdns config: port, resolv.conf and VIP ranges (options override it)",
        )
        parser.set_defaults(func=_command(action))
        return parser

    def add_record(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--record", metavar="PATH", default=RECORD_PATH,
            help=f"where install records the rules for meshdns's start-up check ({RECORD_PATH})",
        )

    install = add("install", _install, "install the capture rules (idempotent)")
    add_record(install)
    install.add_argument("--port", type=_port, help=f"meshdns's DNS port ({DEFAULT_PORT})")
    install.add_argument(
        "--resolv-conf", metavar="PATH",
        help=f"where --dns-servers reads the nameservers ({DEFAULT_RESOLV_CONF})",
    )
    targets = install.add_mutually_exclusive_group()
    targets.add_argument(
        "--dns-servers", dest="capture_all", action="store_false",
        help="capture DNS to resolv.conf's nameservers only (default)",
    )
    targets.add_argument(
        "--all", dest="capture_all", action="store_true",
        help="capture DNS to every destination",
    )
    # Both flags share one destination: set its default once, or argparse
    # would take store_false's implicit True.
    install.set_defaults(capture_all=False)
    install.add_argument(
        "--proxy-uid", type=_id, default=DEFAULT_PROXY_ID,
        help=f"uid whose traffic is not captured: meshdns's own ({DEFAULT_PROXY_ID})",
    )
    install.add_argument(
        "--proxy-gid", type=_id, default=DEFAULT_PROXY_ID,
        help=f"gid whose traffic is not captured: meshdns's own ({DEFAULT_PROXY_ID})",
    )
    install.add_argument(
        "--vip-routes", action="store_true",
        help="also route the VIP ranges to this host (ip route add local ... dev lo)",
    )
    add_record(add("remove", _remove, "remove the capture rules and VIP routes (idempotent)"))
    add("show", _show, "print the capture rules and VIP routes")
