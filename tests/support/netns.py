"""
Throwaway network namespaces for tests that need root-only networking
(iptables, routes, real redirected traffic) without touching the host.

Use L{network_namespace} as a context manager, or from a fixture::

    @pytest.fixture
    def ns() -> Iterator[Netns]:
        with network_namespace() as ns:
            yield ns

It skips the test (never fails it) when the namespace cannot be made: not
root, no C{ip}, or C{ip netns add} refused (a container without the
capability). The namespace has only C{lo}, brought up, so traffic sent inside
it can reach nothing but the namespace itself; it is deleted on exit, after
the processes started with L{Netns.popen} are stopped, even when the test
failed.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from tests.support.processes import stop_process
from tests.support.required import require_command, unavailable

#: Every namespace made here is named with this prefix, so a leftover one
#: (from a killed test run) is easy to spot in C{ip netns list}.
PREFIX = "meshdns-test-"


@dataclass
class Netns:
    """
    A network namespace made by L{network_namespace}.

    @ivar name: its name, for C{ip netns exec NAME}.
    """

    name: str
    _processes: list[subprocess.Popen[str]] = field(default_factory=list)

    def argv(self, argv: Sequence[str]) -> list[str]:
        """C{argv} prefixed so that it runs inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self, argv: Sequence[str], check: bool = True, timeout: float = 30, **kwargs: object
    ) -> subprocess.CompletedProcess[str]:
        """Run C{argv} inside the namespace, capturing its output as text."""
        return subprocess.run(
            self.argv(argv),
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
            **kwargs,
        )

    def popen(self, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[str]:
        """
        Start C{argv} inside the namespace, in the background, with text
        pipes for stdout and stderr; it is stopped when the namespace goes.
        """
        process = subprocess.Popen(
            self.argv(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **kwargs,
        )
        self._processes.append(process)
        return process

    def stop_processes(self) -> None:
        """
        Stop what L{popen} started, by PID: SIGTERM, then SIGKILL. A process
        left inside would keep the namespace alive after C{ip netns del}.
        """
        for process in self._processes:
            stop_process(process)
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()
        self._processes.clear()


def require_netns() -> None:
    """
    Skip the calling test, saying why, when namespaces cannot be made here;
    fail it instead as root or on CI (L{tests.support.required}).
    """
    if os.geteuid() != 0:
        unavailable("network namespaces need root")
    require_command("ip", "iproute2")


@contextmanager
def network_namespace() -> Iterator[Netns]:
    """
    A fresh namespace, with C{lo} up, deleted on exit whatever happened.
    """
    require_netns()
    name = PREFIX + secrets.token_hex(4)
    added = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if added.returncode != 0:
        unavailable(f"ip netns add failed: {added.stderr.strip()}")
    ns = Netns(name)
    try:
        ns.run(["ip", "link", "set", "lo", "up"])
        yield ns
    finally:
        ns.stop_processes()
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
