# -*- test-case-name: tests.unit.test_cli,tests.integration.test_cli -*-
"""
The C{meshdns} command: look at what a meshdns server would serve, without
starting one.

  - C{meshdns check}: validate the config and entries exactly as a reload
    does (the same L{load_config} and L{TableLoader}, no second parser), for
    CI before shipping a ConfigMap;
  - C{meshdns table [--json]}: the name table;
  - C{meshdns listeners}: the VIP listeners, in the table shape of
    C{istioctl proxy-config listener};
    both ask the running meshdns of the config (its admin endpoint) when one
    answers, and read the files otherwise, saying which on stderr;
  - C{meshdns query NAME [TYPE]}: one query, printed the way dig prints it;
  - C{meshdns capture ...}: the iptables capture (L{meshdns_plugin.ops.capture}).

Each takes C{--config PATH} as C{twistd meshdns} does (default: the embedded
config). Every expected failure is one line on stderr per problem and exit
code 1, never a traceback.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from meshdns_plugin.config import Config, ConfigError, load_config
from meshdns_plugin.configvalues import server as server_address
from meshdns_plugin.mesh.loader import PreparedTable, TableLoader
from meshdns_plugin.mesh.table import table_document
from meshdns_plugin.ops import capture
from meshdns_plugin.ops.listeners.plan import (
    ListenerPlan,
    collisions,
    listener_plan,
    listeners_document,
)
from meshdns_plugin.sources.files import load_entries

Command = Callable[[argparse.Namespace], int]

#: The EDNS payload size C{meshdns query} offers, as dig does since 9.16.
QUERY_PAYLOAD = 1232
#: How long C{meshdns table} and C{listeners} wait for a running meshdns.
ADMIN_TIMEOUT = 1.0


class CommandError(Exception):
    """A failure whose message, one line, is all the user needs."""


def _prepare(args: argparse.Namespace) -> tuple[Config, PreparedTable]:
    """Load the config and build the table as the server would, changing nothing."""
    config = load_config(args.config)
    return config, TableLoader(config, load_entries).prepare()


def check(args: argparse.Namespace) -> int:
    """
    Validate config and entries, strictly enough for CI: exit code 1 if any
    document is invalid or a configured entries path does not exist (the
    server would serve without them), each named on stderr; else a one-line
    summary and 0. Collisions (an address or a listener two hosts claim) are
    warnings, naming both entries.
    """
    config, prepared = _prepare(args)
    entries = prepared.entries
    for note in entries.notes:
        print(f"meshdns: note: {note}", file=sys.stderr)
    for error in prepared.errors:
        print(f"meshdns: {error}", file=sys.stderr)
    for problem in entries.problems:
        print(f"meshdns: invalid: {problem}", file=sys.stderr)
    for path in entries.missing:
        print(f"meshdns: missing: {path}: no such file or folder", file=sys.stderr)
    for note in prepared.view.notes:
        print(f"meshdns: note: {note}", file=sys.stderr)
    found = collisions(prepared.view)
    for collision in found:
        print(f"meshdns: warning: {collision}", file=sys.stderr)
    table = prepared.table
    summary = (
        f"{config.source}: {prepared.entry_count} entries, "
        f"{len(table)} names, {len(table.vips)} VIP hosts"
    )
    if entries.problems or entries.missing:
        print(
            f"FAILED {summary}; {len(entries.problems)} invalid document(s) and "
            f"{len(entries.missing)} missing path(s), left out by a server",
        )
        return 1
    warned = f"; {len(found)} collision warning(s)" if found else ""
    print(f"OK {summary}{warned}")
    return 0


def _aligned(rows: Sequence[Sequence[str]]) -> str:
    """Rows as columns two spaces apart (the last column unpadded)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]])
        for row in rows
    )


def _from_server(config: Config, path: str) -> dict[str, Any] | None:
    """
    What a running meshdns of C{config} serves at its admin endpoint's
    C{path}, or L{None} when none answers (admin off, nothing listening, or a
    meshdns of another config on that port).
    """
    admin = config.admin
    if not admin.port:
        return None
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(admin.address, admin.address)
    url = f"http://{_endpoint(host, admin.port)}{path}"
    try:
        with urllib.request.urlopen(url, timeout=ADMIN_TIMEOUT) as response:
            document = json.load(response)
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict) or document.get("config") != config.source:
        return None
    print(f"meshdns: from the running meshdns at {url}", file=sys.stderr)
    return document


def _endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _from_files(config: Config) -> PreparedTable:
    """The files read as a reload would read them, saying so."""
    print(
        f"meshdns: from the files of {config.source} (no meshdns of it answers)", file=sys.stderr
    )
    return TableLoader(config, load_entries).prepare()


def table_rows(document: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """
    The rows of C{meshdns table} for a L{table_document}: one per (name,
    type), an alias's giving its CNAME target.
    """
    rows = [("NAME", "TYPE", "ADDRESSES", "SOURCE")]
    for records in document["names"]:
        vip = " (VIP)" if records["vip"] else ""
        for rtype in ("A", "AAAA"):
            if records[rtype]:
                rows.append(
                    (
                        records["name"],
                        rtype,
                        ", ".join(records[rtype]) + vip,
                        ", ".join(records["sources"]),
                    )
                )
    for alias in document["aliases"]:
        rows.append((alias["name"], "CNAME", alias["CNAME"], ", ".join(alias["sources"])))
    return rows


def table(args: argparse.Namespace) -> int:
    """
    The name table, from the running meshdns of the config if one answers,
    else from the files: one row per (name, type), or JSON as
    C{/debug/table} serves it.
    """
    config = load_config(args.config)
    document = _from_server(config, "/debug/table")
    if document is None:
        document = table_document(_from_files(config).table)
    document.pop("config", None)
    if args.json:
        print(json.dumps(document, indent=1))
    else:
        print(_aligned(table_rows(document)))
    return 0


def listener_rows(document: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """
    The rows of C{istioctl proxy-config listener}'s table for a
    L{listeners_document}: C{ADDRESSES PORT MATCH DESTINATION}, one per
    listener, the destination C{Cluster: outbound|PORT||HOST}, so that the
    Istio guide's C{grep | awk} pipeline reads them as it reads istioctl's.
    """
    rows = [("ADDRESSES", "PORT", "MATCH", "DESTINATION")]
    ordered = sorted(
        document["listeners"],
        key=lambda spec: (spec["host"], spec["port"], _address_order(spec["address"])),
    )
    for spec in ordered:
        port, host = spec["port"], spec["host"]
        rows.append((spec["address"], str(port), "ALL", f"Cluster: outbound|{port}||{host}"))
    return rows


def _address_order(address: str) -> tuple[int, int]:
    """IPv4 before IPv6, each in numeric order."""
    ip = ipaddress.ip_address(address)
    return ip.version, int(ip)


def listeners(args: argparse.Namespace) -> int:
    """
    The VIP listeners the server opens with this config, as istioctl lists
    them: the running meshdns's if one answers, else the files' plan (none
    when C{vip_listeners.enabled} is off, as the server would open none).
    """
    config = load_config(args.config)
    document = _from_server(config, "/debug/listeners")
    if document is None:
        prepared = _from_files(config)
        plan = listener_plan(prepared.view)
        for collision in plan.collisions:
            print(f"meshdns: {collision}", file=sys.stderr)
        if not config.vip_listeners.enabled:
            print(
                "meshdns: note: vip_listeners.enabled is off: the server opens no listener",
                file=sys.stderr,
            )
            plan = ListenerPlan()
        document = listeners_document(plan)
    print(_aligned(listener_rows(document)))
    return 0


def _default_server(args: argparse.Namespace) -> tuple[str, int]:
    """The config's first listen address, a wildcard asked on loopback."""
    listen = load_config(args.config).listen
    first = listen.addresses[0]
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(first, first), listen.port


def dig_text(reply: dns.message.Message, server: str, transport: str, seconds: float) -> str:
    """C{reply} laid out as dig prints one."""
    counts = [len(reply.question)] + [
        sum(len(rrset) for rrset in section)
        for section in (reply.answer, reply.authority, reply.additional)
    ]
    if reply.edns >= 0:
        counts[3] += 1
    lines = [
        f";; ->>HEADER<<- opcode: {dns.opcode.to_text(reply.opcode())}, "
        f"status: {dns.rcode.to_text(reply.rcode())}, id: {reply.id}",
        f";; flags: {dns.flags.to_text(reply.flags).lower()}; QUERY: {counts[0]}, "
        f"ANSWER: {counts[1]}, AUTHORITY: {counts[2]}, ADDITIONAL: {counts[3]}",
    ]
    if reply.edns >= 0:
        lines += ["", ";; OPT PSEUDOSECTION:"]
        lines += [f"; EDNS: version: {reply.edns}, udp: {reply.payload}"]
    lines += ["", ";; QUESTION SECTION:"]
    lines += [
        f";{q.name}\t\t{dns.rdataclass.to_text(q.rdclass)}\t{dns.rdatatype.to_text(q.rdtype)}"
        for q in reply.question
    ]
    for title, section in (
        ("ANSWER", reply.answer),
        ("AUTHORITY", reply.authority),
        ("ADDITIONAL", reply.additional),
    ):
        if section:
            lines += ["", f";; {title} SECTION:"]
            for rrset in section:
                lines += ["\t".join(line.split(" ", 4)) for line in rrset.to_text().splitlines()]
    if reply.flags & dns.flags.TC:
        lines += ["", ";; Truncated: ask again with --tcp for the whole answer"]
    lines += [
        "",
        f";; Query time: {seconds * 1000:.0f} msec",
        f";; SERVER: {server}({transport})",
    ]
    return "\n".join(lines)


def query(args: argparse.Namespace) -> int:
    """Send one query with dnspython and print the reply."""
    try:
        rdtype = dns.rdatatype.from_text(args.type)
    except dns.exception.DNSException:
        raise CommandError(f"{args.type!r} is not a DNS query type") from None
    try:
        request = dns.message.make_query(args.name, rdtype, use_edns=0, payload=QUERY_PAYLOAD)
    except dns.exception.DNSException as e:
        raise CommandError(f"{args.name!r} is not a domain name: {e}") from None
    host, port = args.server if args.server is not None else _default_server(args)
    transport = "tcp" if args.tcp else "udp"
    send = dns.query.tcp if args.tcp else dns.query.udp
    started = time.monotonic()
    try:
        reply = send(request, host, port=port, timeout=args.timeout)
    except dns.exception.Timeout:
        raise CommandError(f"no answer from {host}#{port} within {args.timeout:g} s") from None
    print(dig_text(reply, f"{host}#{port}", transport, time.monotonic() - started))
    return 0


def _guarded(command: Command) -> Command:
    """
    Run C{command}, turning every expected failure into lines on stderr and
    exit code 1.
    """

    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (ConfigError, CommandError, dns.exception.DNSException) as e:
            print(f"meshdns: {e}", file=sys.stderr)
        except BrokenPipeError:
            # The reader went away (`meshdns table | head`): not an error to
            # report, and stdout must not be flushed again at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError as e:
            where = f"{e.filename}: " if e.filename else ""
            print(f"meshdns: {where}{e.strerror or e}", file=sys.stderr)
        return 1

    return run


def _server_option(text: str) -> tuple[str, int]:
    """C{--server}: IP, IP:PORT or [IPv6]:PORT, as C{upstream.servers} takes them."""
    try:
        return server_address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _seconds_option(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 60:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds in (0, 60]")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, C{capture} included."""
    parser = argparse.ArgumentParser(
        prog="meshdns", description="Inspect and operate a meshdns DNS proxy."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, command: Command, summary: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=summary, description=summary)
        sub.add_argument(
            "--config",
            "-c",
            metavar="PATH",
            help="meshdns.yaml to read (default: the embedded conf/meshdns.yaml)",
        )
        sub.set_defaults(func=_guarded(command))
        return sub

    add("check", check, "validate the config and entries exactly as a reload would")
    add_table = add("table", table, "print the name table")
    add_table.add_argument("--json", action="store_true", help="as JSON, like /debug/table")
    add("listeners", listeners, "print the address and port of each ServiceEntry listener")
    add_query = add("query", query, "send one DNS query and print the answer like dig")
    add_query.add_argument("name", help="the name to ask for")
    add_query.add_argument("type", nargs="?", default="A", help="the query type (default: A)")
    add_query.add_argument(
        "--server",
        type=_server_option,
        help="IP, IP:PORT or [IPv6]:PORT to ask (default: the config's first listen address)",
    )
    add_query.add_argument("--tcp", action="store_true", help="ask over TCP")
    add_query.add_argument(
        "--timeout", type=_seconds_option, default=2.0, help="seconds to wait (default: 2)"
    )
    capture.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: parse, run, return the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
