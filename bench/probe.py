"""
Wait until a DNS server under test answers, then check that it answers the
benchmark's workloads as expected.

A comparison is only fair if every server gives the same answers: a server
that answers NXDOMAIN where the others forward (unbound's default C{test.}
zone, say) would look fast for the wrong reason. So before it is measured,
each server must answer a sample of each query file correctly:
  - C{local.txt}: NOERROR, AA or not, with the generated address;
  - C{upstream.txt}: NOERROR with the fake upstream's address (127.0.0.10 or ::10);
  - C{nxdomain.txt}: NXDOMAIN;
  - C{forward.txt}: NOERROR with NSD's wildcard answer (the same addresses),
    names of their own that the measured runs never ask.

    python bench/probe.py --server 127.0.0.154 --port 5300 --data DIR [--workloads local,...]

Exit status 0 when all is well; otherwise one line per problem on stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gen_entries  # noqa: E402

#: What the fake upstream answers for any name of its zone (tests/support/fakeupstream.py).
UPSTREAM_ANSWER = {"A": "127.0.0.10", "AAAA": "::10"}
#: Queries per workload checked.
SAMPLE = 20


def ask(server: str, port: int, name: str, rdtype: str, timeout: float) -> dns.message.Message:
    """One UDP query (RD set, no EDNS, as dnsperf sends by default)."""
    query = dns.message.make_query(name, rdtype)
    return dns.query.udp(query, server, port=port, timeout=timeout)


def wait_until_answering(server: str, port: int, name: str, rdtype: str, timeout: float) -> None:
    """
    Ask C{name} until any reply comes back.

    @raise TimeoutError: if none came back within C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ask(server, port, name, rdtype, 0.5)
            return
        except (OSError, dns.exception.Timeout):
            time.sleep(0.1)
    raise TimeoutError(f"{server}#{port} did not answer within {timeout} s")


def expected(
    workload: str, name: str, rdtype: str, local: dict[str, str]
) -> tuple[int, str | None]:
    """The rcode and (for NOERROR) the address the reply to a query must carry."""
    if workload == "local":
        return dns.rcode.NOERROR, local[name]
    if workload == "upstream":
        return dns.rcode.NOERROR, UPSTREAM_ANSWER[rdtype]
    if workload == "forward":
        return dns.rcode.NOERROR, gen_entries.FORWARD_ANSWER[rdtype]
    return dns.rcode.NXDOMAIN, None


def check(server: str, port: int, data: Path, workloads: list[str], hosts: int) -> list[str]:
    """Ask a sample of each workload's queries; one line per wrong answer."""
    local = {n.name: n.address for n in gen_entries.local_names(hosts)}
    problems = []
    for workload in workloads:
        lines = (data / f"{workload}.txt").read_text().splitlines()
        for line in lines[:: max(len(lines) // SAMPLE, 1)][:SAMPLE]:
            name, rdtype = line.split()
            rcode, address = expected(workload, name, rdtype, local)
            try:
                reply = ask(server, port, name, rdtype, 5.0)
            except (OSError, dns.exception.Timeout) as e:
                problems.append(f"{workload}: {name} {rdtype}: no answer ({e!r})")
                continue
            got = [
                item.to_text()
                for rrset in reply.answer
                if rrset.rdtype == dns.rdatatype.from_text(rdtype)
                for item in rrset
            ]
            if reply.rcode() != rcode or (address is not None and got != [address]):
                problems.append(
                    f"{workload}: {name} {rdtype}: got {dns.rcode.to_text(reply.rcode())} {got}, "
                    f"want {dns.rcode.to_text(rcode)} {[address] if address else []}"
                )
    return problems


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data", type=Path, required=True, help="gen_entries.py --servers output")
    parser.add_argument("--hosts", type=int, default=1000, help="local names generated")
    parser.add_argument("--workloads", default="local,upstream,nxdomain,forward")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for start-up")
    parser.add_argument("--wait-only", action="store_true", help="only wait until it answers")
    args = parser.parse_args(argv)
    first = next(gen_entries.local_names(1))
    try:
        wait_until_answering(args.server, args.port, first.name, first.qtype, args.timeout)
    except TimeoutError as e:
        print(f"probe: {e}", file=sys.stderr)
        return 1
    if args.wait_only:
        return 0
    problems = check(args.server, args.port, args.data, args.workloads.split(","), args.hosts)
    for problem in problems:
        print(f"probe: {args.server}#{args.port}: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
