"""
Memory across reloads: a real C{twistd -n meshdns} with N ServiceEntries is
reloaded R times (SIGHUP) while a client queries it, and its resident set size
is read from /proc after the first reload and after the last.

    python bench/reload_memory.py [--entries 5000] [--reloads 100]

Everything listens on 127.0.0.1; the upstream list is empty (no query leaves
the machine). The client sends a bounded number of queries.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import dns.message

ROOT = Path(__file__).resolve().parent.parent


def entries_text(count: int) -> str:
    """C{count} ServiceEntries, half with explicit addresses, half with VIPs."""
    documents = []
    for i in range(count):
        address = f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"
        addresses = f"  addresses: [{address}]\n" if i % 2 else ""
        documents.append(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n"
            f"metadata: {{name: se{i}, namespace: default}}\n"
            f"spec:\n  hosts: [h{i}.example.com]\n{addresses}"
            "  ports: [{number: 80, name: http, protocol: HTTP}]\n"
            f"  resolution: {'STATIC' if i % 2 else 'DNS'}\n"
            + ("  endpoints: [{address: 192.0.2.1}]\n" if i % 2 else "")
        )
    return "---\n".join(documents)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def reloads_done(log: Path) -> int:
    return log.read_text(errors="replace").count("Reloaded:")


def run(entries: int, reloads: int, python: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as scratch:
        home = Path(scratch)
        (home / "entries").mkdir()
        (home / "entries" / "se.yaml").write_text(entries_text(entries))
        (home / "resolv.conf").write_text("")
        port = free_port()
        (home / "meshdns.yaml").write_text(
            f"listen: {{address: 127.0.0.1, port: {port}}}\nadmin: {{port: 0}}\n"
            f"upstream: {{resolv_conf: {home / 'resolv.conf'}}}\n"
            "entries: [entries]\nreload: {poll_interval: 3600}\n"
        )
        log = home / "meshdns.log"
        twistd = [python, "-c", "from twisted.scripts.twistd import run; run()"]
        process = subprocess.Popen(
            [*twistd, "-n", "--pidfile=", "--logfile", str(log), "meshdns",
             "--config", str(home / "meshdns.yaml")],
            cwd=home,
        )
        stop = threading.Event()
        sent = [0]

        def client() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(0.5)
                for i in range(2_000_000):
                    if stop.is_set():
                        return
                    query = dns.message.make_query(f"h{i % entries}.example.com", "A")
                    sock.sendto(query.to_wire(), ("127.0.0.1", port))
                    try:
                        sock.recv(512)
                    except OSError:
                        pass
                    sent[0] += 1

        try:
            deadline = time.monotonic() + 120
            while "serving on" not in (log.read_text() if log.exists() else ""):
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("meshdns did not start")
                time.sleep(0.1)
            thread = threading.Thread(target=client, daemon=True)
            thread.start()
            after_first = 0
            started = time.monotonic()
            for n in range(1, reloads + 1):
                os.kill(process.pid, signal.SIGHUP)
                while reloads_done(log) < n:
                    if time.monotonic() - started > 60 * 30 or process.poll() is not None:
                        raise RuntimeError(f"reload {n} did not finish")
                    time.sleep(0.05)
                if n == 1:
                    after_first = rss_kib(process.pid)
            end = rss_kib(process.pid)
            stop.set()
            thread.join(5)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        return {
            "entries": entries,
            "reloads": reloads,
            "rss_after_first_reload_mib": after_first / 1024,
            "rss_after_last_reload_mib": end / 1024,
            "ratio": end / after_first,
            "queries": sent[0],
            "seconds": time.monotonic() - started,
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=5000)
    parser.add_argument("--reloads", type=int, default=100)
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args()
    print(json.dumps(run(args.entries, args.reloads, args.python), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
