"""
A DNSSEC lab on loopback: real DNS software from Debian for meshdns to be
judged against.

meshdns forwards what the mesh does not know, and a forwarder is only right if
a validating client behind it sees what it would see talking to the resolver
directly. That cannot be checked against a stand-in written for the tests, so
this module builds, in a folder of its own:

  - four zones, keys and signatures made at start-up with C{ldns-keygen}
    (ECDSAP256SHA256, a KSK and a ZSK per zone) and C{ldns-signzone}:
    C{secure.test.} (NSEC), C{nsec3.test.} (NSEC3, no salt, no extra
    iterations, as RFC 9276 advises), C{plain.test.} (unsigned) and
    C{broken.test.} (signed with signatures that expired years ago);
  - NSD, authoritative for all four, on L{NSD_ADDRESS};
  - unbound, validating, on L{UNBOUND_ADDRESS}: stub zones to NSD, a trust
    anchor (the KSK's DS) for each signed zone and none for C{plain.test.},
    which is therefore insecure; every other name is refused locally and its
    root hints point at L{DEAD_ROOT}, a loopback address where nothing
    listens, so it can never iterate to the real root. It sends Extended DNS
    Errors (RFC 8914) and the NSID L{UNBOUND_NSID}.

Every zone has the same records (L{zone_text}), so one list of questions
covers NSEC, NSEC3, insecure and bogus answers. Use L{running_lab} as a
context manager, or run C{python -m tests.support.dnslab} for a lab (and a meshdns
forwarding to it) to try by hand with C{dig}; it waits for Ctrl-C.

Both daemons run in the foreground, are stopped by their PID when the lab
closes, and are told by the kernel to stop (SIGTERM) if the process that
started them dies first, so a killed test run leaves no daemon behind.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.message
import dns.query

from tests.support.processes import free_port, launch_meshdns, stop_process

#: Loopback addresses of their own, so the lab's ports never meet those of
#: other tests on 127.0.0.1.
NSD_ADDRESS = "127.53.0.1"
UNBOUND_ADDRESS = "127.53.0.2"
#: Where unbound's root hints point: loopback, and nothing listens there.
DEAD_ROOT = "127.53.0.254"
#: What unbound answers to an NSID request (RFC 5001).
UNBOUND_NSID = "dnslab-unbound"

#: Each command the lab runs, and the Debian package it comes from.
TOOLS = {
    "nsd": "nsd",
    "unbound": "unbound",
    "ldns-keygen": "ldnsutils",
    "ldns-signzone": "ldnsutils",
}

#: How each zone is signed: "nsec", "nsec3", "expired" (signed, with every
#: signature long expired: bogus for a validator), or None (unsigned).
ZONES: dict[str, str | None] = {
    "secure.test.": "nsec",
    "nsec3.test.": "nsec3",
    "plain.test.": None,
    "broken.test.": "expired",
}

#: Names of TXT RRsets built to be about 700, 1,500 and 5,000 bytes on the
#: wire (without DNSSEC records), and how many 230-byte strings each has.
BIG_TXT = {"big700": 3, "big1500": 6, "big5000": 20}

READY_TIMEOUT = 15.0
START_ATTEMPTS = 3
#: The validity of the broken zone's signatures: long past.
EXPIRED_INCEPTION = "20190101000000"
EXPIRED_EXPIRATION = "20200101000000"


class LabError(RuntimeError):
    """The lab could not be built or started; the message says which step and why."""


def command_path(command: str) -> str | None:
    """
    Where C{command} is, looking in the sbin folders too: NSD and unbound are
    installed there, and a non-root PATH often lacks them.
    """
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
    return shutil.which(command, path=path)


def missing_packages() -> list[str]:
    """The Debian packages whose commands the lab needs and cannot find (sorted, once each)."""
    return sorted({package for command, package in TOOLS.items() if not command_path(command)})


def zone_text(origin: str) -> str:
    """
    The records of every lab zone, for C{origin}: one name per case that a
    forwarder can get wrong (types it may not know, chains, synthesis, size).
    """
    lines = [
        f"$ORIGIN {origin}",
        "$TTL 3600",
        # Negative answers are cached for min(SOA TTL, minimum) = 300 s (RFC 2308).
        "@ SOA ns hostmaster 1 3600 600 86400 300",
        "@ NS ns",
        # Glue for the NS name only: unbound reaches NSD through its stub-addr.
        f"ns A {NSD_ADDRESS}",
        "www A 192.0.2.1",
        "www AAAA 2001:db8::1",
        "@ MX 10 mail",
        "mail A 192.0.2.25",
        'txt TXT "hello" "world"',
        "_sip._tcp SRV 10 5 5060 sip",
        "sip A 192.0.2.5",
        "@ HTTPS 1 . alpn=h2,h3",
        "svc SVCB 1 svc-target port=8443 alpn=h2",
        # A type no software here knows, in RFC 3597's generic form.
        r"unknown TYPE65280 \# 4 0a000001",
        "alias CNAME www",
        # A CNAME to a name that does not exist: NXDOMAIN with a chain (RFC 6604).
        "dangling CNAME nowhere",
        # host.old answers through the DNAME; missing.old is NXDOMAIN after it.
        "old DNAME new",
        "host.new A 192.0.2.50",
        "*.wild A 192.0.2.99",
    ]
    for name, count in BIG_TXT.items():
        for index in range(count):
            # Distinct strings: an RRset cannot hold the same rdata twice.
            filler = f"{name}-{index:02d}-".ljust(230, "x")
            lines.append(f'{name} TXT "{filler}"')
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class SignedZone:
    """
    A zone file ready for NSD, and what a validator needs to trust it.

    @ivar anchor: the DS of its KSK, as a zone-file line, or None when the
        zone is unsigned (and so insecure: no anchor covers it).
    """

    origin: str
    path: Path
    anchor: str | None


def run_tool(argv: list[str], cwd: Path) -> str:
    """Run one of L{TOOLS} to completion; its stdout. @raise LabError: when it fails."""
    executable = command_path(argv[0])
    if executable is None:
        raise LabError(f"{argv[0]} is not installed (Debian package {TOOLS[argv[0]]})")
    result = subprocess.run(
        [executable, *argv[1:]], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    if result.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    return result.stdout


def make_zone(directory: Path, origin: str, signing: str | None) -> SignedZone:
    """
    Write C{origin}'s zone file in C{directory}, signed as C{signing} says
    (see L{ZONES}) with a fresh KSK and ZSK.
    """
    unsigned = directory / f"{origin}zone"
    unsigned.write_text(zone_text(origin))
    if signing is None:
        return SignedZone(origin, unsigned, None)
    algorithm = ["-a", "ECDSAP256SHA256"]
    ksk = run_tool(["ldns-keygen", *algorithm, "-k", origin], directory).strip()
    zsk = run_tool(["ldns-keygen", *algorithm, origin], directory).strip()
    options = {
        "nsec": [],
        "nsec3": ["-n", "-t", "0"],
        "expired": ["-i", EXPIRED_INCEPTION, "-e", EXPIRED_EXPIRATION],
    }[signing]
    signed = directory / f"{origin}zone.signed"
    run_tool(["ldns-signzone", *options, "-f", signed.name, unsigned.name, zsk, ksk], directory)
    anchor = (directory / f"{ksk}.ds").read_text().strip()
    return SignedZone(origin, signed, anchor)


def nsd_conf(directory: Path, port: int, zones: list[SignedZone]) -> str:
    """NSD's configuration: one address, no root features, every file in C{directory}."""
    lines = [
        "server:",
        f"  ip-address: {NSD_ADDRESS}",
        f"  port: {port}",
        "  do-ip6: no",
        '  username: ""',
        '  chroot: ""',
        f'  zonesdir: "{directory}"',
        '  database: ""',
        f'  zonelistfile: "{directory}/zone.list"',
        f'  xfrdfile: "{directory}/xfrd.state"',
        f'  xfrdir: "{directory}"',
        f'  pidfile: "{directory}/nsd.pid"',
        f'  logfile: "{directory}/nsd.log"',
        "  server-count: 1",
        "  verbosity: 1",
        "remote-control:",
        "  control-enable: no",
    ]
    for zone in zones:
        lines += ["zone:", f"  name: {zone.origin}", f'  zonefile: "{zone.path}"']
    return "\n".join(lines) + "\n"


def unbound_conf(directory: Path, port: int, nsd_port: int, zones: list[SignedZone]) -> str:
    """
    unbound's configuration: validating, one thread, answering only for the
    lab zones (through NSD) and refusing everything else locally.
    """
    lines = [
        "server:",
        f"  interface: {UNBOUND_ADDRESS}",
        f"  port: {port}",
        "  do-ip6: no",
        "  num-threads: 1",
        "  do-daemonize: no",
        '  username: ""',
        '  chroot: ""',
        f'  directory: "{directory}"',
        f'  pidfile: "{directory}/unbound.pid"',
        f'  logfile: "{directory}/unbound.log"',
        "  use-syslog: no",
        "  verbosity: 1",
        "  log-servfail: yes",
        "  val-log-level: 2",
        "  access-control: 127.0.0.0/8 allow",
        # NSD is on loopback, which unbound skips by default.
        "  do-not-query-localhost: no",
        '  module-config: "validator iterator"',
        f'  root-hints: "{directory}/root.hints"',
        "  trust-anchor-signaling: no",
        "  root-key-sentinel: no",
        # Every answer comes from NSD's data, never synthesised from cached
        # NSEC records (RFC 8198), so one question always gets one answer.
        "  aggressive-nsec: no",
        "  qname-minimisation: no",
        "  rrset-roundrobin: no",
        "  prefetch: no",
        # Clients may get UDP answers up to 4096 bytes (the default is 1232),
        # so that a forwarder's own 1232-byte cap is what the tests see.
        "  max-udp-size: 4096",
        "  ede: yes",
        f'  nsid: "ascii_{UNBOUND_NSID}"',
        '  local-zone: "." refuse',
    ]
    for zone in zones:
        lines.append(f'  local-zone: "{zone.origin}" transparent')
        if zone.anchor is not None:
            lines.append(f'  trust-anchor: "{zone.anchor}"')
    for zone in zones:
        lines += [
            "stub-zone:",
            f'  name: "{zone.origin}"',
            f"  stub-addr: {NSD_ADDRESS}@{nsd_port}",
        ]
    lines += ["remote-control:", "  control-enable: no"]
    return "\n".join(lines) + "\n"


def stop_with_parent() -> None:
    """
    In the child, before exec: ask Linux to send SIGTERM when the parent dies
    (prctl PR_SET_PDEATHSIG), so a daemon never outlives a killed test run.
    """
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


@dataclass
class Daemon:
    """
    One of the lab's servers, running in the foreground.

    @ivar log_path: its own log file (what it wrote to stdout and stderr is in
        C{log_path} with the suffix C{.out}).
    """

    name: str
    address: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def server(self) -> str:
        """C{"ADDRESS:PORT"}, as meshdns's C{upstream.servers} wants it."""
        return f"{self.address}:{self.port}"

    def log(self) -> str:
        """Its log and its output so far, for a failure message."""
        parts = [p for p in (self.log_path, self.log_path.with_suffix(".out")) if p.exists()]
        return "\n".join(p.read_text(errors="replace") for p in parts)

    def stop(self) -> int:
        """Stop it by its PID (SIGTERM, then SIGKILL); its exit code."""
        return stop_process(self.process)


def start_daemon(name: str, config: Path, address: str, port: int, probe: str) -> Daemon:
    """
    Start C{name -d -c config} (NSD and unbound share these options: stay in
    the foreground, read this file) in C{config}'s folder, and wait until it
    answers C{probe} SOA (any reply counts) on C{address}:C{port}.

    @raise LabError: if it exits or stays silent.
    """
    directory = config.parent
    log_path = directory / f"{name}.log"
    executable = command_path(name)
    if executable is None:
        raise LabError(f"{name} is not installed (Debian package {TOOLS[name]})")
    with open(log_path.with_suffix(".out"), "wb") as output:
        process = subprocess.Popen(
            [executable, "-d", "-c", str(config)],
            cwd=directory,
            stdout=output,
            stderr=subprocess.STDOUT,
            preexec_fn=stop_with_parent,
        )
    daemon = Daemon(name, address, port, process, log_path)
    query = dns.message.make_query(probe, "SOA")
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LabError(f"{name} exited with {process.returncode}:\n{daemon.log()}")
        try:
            dns.query.udp(query, address, port=port, timeout=0.2)
            return daemon
        except (dns.exception.Timeout, OSError):
            continue
    daemon.stop()
    raise LabError(f"{name} did not answer within {READY_TIMEOUT} s:\n{daemon.log()}")


def start_on_free_port(
    name: str, directory: Path, address: str, probe: str, conf: Callable[[int], str]
) -> Daemon:
    """
    Write C{name.conf} (C{conf(port)}) for a free port and start C{name} on
    it, a few times over: another lab (another checkout's tests) may take the
    port between the check and the bind.
    """

    def attempt() -> Daemon:
        port = free_port(address)
        config = directory / f"{name}.conf"
        config.write_text(conf(port))
        return start_daemon(name, config, address, port, probe)

    for _ in range(START_ATTEMPTS - 1):
        with suppress(LabError):
            return attempt()
    return attempt()


@dataclass
class Lab:
    """A running lab: its folder, NSD and unbound."""

    directory: Path
    zones: list[SignedZone]
    nsd: Daemon
    unbound: Daemon


@contextmanager
def running_lab(directory: Path) -> Iterator[Lab]:
    """
    Build the zones in C{directory}, start NSD and unbound there, and stop
    both on exit, however the block ends.

    @raise LabError: when a tool is missing or a step fails.
    """
    missing = missing_packages()
    if missing:
        raise LabError(f"missing Debian packages: {' '.join(missing)}")
    zones = [make_zone(directory, origin, signing) for origin, signing in ZONES.items()]
    (directory / "root.hints").write_text(
        f". 3600000 NS a.root.dnslab.\na.root.dnslab. 3600000 A {DEAD_ROOT}\n"
    )
    with ExitStack() as stack:
        nsd = start_on_free_port(
            "nsd",
            directory,
            NSD_ADDRESS,
            "secure.test.",
            lambda port: nsd_conf(directory, port, zones),
        )
        stack.callback(nsd.stop)
        unbound = start_on_free_port(
            "unbound",
            directory,
            UNBOUND_ADDRESS,
            "plain.test.",
            lambda port: unbound_conf(directory, port, nsd.port, zones),
        )
        stack.callback(unbound.stop)
        yield Lab(directory, zones, nsd, unbound)


def main() -> None:
    """
    C{python -m tests.support.dnslab [--port N] [--directory D]}: the lab and a meshdns
    forwarding to its unbound, until Ctrl-C.
    """
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.dnslab", description=main.__doc__
    )
    parser.add_argument("--port", type=int, default=15353, help="meshdns's port on 127.0.0.1")
    parser.add_argument("--directory", type=Path, help="keep the lab's files here")
    args = parser.parse_args()
    with ExitStack() as stack:
        directory = args.directory or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        directory.mkdir(parents=True, exist_ok=True)
        lab = stack.enter_context(running_lab(directory.resolve()))
        meshdns = launch_meshdns(
            lab.directory,
            {"listen": {"port": args.port}, "upstream": {"servers": [lab.unbound.server]}},
        )
        stack.callback(meshdns.stop)
        print(f"files    {lab.directory}")
        print(f"nsd      {lab.nsd.server}  (authoritative: {' '.join(ZONES)})")
        print(f"unbound  {lab.unbound.server}  (validating; anchors for the signed zones)")
        print(f"meshdns  {meshdns.address}:{meshdns.port}  (forwarding to unbound)")
        print(f"try      dig @{meshdns.address} -p {meshdns.port} +dnssec www.secure.test A")
        print("Ctrl-C stops everything.", flush=True)
        # SIGTERM ends the wait as Ctrl-C does, so the daemons are stopped either way.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            while True:
                signal.pause()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
