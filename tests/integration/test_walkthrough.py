"""
Istio's "DNS Proxying" guide, end to end, in a Linux network namespace.

The namespace plays the guide's pod. Its C{/etc/netns/NAME/resolv.conf}
names 127.0.0.53, where the fake upstream plays the cluster DNS: it knows the
two tcp-echo backends (127.0.0.21 and 127.0.0.22, both on port 9000, each
answering with its own prefix) and nothing of the ServiceEntries. meshdns runs
inside as uid 1337 with the guide's entries and its VIP listeners on;
C{meshdns capture install} sends the namespace's DNS traffic to it, except
its own, which goes on to 127.0.0.53. Then unmodified tools (C{getent},
Python's C{socket}) ask from inside, and C{capture remove} must leave no rule.

Only loopback addresses inside the namespace are used: it has nothing but
C{lo}, so nothing can leave it. The test skips, saying why, where namespaces
or iptables are unavailable (and fails instead as root or on CI).
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from tests.support.netns import Netns, network_namespace, require_netns
from tests.support.paths import REPO_ROOT
from tests.support.pods import (
    MESHDNS,
    PROXY_ID,
    proxy_directory,
    proxy_user,
    started,
    uid_of,
    wait_for_meshdns,
)
from tests.support.processes import (
    FAKE_UPSTREAM,
    TCP_ECHO,
    TWISTD,
    child_env,
    outside_the_source_tree,
)
from tests.support.required import require_command

NAMESERVER = "127.0.0.53"
DNS_PORT = 15053
BACKENDS = {
    "tcp-echo.external-1.svc.cluster.local": ("127.0.0.21", "one"),
    "tcp-echo.external-2.svc.cluster.local": ("127.0.0.22", "two"),
}
#: Connects to NAME:9000 over each address family, sends "hello", shuts down
#: its writing side and prints "ADDRESS REPLY" per family.
CONNECT = """
import socket, sys
for family in (socket.AF_INET, socket.AF_INET6):
    address = socket.getaddrinfo(sys.argv[1], 9000, family, socket.SOCK_STREAM)[0][4]
    with socket.create_connection(address[:2], timeout=5) as conn:
        conn.sendall(b"hello")
        conn.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := conn.recv(100):
            reply += chunk
    print(address[0], reply.decode())
"""


@contextmanager
def netns_resolv_conf(ns: Netns, text: str) -> Iterator[Path]:
    """C{/etc/netns/NAME/resolv.conf}, which C{ip netns exec} mounts on /etc/resolv.conf."""
    top = Path("/etc/netns")
    made_top = not top.exists()
    path = top / ns.name / "resolv.conf"
    path.parent.mkdir(parents=True)
    try:
        path.write_text(text)
        yield path
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)
        if made_top:
            with suppress(OSError):  # another namespace's folder is there now
                top.rmdir()





@pytest.fixture
def ns() -> Iterator[Netns]:
    require_netns()
    require_command("iptables", "iptables")
    with proxy_user(), network_namespace() as ns:
        yield ns


def test_the_guide_in_a_namespace(ns: Netns) -> None:
    run_env = {"env": child_env(), "cwd": outside_the_source_tree()}
    resolv_conf_text = f"nameserver {NAMESERVER}\noptions timeout:1 attempts:1\n"
    with netns_resolv_conf(ns, resolv_conf_text) as resolv_conf, proxy_directory() as home:
        # The cluster DNS, and the two tcp-echo services of the guide.
        records = [arg for name, (address, _) in BACKENDS.items()
                   for arg in ("--record", f"{name}={address}")]
        upstream = ns.popen([sys.executable, str(FAKE_UPSTREAM), "--address", NAMESERVER,
                             "--port", "53", *records], env=child_env())
        started(upstream, "READY ")
        for address, prefix in BACKENDS.values():
            started(ns.popen([sys.executable, str(TCP_ECHO), address, "9000", prefix]), "ready")

        (home / "entries").mkdir()
        shutil.copy(REPO_ROOT / "conf" / "entries" / "istio-dns-proxying.yaml", home / "entries")
        (home / "resolv.conf").write_text("# no search list\n")
        config = home / "meshdns.yaml"
        config.write_text(
            f"listen: {{address: 127.0.0.1, port: {DNS_PORT}}}\n"
            f"upstream: {{servers: ['{NAMESERVER}:53'], resolv_conf: {home / 'resolv.conf'}}}\n"
            "admin: {port: 0}\n"
            "vip_listeners: {enabled: true}\n"
            "entries: [entries]\n"
        )
        capture = ns.run([*MESHDNS, "capture", "install", "--config", str(config),
                          "--resolv-conf", str(resolv_conf), "--vip-routes",
                              "--record", str(home / "capture.json")], **run_env)
        assert capture.stderr == ""

        log = home / "meshdns.log"
        meshdns = ns.popen(
            [*TWISTD, "--uid", str(PROXY_ID), "--gid", str(PROXY_ID), "--logfile", str(log),
             "meshdns", "--config", str(config)],
            **run_env,
        )
        wait_for_meshdns(meshdns, log)
        assert uid_of(meshdns.pid) == PROXY_ID

        try:
            # DNS capture: a ServiceEntry's own address.
            hosts = ns.run(["getent", "hosts", "address.internal"])
            assert hosts.stdout.split() == ["198.51.100.1", "address.internal"]

            # Auto allocation: a VIP of each family (getent hosts asks AAAA first).
            vip = ns.run([sys.executable, "-c",
                          "import socket; print(socket.gethostbyname('auto.internal'))"])
            assert ipaddress.ip_address(vip.stdout.strip()) in ipaddress.ip_network(
                "240.240.0.0/16")
            vip6 = ns.run(["getent", "hosts", "auto.internal"]).stdout.split()[0]
            assert ipaddress.ip_address(vip6) in ipaddress.ip_network("2001:2::/48")

            # Two TCP services on port 9000, told apart by their VIPs, over
            # IPv4 and IPv6 alike.
            for name, (_, prefix) in BACKENDS.items():
                lines = ns.run([sys.executable, "-c", CONNECT, name]).stdout.splitlines()
                assert [line.split(" ", 1)[1] for line in lines] == [f"{prefix} hello"] * 2
                v4, v6 = (ipaddress.ip_address(line.split()[0]) for line in lines)
                assert v4 in ipaddress.ip_network("240.240.0.0/16")
                assert v6 in ipaddress.ip_network("2001:2::/48")

            # `meshdns listeners`, read as the guide reads `istioctl pc listener`:
            # `grep tcp-echo | awk '{printf "ADDRESS=%s, DESTINATION=%s %s\\n", $1, $4, $5}'`.
            table = subprocess.run([*MESHDNS, "listeners", "--config", str(config)],
                                   capture_output=True, text=True, check=True, **run_env)
            awk = [
                "ADDRESS={}, DESTINATION={} {}".format(*(row.split()[i] for i in (0, 3, 4)))
                for row in table.stdout.splitlines()
                if "tcp-echo" in row
            ]
            for name in BACKENDS:
                address = ns.run([sys.executable, "-c",
                                  f"import socket; print(socket.gethostbyname('{name}'))"])
                line = (f"ADDRESS={address.stdout.strip()}, "
                        f"DESTINATION=Cluster: outbound|9000||{name}")
                assert line in awk

            # An unknown name is forwarded (the zone's answer is 127.0.0.10).
            forwarded = ns.run([sys.executable, "-c",
                                "import socket; print(socket.gethostbyname('www.upstream.test'))"])
            assert forwarded.stdout == "127.0.0.10\n"
        finally:
            removed = ns.run([*MESHDNS, "capture", "remove", "--config", str(config),
                              "--record", str(home / "capture.json")], **run_env)
        assert removed.stderr == ""

        # Nothing of meshdns is left in the tables or the routes.
        shown = ns.run([*MESHDNS, "capture", "show", "--config", str(config)], **run_env)
        assert shown.stdout == "capture is not installed\n"
        for iptables in ("iptables", "ip6tables"):
            assert "MESHDNS" not in ns.run([iptables, "-t", "nat", "-S"]).stdout
        assert "240.240." not in ns.run(["ip", "route", "show", "table", "local"]).stdout
        # Without capture the cluster DNS answers, and it knows no ServiceEntry.
        assert ns.run(["getent", "hosts", "address.internal"], check=False).returncode == 2
        assert ns.run(["getent", "hosts", "www.upstream.test"]).returncode == 0
        assert "VIP listener" in log.read_text()
