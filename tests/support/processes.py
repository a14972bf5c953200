"""
Real processes for the integration tests, on loopback only: the fake upstream
(L{start_upstream}) and C{twistd -n meshdns} (L{launch_meshdns},
L{run_twistd}), with what a test needs to talk to them and to stop them.

Children run meshdns as installed (test.sh installs the wheel), never from the
source tree: L{child_env} puts nothing on C{PYTHONPATH}, and every child runs
in a folder outside the repository, so that what is tested is what ships.
"""

from __future__ import annotations

import contextlib
import copy
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.message
import dns.opcode
import dns.query
import pytest
import yaml

from tests.support.fakeupstream import Counts, read_counts, reset_counts

FAKE_UPSTREAM = Path(__file__).with_name("fakeupstream.py")
#: A TCP server that answers each connection with a prefix and what it was sent.
TCP_ECHO = Path(__file__).with_name("tcpecho.py")
LOOPBACK = "127.0.0.1"
#: The twistd command line up to the plugin name: no daemon, no pid file (so
#: that several instances can run from one folder). Not C{python -m twisted}:
#: that is C{twist}, which has neither option. C{twisted.scripts.twistd} has no
#: C{__main__}, hence C{-c} (with this interpreter, whatever venv's C{bin} is on
#: PATH), naming itself C{twistd} so that messages read as they do in production.
TWISTD = [
    sys.executable,
    "-c",
    "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()",
    "-n",
    "--pidfile=",
]

UPSTREAM_READY_TIMEOUT = 10.0
MESHDNS_READY_TIMEOUT = 15.0
STOP_GRACE = 5.0


def free_port(*addresses: str) -> int:
    """
    A port free on every one of C{addresses} (default: C{127.0.0.1}) for both
    UDP and TCP at the time of the call (meshdns serves both on one port, on
    each of its addresses). Every socket is released on return.
    """
    addresses = addresses or (LOOPBACK,)
    for _ in range(50):
        with contextlib.ExitStack() as sockets:

            def bind(address: str, kind: int, port: int) -> int:
                family = socket.AF_INET6 if ":" in address else socket.AF_INET
                sock = sockets.enter_context(socket.socket(family, kind))
                sock.bind((address, port))
                return sock.getsockname()[1]

            port = bind(addresses[0], socket.SOCK_DGRAM, 0)
            try:
                for address in addresses:
                    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                        if (address, kind) != (addresses[0], socket.SOCK_DGRAM):
                            bind(address, kind, port)
            except OSError:
                continue
            return port
    raise RuntimeError(f"no port free for both UDP and TCP on {', '.join(addresses)}")


def ipv6_loopback_missing() -> str:
    """Why C{::1} cannot be bound here (no IPv6), or C{""} when it can."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError as e:
        return f"cannot bind ::1 on this machine: {e}"
    return ""


def child_env() -> dict[str, str]:
    """
    The environment for child processes: nothing added to the module path, so
    that C{meshdns_plugin} and the C{twisted/plugins} drop-in come from the
    installed wheel, as in production (run children outside the repository:
    L{outside_the_source_tree}); unbuffered output, so that a log read after
    a failure is complete.
    """
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def outside_the_source_tree() -> Path:
    """
    A folder for a child's C{cwd} that is not the repository: C{python -c}
    and C{twistd} put their working folder first on the module path, which
    in the checkout would import C{meshdns_plugin} from the source tree
    instead of the installed wheel.
    """
    return Path(tempfile.gettempdir())


def stop_process(process: subprocess.Popen) -> int:
    """SIGTERM C{process}, SIGKILL it if it is still there after 5 s; its exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait(STOP_GRACE)


def run_twistd(
    args: Sequence[str], timeout: float = 30.0, cwd: Path | None = None
) -> tuple[int, str]:
    """
    Run C{twistd -n meshdns ARGS} to completion (for configs that must be
    refused at start-up); its exit code and its stdout and stderr together.

    @raise subprocess.TimeoutExpired: if it is still running after C{timeout}
        (it is killed first): a bad config must not start serving.
    """
    result = subprocess.run(
        [*TWISTD, "meshdns", *args],
        cwd=cwd or outside_the_source_tree(),
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    return result.returncode, result.stdout


@dataclass
class UpstreamProcess:
    """
    A running C{tests/support/fakeupstream.py}.

    @ivar server: C{"ADDRESS:PORT"}, as meshdns's C{upstream.servers} wants it.
    """

    address: str
    port: int
    process: subprocess.Popen

    @property
    def server(self) -> str:
        return f"{self.address}:{self.port}"

    def counts(self) -> Counts:
        """The queries received so far: C{{(name, type, "udp"|"tcp"): count}}."""
        return read_counts(self.address, self.port)

    def count(self, name: str, rdtype: str = "A", transport: str = "udp") -> int:
        """How many times C{name} (any case, trailing dot optional) was asked."""
        key = (name.lower().rstrip(".") + ".", rdtype.upper(), transport)
        return self.counts().get(key, 0)

    def reset(self) -> None:
        """Set every count back to zero."""
        reset_counts(self.address, self.port)

    def stop(self) -> int:
        return stop_process(self.process)


def start_upstream(
    log_path: Path, fail_mode: str | None = None, port: int = 0
) -> UpstreamProcess:
    """
    Start the fake upstream and wait for its C{READY udp=P tcp=P} line; by
    default on a port it picks itself (no race for a free port), or on
    C{port} to bring a stopped upstream back where meshdns expects it.
    """
    args = [sys.executable, str(FAKE_UPSTREAM), "--port", str(port), "--address", LOOPBACK]
    if fail_mode is not None:
        args += ["--fail-mode", fail_mode]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env(),
            cwd=outside_the_source_tree(),
        )
    deadline = time.monotonic() + UPSTREAM_READY_TIMEOUT
    while time.monotonic() < deadline:
        for line in log_path.read_text(errors="replace").splitlines():
            if line.startswith("READY "):
                port = int(dict(w.split("=", 1) for w in line.split()[1:])["udp"])
                return UpstreamProcess(LOOPBACK, port, process)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    stop_process(process)
    pytest.fail(f"fake upstream did not start:\n{log_path.read_text(errors='replace')}")


@dataclass
class MeshdnsProcess:
    """A running C{twistd -n meshdns}, with what a test needs to talk to it."""

    address: str
    port: int
    process: subprocess.Popen
    directory: Path
    config_path: Path
    log_path: Path

    def log(self) -> str:
        """Everything twistd has written so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace")

    def query(
        self, name: str, rdtype: str = "A", tcp: bool = False, timeout: float = 5.0, **kw: Any
    ) -> dns.message.Message:
        """
        Ask meshdns over UDP (or TCP); C{kw} go to L{dns.message.make_query}
        (e.g. C{use_edns=0, payload=4096}, C{flags=0} for RD=0).
        """
        query = dns.message.make_query(name, rdtype, **kw)
        send = dns.query.tcp if tcp else dns.query.udp
        return send(query, self.address, port=self.port, timeout=timeout)

    def stop(self) -> int:
        """Stop meshdns (SIGTERM, then SIGKILL); its exit code."""
        return stop_process(self.process)


def wait_until_answering(meshdns: MeshdnsProcess, timeout: float = MESHDNS_READY_TIMEOUT) -> None:
    """
    Wait until meshdns answers anything on its UDP port.

    The probe is a STATUS-opcode query: meshdns answers it NOTIMP by itself,
    so it never reaches (or is counted by) an upstream, and it works even when
    no upstream is up. One socket is kept for the whole wait, so a late reply
    to an earlier probe counts too.
    """
    probe = dns.message.make_query("ready.meshdns.test.", "A")
    probe.set_opcode(dns.opcode.STATUS)
    wire = probe.to_wire()
    family = socket.AF_INET6 if ":" in meshdns.address else socket.AF_INET
    deadline = time.monotonic() + timeout
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.1)
        while time.monotonic() < deadline:
            if meshdns.process.poll() is not None:
                pytest.fail(
                    f"meshdns exited with {meshdns.process.returncode} before answering:\n"
                    f"{meshdns.log()}"
                )
            try:
                sock.sendto(wire, (meshdns.address, meshdns.port))
                sock.recvfrom(65535)
                return
            except OSError:  # timeouts, and ICMP port unreachable while it starts
                continue
    meshdns.stop()
    pytest.fail(f"meshdns did not answer within {timeout} s:\n{meshdns.log()}")


def launch_meshdns(
    directory: Path,
    config: dict[str, Any],
    entries: dict[str, str] | None = None,
    extra_args: Sequence[str] = (),
    open_files: int | None = None,
) -> MeshdnsProcess:
    """
    Write C{meshdns.yaml} and the entry files into C{directory}, start
    C{twistd -n meshdns} there and wait until it answers.

    @param open_files: if given, the child starts with this RLIMIT_NOFILE,
        soft and hard (as C{prlimit --nofile=N:N} would start it), so that
        meshdns cannot raise it.

    Filled in unless the caller gives them:
      - C{listen}: C{127.0.0.1} and a free port (free on every address,
        when C{listen.address} is a list);
      - C{admin}: disabled (port 0);
      - C{entries}: the names of the C{entries} files (relative to C{directory});
      - C{upstream.resolv_conf}: an empty file, so that neither the host's
        nameservers nor its search list leak into a test (and nothing is ever
        forwarded off the machine): pass C{upstream.servers} to forward.
    """
    config = copy.deepcopy(config)
    listen = config.setdefault("listen", {})
    listen.setdefault("address", LOOPBACK)
    # One address or a list of them: the process is probed on the first.
    addresses = listen["address"] if isinstance(listen["address"], list) else [listen["address"]]
    if "port" not in listen:
        listen["port"] = free_port(*addresses)
    # No admin endpoint unless asked for: parallel processes would compete
    # for its default port.
    config.setdefault("admin", {"port": 0})
    upstream = config.setdefault("upstream", {})
    if "resolv_conf" not in upstream:
        empty = directory / "resolv.conf"
        empty.write_text("# meshdns tests: no host nameservers, no search list\n")
        upstream["resolv_conf"] = str(empty)
    for relative, text in (entries or {}).items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    if entries:
        config.setdefault("entries", list(entries))
    config_path = directory / "meshdns.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    log_path = directory / f"meshdns-{listen['port']}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [*TWISTD, "meshdns", "--config", str(config_path), *extra_args],
            cwd=directory,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env(),
            preexec_fn=None if open_files is None else _limit_open_files(open_files),
        )
    meshdns = MeshdnsProcess(
        addresses[0], listen["port"], process, directory, config_path, log_path
    )
    wait_until_answering(meshdns)
    return meshdns


def _limit_open_files(limit: int):
    """A C{preexec_fn} setting RLIMIT_NOFILE to C{limit}, soft and hard."""

    def limit_open_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return limit_open_files


def launch_successor(first: MeshdnsProcess) -> MeshdnsProcess:
    """
    Start a second C{twistd -n meshdns} with C{first}'s config, beside it
    (a restart without a gap), and wait until it answers: once its log says
    it serves, a STATUS probe is answered by it, since new datagrams go to
    the newest process of the port (L{meshdns_plugin.dns.handover}).
    """
    log_path = first.directory / f"meshdns-{first.port}-successor.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [*TWISTD, "meshdns", "--config", str(first.config_path)],
            cwd=first.directory,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env(),
        )
    successor = MeshdnsProcess(
        first.address, first.port, process, first.directory, first.config_path, log_path
    )
    deadline = time.monotonic() + MESHDNS_READY_TIMEOUT
    while "serving on" not in successor.log():
        if process.poll() is not None or time.monotonic() > deadline:
            successor.stop()
            pytest.fail(f"the successor did not start:\n{successor.log()}")
        time.sleep(0.05)
    wait_until_answering(successor)
    return successor
