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
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

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


def node_with_pods(
    stack: ExitStack, node_address: str, pods: Sequence[tuple[str, Sequence[str]]]
) -> tuple[Netns, list[Netns]]:
    """
    A "node" namespace with a bridge at C{node_address}/24, and one "pod"
    namespace per C{(address, search domains)} on it (a veth pair, the pod's
    end named C{eth0}), whose resolv.conf is the one kubelet writes for a
    ClusterFirst pod: the node as nameserver, C{ndots:5}. C{stack} deletes
    them all, and the resolv.conf files, on exit.
    """
    node = stack.enter_context(network_namespace())
    node.run(["ip", "link", "add", "br0", "type", "bridge"])
    node.run(["ip", "addr", "add", f"{node_address}/24", "dev", "br0"])
    node.run(["ip", "link", "set", "br0", "up"])
    made = []
    for index, (address, search) in enumerate(pods):
        pod = stack.enter_context(network_namespace())
        node.run(
            ["ip", "link", "add", f"veth{index}", "type", "veth", "peer", "name", f"pod{index}"]
        )
        node.run(["ip", "link", "set", f"pod{index}", "netns", pod.name])
        node.run(["ip", "link", "set", f"veth{index}", "master", "br0", "up"])
        pod.run(["ip", "link", "set", f"pod{index}", "name", "eth0"])
        pod.run(["ip", "addr", "add", f"{address}/24", "dev", "eth0"])
        pod.run(["ip", "link", "set", "eth0", "up"])
        # ip netns exec bind-mounts this over /etc/resolv.conf.
        etc = Path("/etc/netns") / pod.name
        etc.mkdir(parents=True)
        stack.callback(shutil.rmtree, etc, ignore_errors=True)
        (etc / "resolv.conf").write_text(
            f"nameserver {node_address}\nsearch {' '.join(search)}\n"
            "options ndots:5 timeout:2 attempts:1\n"
        )
        made.append(pod)
    return node, made
