"""
Soak: mixed load against the real process while the entries are rewritten
every 10 s and the upstream flaps. Every valid query must be answered, the log
must hold no unexpected error, and RSS must not grow by more than 10% after
warm-up.

The 20-second version runs in CI; the 5-minute one is marked C{soak}
(C{pytest -m soak}).
"""

from __future__ import annotations

import os
import random
import select
import socket
import time
from collections import Counter
from pathlib import Path

import dns.message
import dns.rcode
import pytest

from tests.support.processes import start_upstream
from tests.support.samples import CONF_ENTRIES

BATCH = 60


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _entries(generation: int) -> str:
    return (
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n"
        f"metadata: {{name: soak-{generation}}}\n"
        f"spec: {{hosts: [soak.internal, gen{generation}.soak.internal], "
        f"addresses: [198.51.100.{generation % 250 + 1}]}}\n"
    )


def _batch(rng: random.Random, serial: int) -> tuple[list[bytes], list[int]]:
    """Queries of every kind (and some junk); the IDs of the valid ones."""
    names = [
        ("address.internal", "A"),  # mesh
        ("soak.internal", "AAAA"),  # mesh, empty answer
        ("auto.internal", "A"),  # mesh VIP
        (f"c{rng.randrange(50)}.upstream.test", "A"),  # cached after first use
        (f"f{serial}-{rng.randrange(10**6)}.upstream.test", "A"),  # forwarded
        (f"nx{rng.randrange(50)}.upstream.test", "A"),  # cached NXDOMAIN
    ]
    packets, ids = [], []
    for index in range(BATCH):
        if rng.random() < 0.1:
            packets.append(rng.randbytes(rng.randrange(1, 40)))
            continue
        name, rdtype = rng.choice(names)
        query = dns.message.make_query(name, rdtype)
        query.id = (serial * BATCH + index) % 65536  # unique within a batch
        packets.append(query.to_wire())
        ids.append(query.id)
    return packets, ids


def _soak(start_meshdns, tmp_path: Path, capsys, seconds: float) -> None:
    upstream_dir = tmp_path / "upstream"
    upstream_dir.mkdir()
    upstream = start_upstream(upstream_dir / "upstream.log")
    port = upstream.port
    entries = tmp_path / "soak-entries"
    entries.mkdir()
    (entries / "soak.yaml").write_text(_entries(0))
    meshdns = start_meshdns(
        {
            "upstream": {"servers": [upstream.server], "timeout": 1},
            "entries": [CONF_ENTRIES, str(entries)],
            "reload": {"poll_interval": 1},
        }
    )
    rng = random.Random(1)
    rcodes: Counter[str] = Counter()
    sent = answered = unanswered = junk = 0
    generation = 0
    started = time.monotonic()
    next_reload = started + 10
    next_flap = started + 5
    upstream_up = True
    rss_warm = None
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        serial = 0
        while time.monotonic() - started < seconds:
            now = time.monotonic()
            if rss_warm is None and now - started > seconds / 4:
                rss_warm = _rss_kib(meshdns.process.pid)
            if now >= next_reload:
                generation += 1
                temporary = entries / ".soak.yaml.tmp"
                temporary.write_text(_entries(generation))
                os.replace(temporary, entries / "soak.yaml")
                next_reload += 10
            if now >= next_flap:
                if upstream_up:
                    upstream.stop()
                else:
                    upstream = start_upstream(upstream_dir / "upstream.log", port=port)
                upstream_up = not upstream_up
                next_flap += 3 if not upstream_up else 4
            serial += 1
            packets, ids = _batch(rng, serial)
            waiting = set(ids)
            for packet in packets:
                sock.sendto(packet, ("127.0.0.1", meshdns.port))
            sent += len(ids)
            junk += len(packets) - len(ids)
            deadline = time.monotonic() + 3
            while waiting and time.monotonic() < deadline:
                ready, _, _ = select.select([sock], [], [], max(deadline - time.monotonic(), 0))
                if not ready:
                    break
                data = sock.recv(65535)
                try:
                    reply = dns.message.from_wire(data)
                except Exception:
                    continue  # a FORMERR to junk: header only
                if reply.id in waiting:
                    waiting.discard(reply.id)
                    answered += 1
                    rcodes[dns.rcode.to_text(reply.rcode())] += 1
            unanswered += len(waiting)
        rss_end = _rss_kib(meshdns.process.pid)
        newest = meshdns.query(f"gen{generation}.soak.internal")
    finally:
        sock.close()
        upstream.stop()
    log = meshdns.log()
    unexpected = [
        line
        for line in log.splitlines()
        if ("Traceback" in line or "Unhandled" in line or "#critical" in line)
    ]
    report = (
        f"soak {seconds:.0f} s: sent {sent} valid queries (+{junk} junk), answered {answered}, "
        f"unanswered {unanswered}, by rcode {dict(rcodes)}, reloads {generation}, "
        f"RSS warm {rss_warm} KiB -> end {rss_end} KiB"
    )
    with capsys.disabled():
        print("\n" + report)
    assert unanswered == 0, report
    assert answered == sent > 0
    assert [r.address for r in newest.answer[0]] == [f"198.51.100.{generation % 250 + 1}"]
    assert not unexpected, unexpected[:5]
    assert rss_warm is not None and rss_end <= rss_warm * 1.10, report


def test_soak_short(start_meshdns, tmp_path, capsys) -> None:
    _soak(start_meshdns, tmp_path, capsys, 20)


@pytest.mark.soak
def test_soak_long(start_meshdns, tmp_path, capsys) -> None:
    _soak(start_meshdns, tmp_path, capsys, 300)
