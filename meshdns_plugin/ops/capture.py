# -*- test-case-name: tests.unit.ops.test_capture -*-
"""
C{meshdns capture install|remove|show}: send the host's DNS traffic to meshdns
with iptables, as Istio's C{istio-iptables} does for a sidecar.

The rules are computed by the pure functions of
L{meshdns_plugin.ops.capturerules}; L{_run} here is the only place that
executes anything. C{install} also records the rules it installed, so that
meshdns can check at start-up that it would not capture itself.
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

from meshdns_plugin.config import Config
from meshdns_plugin.ops.capturerules import (
    REDIRECT_ADDRESSES,
    TABLE,
    CaptureError,
    Command,
    NatState,
    capture_rules,
    install_commands,
    parse_nat_state,
    remove_commands,
    route_commands,
    split_nameservers,
)
from meshdns_plugin.resolvconf import read_resolv_conf

#: Defaults that are meshdns's own: its listen port, its resolv.conf, its
#: VIP ranges (what a default meshdns.yaml gives).
_DEFAULTS = Config()
DEFAULT_PORT = _DEFAULTS.listen.port
DEFAULT_RESOLV_CONF = _DEFAULTS.upstream.resolv_conf
DEFAULT_VIP_RANGES = (str(_DEFAULTS.mesh.ipv4_range), str(_DEFAULTS.mesh.ipv6_range))
#: Istio's proxy uid and gid, so that an Istio-style deployment needs no option.
DEFAULT_PROXY_ID = 1337
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
