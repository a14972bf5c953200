"""
A dead upstream for the "down" workload: a UDP socket on loopback that reads
every datagram and never answers, as a DNS server gone behind a firewall
looks to a forwarder (no reply, no ICMP error).

    python bench/blackhole.py --address 127.0.0.173 --port 53 --count-file FILE

It prints C{READY} once bound. On SIGUSR1 it writes the number of datagrams
received so far to C{--count-file} (how many queries a forwarder still sent
to the dead server); it stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import ipaddress
import signal
import socket
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count-file", type=Path, required=True)
    args = parser.parse_args(argv)
    if not ipaddress.ip_address(args.address).is_loopback:
        print(f"blackhole: {args.address} is not a loopback address", file=sys.stderr)
        return 2
    received = 0

    def write_count(signum: int, frame: object) -> None:
        args.count_file.write_text(f"{received}\n")

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGUSR1, write_count)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((args.address, args.port))
        args.count_file.write_text("0\n")
        print("READY", flush=True)
        while True:
            sock.recv(65535)
            received += 1


if __name__ == "__main__":
    raise SystemExit(main())
