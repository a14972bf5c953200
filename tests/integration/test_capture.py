"""
C{meshdns capture} for real: iptables and routes inside a fresh network namespace, and
DNS traffic redirected there.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshdns_plugin.ops import capture
from meshdns_plugin.ops.capturerules import (
    CHAIN,
    parse_nat_state,
)
from tests.support.netns import Netns, network_namespace
from tests.support.processes import child_env, outside_the_source_tree
from tests.support.required import require_command

#: The C{meshdns} command line reduced to C{capture}, as C{cli.py} wires it;
#: its first argument replaces L{capture.RECORD_PATH}, so that no test writes
#: the host's own record.
CLI = """
import argparse, sys
from meshdns_plugin.ops import capture
capture.RECORD_PATH = sys.argv.pop(1)
parser = argparse.ArgumentParser(prog="meshdns")
capture.register(parser.add_subparsers(required=True))
args = parser.parse_args()
sys.exit(args.func(args))
"""


#: Echoes UDP datagrams and one TCP message per connection, on ADDRESS:PORT.
ECHO_SERVER = """
import socket, sys, threading
address, port = sys.argv[1], int(sys.argv[2])
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind((address, port))
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp.bind((address, port))
tcp.listen()
def serve_tcp():
    while True:
        conn, _ = tcp.accept()
        with conn:
            conn.sendall(b"echo:" + conn.recv(512))
threading.Thread(target=serve_tcp, daemon=True).start()
print("ready", flush=True)
while True:
    data, peer = udp.recvfrom(512)
    udp.sendto(b"echo:" + data, peer)
"""


#: Sends "ping" to ADDRESS:PORT over PROTOCOL, optionally as uid/gid ID, and
#: prints the answer, "refused" or "timeout".
CLIENT = """
import os, socket, sys
protocol, address, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if len(sys.argv) > 4:
    os.setgid(int(sys.argv[4]))
    os.setuid(int(sys.argv[4]))
kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
s = socket.socket(socket.AF_INET, kind)
s.settimeout(3)
try:
    s.connect((address, port))
    s.send(b"ping")
    print(s.recv(512).decode())
except ConnectionRefusedError:
    print("refused")
except TimeoutError:
    print("timeout")
"""


ECHO_PORT = 25353


@pytest.fixture
def ns() -> Iterator[Netns]:
    """A fresh network namespace with iptables usable inside it."""
    require_command("iptables", "iptables")
    with network_namespace() as ns:
        try:
            yield ns
        finally:
            record_of(ns).unlink(missing_ok=True)


def record_of(ns: Netns) -> Path:
    """The capture record of the rules installed in C{ns}, which the host's tables do not hold."""
    return Path(tempfile.gettempdir()) / f"{ns.name}-capture.json"


def meshdns(ns: Netns, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run C{meshdns capture ARGV} inside C{ns}, with the record of C{ns}."""
    argv = [sys.executable, "-c", CLI, str(record_of(ns)), "capture", *argv]
    return ns.run(argv, check=False, env=child_env(), cwd=outside_the_source_tree())


def ok(ns: Netns, *argv: str) -> str:
    """Run C{meshdns capture ARGV} inside C{ns}; it must succeed quietly on stderr."""
    result = meshdns(ns, *argv)
    assert (result.returncode, result.stderr) == (0, ""), result
    return result.stdout


def saved(ns: Netns, version: int = 4) -> list[str]:
    """
    C{iptables-save -t nat} inside C{ns}, with the backend capture picks,
    without comments and counters (which change with traffic and time).
    """
    for name in capture.IPTABLES_CANDIDATES[version]:
        result = ns.run([f"{name}-save", "-t", "nat"], check=False)
        if result.returncode == 0:
            break
    else:
        pytest.fail(f"no working {version} iptables-save: {result.stderr}")
    return [
        re.sub(r"\s*\[\d+:\d+\]$", "", line)
        for line in result.stdout.splitlines()
        if not line.startswith("#")
    ]


@pytest.fixture
def resolv_conf(tmp_path: Path) -> Path:
    """A resolv.conf naming loopback servers only: nothing can leave the namespace."""
    path = tmp_path / "resolv.conf"
    path.write_text("search example.com\nnameserver 127.0.0.53\nnameserver ::1\n")
    return path


def test_install_creates_chain_and_jump(ns: Netns, resolv_conf: Path) -> None:
    ok(ns, "install", "--resolv-conf", str(resolv_conf), "--port", str(ECHO_PORT))
    chain = ns.run(["iptables", "-t", "nat", "-S", CHAIN]).stdout.splitlines()
    assert chain == [
        f"-N {CHAIN}",
        f"-A {CHAIN} -m owner --uid-owner 1337 -j RETURN",
        f"-A {CHAIN} -m owner --gid-owner 1337 -j RETURN",
        f"-A {CHAIN} -d 127.0.0.53/32 -p udp -m udp --dport 53 -j REDIRECT --to-ports 25353",
        f"-A {CHAIN} -d 127.0.0.53/32 -p tcp -m tcp --dport 53 -j REDIRECT --to-ports 25353",
    ]
    assert f"-A OUTPUT -j {CHAIN}" in ns.run(["iptables", "-t", "nat", "-S", "OUTPUT"]).stdout
    chain6 = ns.run(["ip6tables", "-t", "nat", "-S", CHAIN]).stdout
    assert "-d ::1/128 -p udp -m udp --dport 53 -j REDIRECT --to-ports 25353" in chain6


def test_install_is_idempotent_and_remove_restores(ns: Netns, resolv_conf: Path) -> None:
    # Something of the user's own, which must come through untouched.
    ns.run(["iptables", "-t", "nat", "-N", "USER_CHAIN"])
    ns.run(
        [
            "iptables",
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "--dport",
            "9999",
            "-j",
            "USER_CHAIN",
        ]
    )
    before = saved(ns), saved(ns, 6)

    ok(ns, "install", "--resolv-conf", str(resolv_conf))
    once = saved(ns), saved(ns, 6)
    assert once != before
    ok(ns, "install", "--resolv-conf", str(resolv_conf))
    assert (saved(ns), saved(ns, 6)) == once

    ok(ns, "remove")
    assert (saved(ns), saved(ns, 6)) == before
    ok(ns, "remove")
    assert (saved(ns), saved(ns, 6)) == before


def test_reinstall_converges_to_new_options(ns: Netns, resolv_conf: Path) -> None:
    """--all then IPv4 servers only: the IPv6 rules of --all go away."""
    ok(ns, "install", "--all")
    assert "REDIRECT" in ns.run(["ip6tables", "-t", "nat", "-S"]).stdout
    resolv_conf.write_text("nameserver 127.0.0.53\n")
    ok(ns, "install", "--resolv-conf", str(resolv_conf))
    assert CHAIN not in ns.run(["ip6tables", "-t", "nat", "-S"]).stdout
    assert "-d 127.0.0.53/32" in ns.run(["iptables", "-t", "nat", "-S", CHAIN]).stdout


def test_show(ns: Netns, resolv_conf: Path) -> None:
    assert ok(ns, "show") == "capture is not installed\n"
    ok(ns, "install", "--all", "--proxy-uid", "1001", "--proxy-gid", "1002")
    shown = ok(ns, "show").splitlines()
    assert f"-A OUTPUT -j {CHAIN}" in shown
    assert f"-A {CHAIN} -m owner --uid-owner 1001 -j RETURN" in shown
    assert f"-A {CHAIN} -m owner --gid-owner 1002 -j RETURN" in shown
    assert f"-A {CHAIN} -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053" in shown
    ok(ns, "remove")
    assert ok(ns, "show") == "capture is not installed\n"


def test_vip_routes(ns: Netns, resolv_conf: Path) -> None:
    ok(ns, "install", "--resolv-conf", str(resolv_conf), "--vip-routes")
    ok(ns, "install", "--resolv-conf", str(resolv_conf), "--vip-routes")
    assert "local 240.240.0.0/16 dev lo" in ns.run(["ip", "route", "show", "table", "local"]).stdout
    v6 = ns.run(["ip", "-6", "route", "show", "table", "local"]).stdout
    assert "local 2001:2::/48 dev lo" in v6
    shown = ok(ns, "show")
    assert "local 240.240.0.0/16 dev lo\nlocal 2001:2::/48 dev lo\n" in shown

    # A VIP is now an address of this (namespaced) host.
    server = ns.popen([sys.executable, "-c", ECHO_SERVER, "0.0.0.0", str(ECHO_PORT)])
    assert server.stdout is not None and server.stdout.readline() == "ready\n"
    answer = ns.run([sys.executable, "-c", CLIENT, "tcp", "240.240.3.4", str(ECHO_PORT)])
    assert answer.stdout == "echo:ping\n"

    ok(ns, "remove")
    assert "240.240.0.0" not in ns.run(["ip", "route", "show", "table", "local"]).stdout
    assert "2001:2::" not in ns.run(["ip", "-6", "route", "show", "table", "local"]).stdout
    ok(ns, "remove")


def test_config_gives_port_resolv_conf_and_ranges(
    ns: Netns, resolv_conf: Path, tmp_path: Path
) -> None:
    config = tmp_path / "meshdns.yaml"
    config.write_text(
        f"listen: {{address: [127.0.0.1, '::1'], port: 25354}}\n"
        f"upstream: {{resolv_conf: {resolv_conf}}}\n"
        f"mesh: {{ipv4_range: 240.241.0.0/16, ipv6_range: '2001:3::/48'}}\n"
    )
    ok(ns, "install", "--config", str(config), "--vip-routes")
    chain = ns.run(["iptables", "-t", "nat", "-S", CHAIN]).stdout
    assert "-d 127.0.0.53/32 -p udp -m udp --dport 53 -j REDIRECT --to-ports 25354" in chain
    assert "local 240.241.0.0/16 dev lo" in ns.run(["ip", "route", "show", "table", "local"]).stdout
    ok(ns, "remove", "--config", str(config))
    assert "240.241.0.0" not in ns.run(["ip", "route", "show", "table", "local"]).stdout

    bad = meshdns(ns, "install", "--config", str(tmp_path / "missing.yaml"))
    assert bad.returncode == 1
    assert bad.stderr.startswith("meshdns capture: error: ")
    assert len(bad.stderr.splitlines()) == 1


@pytest.mark.parametrize("protocol", ["udp", "tcp"])
def test_dns_traffic_is_redirected(ns: Netns, resolv_conf: Path, protocol: str) -> None:
    """
    A query to the resolv.conf server reaches meshdns's port instead, and the
    answer comes back as from the server; meshdns's own uid is not captured.
    """
    server = ns.popen([sys.executable, "-c", ECHO_SERVER, "127.0.0.1", str(ECHO_PORT)])
    assert server.stdout is not None and server.stdout.readline() == "ready\n"

    def ask(*as_id: str) -> str:
        argv = [sys.executable, "-c", CLIENT, protocol, "127.0.0.53", "53", *as_id]
        return ns.run(argv).stdout

    assert ask() == "refused\n"
    ok(ns, "install", "--resolv-conf", str(resolv_conf), "--port", str(ECHO_PORT))
    assert ask() == "echo:ping\n"
    assert ask("1337") == "refused\n"
    ok(ns, "remove")
    assert ask() == "refused\n"


def test_record_follows_install_and_remove(ns: Netns, resolv_conf: Path) -> None:
    """What install recorded is what the tables say, as meshdns's check reads them."""
    ok(ns, "install", "--resolv-conf", str(resolv_conf), "--proxy-uid", "1001")
    listed = parse_nat_state(ns.run(["iptables", "-w", "-t", "nat", "-S"]).stdout).chain_rules
    recorded = capture.read_record(str(record_of(ns)))
    assert parse_nat_state("\n".join(recorded[4])).chain_rules == recorded[4]
    assert [line.replace("/32", "").replace(" -m udp", "").replace(" -m tcp", "")
            for line in listed[1:]] == list(recorded[4])
    assert set(recorded) == {4, 6}
    ok(ns, "remove")
    assert not record_of(ns).exists()
