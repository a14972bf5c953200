"""
File descriptors: the soft RLIMIT_NOFILE raised to the hard limit (in a
child interpreter, whose limits the test sets), the TCP connection cap that
keeps a reserve below it, and one log line when the cap bites.
"""

from __future__ import annotations

import subprocess
import sys

from twisted.logger import LogLevel, globalLogPublisher

from meshdns_plugin.dns.descriptors import FIXED_RESERVE, tcp_connection_cap
from meshdns_plugin.dns.server import MeshDNSServerFactory

CHILD = """
import resource
resource.setrlimit(resource.RLIMIT_NOFILE, (256, {hard}))
from meshdns_plugin.dns.descriptors import raise_open_files_limit
print(raise_open_files_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


def test_soft_limit_raised_to_hard() -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    hard = min(hard, 4096) if hard != resource.RLIM_INFINITY else 4096
    out = subprocess.run(
        [sys.executable, "-c", CHILD.format(hard=hard)],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout.split()
    assert out == [str(hard), str(hard)]


def test_cap_keeps_a_reserve() -> None:
    assert tcp_connection_cap(256, 1_048_576, 1000) == 256
    # 2,000 configured against 1,024 descriptors, as issue 19 tried.
    assert tcp_connection_cap(2000, 1024, 100) == 1024 - FIXED_RESERVE - 100
    assert tcp_connection_cap(2000, 1024, 1000) == 256  # a quarter, at least


def test_one_log_line_when_the_cap_bites() -> None:
    lines: list[str] = []

    def observer(event) -> None:
        if event.get("log_level") == LogLevel.warn:
            lines.append(event["log_format"])

    factory = MeshDNSServerFactory(tcp_max_connections=2)
    globalLogPublisher.addObserver(observer)
    try:
        factory.connections = [object(), object()]
        for _ in range(5):
            assert factory.buildProtocol(("127.0.0.1", 1)) is None
    finally:
        globalLogPublisher.removeObserver(observer)
    assert len(lines) == 1 and "TCP connections open" in lines[0]
    assert factory.stats.dropped == 5
