"""
The capture guard for real, in a pod's network namespace: root is refused when capture
would loop its queries back, the proxy uid serves, and without root the record decides.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.netns import Netns, network_namespace, require_netns
from tests.support.pods import (
    MESHDNS,
    NAMESERVER,
    PROXY_ID,
    REFUSAL,
    proxy_directory,
    proxy_user,
    started,
    uid_of,
    wait_for_meshdns,
)
from tests.support.processes import FAKE_UPSTREAM, TWISTD, child_env
from tests.support.required import require_command

#: Runs the rest of its command line as uid and gid 1338, which no rule
#: excludes (and which needs no passwd entry), from the start: no root to
#: list the tables. It keeps CAP_DAC_READ_SEARCH, to read (only) the
#: interpreter and the packages wherever they are (a pyenv under a 0700
#: /root, say).
AS_1338 = (
    "setpriv", "--reuid", "1338", "--regid", "1338", "--clear-groups",
    "--inh-caps", "+dac_read_search", "--ambient-caps", "+dac_read_search",
)


#: Asks ADDRESS port PORT for NAME over UDP, as root (captured, if PORT is 53);
#: prints the rcode and the addresses.
ASK = """
import sys, dns.message, dns.query, dns.rcode
address, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
reply = dns.query.udp(dns.message.make_query(name, "A"), address, port=port, timeout=5)
print(dns.rcode.to_text(reply.rcode()), *(r.address for rrset in reply.answer for r in rrset))
"""


DNS_PORT = 15053


@dataclass
class Pod:
    """
    A namespace with a nameserver on 127.0.0.53:53 and a meshdns config that
    forwards to it, in a folder uid 1337 (and anyone) can read.
    """

    ns: Netns
    home: Path

    @property
    def config(self) -> Path:
        return self.home / "meshdns.yaml"

    @property
    def record(self) -> Path:
        return self.home / "capture.json"

    def capture(self, action: str, *argv: str) -> None:
        """C{meshdns capture ACTION}, with this pod's record; it must succeed quietly."""
        result = self.ns.run(
            [*MESHDNS, "capture", action, "--record", str(self.record), *argv],
            env=child_env(), cwd=self.home,
        )
        assert result.stderr == ""

    def twistd(self, *argv: str, before: tuple[str, ...] = ()) -> list[str]:
        """C{twistd -n [ARGV] meshdns} with this pod's config and record."""
        return [*before, *TWISTD, *argv, "meshdns", "--config", str(self.config),
                "--capture-record", str(self.record)]

    def refused(self, argv: list[str]) -> str:
        """Run C{argv} to its end; it must fail with one line, which is returned."""
        result = self.ns.run(argv, check=False, env=child_env(), cwd=self.home)
        assert result.returncode == 1, result
        assert "Traceback" not in result.stdout + result.stderr
        assert "serving on" not in result.stdout
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result
        return lines[0]


@pytest.fixture
def pod() -> Iterator[Pod]:
    require_netns()
    require_command("iptables", "iptables")
    with proxy_user(), network_namespace() as ns, proxy_directory() as home:
        upstream = ns.popen([sys.executable, str(FAKE_UPSTREAM), "--address", NAMESERVER[0],
                             "--port", "53"], env=child_env())
        started(upstream, "READY ")
        (home / "resolv.conf").write_text(f"nameserver {NAMESERVER[0]}\n")
        (home / "empty-resolv.conf").write_text("# no search list\n")
        (home / "meshdns.yaml").write_text(
            f"listen: {{address: 127.0.0.1, port: {DNS_PORT}}}\n"
            f"upstream: {{servers: ['{NAMESERVER[0]}:53'], "
            f"resolv_conf: {home / 'empty-resolv.conf'}}}\n"
            "admin: {port: 0}\n"
            "entries: []\n"
        )
        yield Pod(ns, home)


def test_root_is_refused_and_the_proxy_uid_serves(pod: Pod) -> None:
    """
    As root (the README's first command) meshdns's queries to 127.0.0.53
    would come back to it: it refuses in one line. As twistd --uid/--gid
    1337 it starts, and a captured client's forwarded name is answered.
    """
    pod.capture("install", "--resolv-conf", str(pod.home / "resolv.conf"))
    line = pod.refused(pod.twistd())
    assert line == "meshdns: " + REFUSAL.format(uid=0, gid=0)

    log = pod.home / "meshdns.log"
    meshdns = pod.ns.popen(
        pod.twistd("--uid", str(PROXY_ID), "--gid", str(PROXY_ID), "--logfile", str(log)),
        env=child_env(), cwd=pod.home,
    )
    wait_for_meshdns(meshdns, log)
    assert uid_of(meshdns.pid) == PROXY_ID
    asked = pod.ns.run([sys.executable, "-c", ASK, NAMESERVER[0], "53", "www.upstream.test"])
    assert asked.stdout == "NOERROR 127.0.0.10\n"
    assert "DNS capture" not in log.read_text()


def test_without_root_the_record_decides(pod: Pod) -> None:
    """
    A meshdns started as uid 1338 cannot list the tables: it reads the
    record, and refuses; once capture is removed (and the record with it),
    it starts.
    """
    require_command("setpriv", "util-linux")
    pod.capture("install", "--resolv-conf", str(pod.home / "resolv.conf"))
    line = pod.refused(pod.twistd(before=AS_1338))
    assert line == "meshdns: " + REFUSAL.format(uid=1338, gid=1338)

    pod.capture("remove")
    logs = pod.home / "logs-1338"
    logs.mkdir()
    os.chown(logs, 1338, 1338)
    log = logs / "meshdns.log"
    meshdns = pod.ns.popen(
        pod.twistd("--logfile", str(log), before=AS_1338),
        env=child_env(), cwd=pod.home,
    )
    wait_for_meshdns(meshdns, log)
    assert uid_of(meshdns.pid) == 1338


def test_no_capture_no_check(pod: Pod) -> None:
    """Without capture, root forwards to port 53 as before, and nothing is said."""
    log = pod.home / "meshdns.log"
    meshdns = pod.ns.popen(pod.twistd("--logfile", str(log)), env=child_env(), cwd=pod.home)
    wait_for_meshdns(meshdns, log)
    asked = pod.ns.run([sys.executable, "-c", ASK, "127.0.0.1", str(DNS_PORT), "www.upstream.test"])
    assert asked.stdout == "NOERROR 127.0.0.10\n"
    assert "DNS capture" not in log.read_text()


#: Asks as ASK does, over the protocol given first (udp or tcp), from the
#: source address given next (a pod's own IP).
ASK_FROM = """
import sys, dns.message, dns.query, dns.rcode
protocol, source, address, name = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[5]
ask = dns.query.udp if protocol == "udp" else dns.query.tcp
query = dns.message.make_query(name, "A")
reply = ask(query, address, port=int(sys.argv[4]), timeout=5, source=source)
print(dns.rcode.to_text(reply.rcode()), *(r.address for rrset in reply.answer for r in rrset))
"""


@pytest.mark.parametrize("protocol", ["udp", "tcp"])
def test_a_captured_query_from_the_pods_own_address_is_answered(pod: Pod, protocol: str) -> None:
    """
    A pod's query to its cluster DNS address keeps the pod's IP as source
    when capture redirects it to meshdns on loopback: meshdns must answer it
    with the default C{listen.allow} (loopback only), since nothing from
    outside the host can reach a loopback listener. Over TCP too, where the
    listener decides per connection.
    """
    pod_ip, cluster_dns = "192.0.2.2", "192.0.2.53"
    pod.ns.run(["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"])
    pod.ns.run(["ip", "addr", "add", f"{pod_ip}/24", "dev", "eth0"])
    for device in ("eth0", "eth1"):
        pod.ns.run(["ip", "link", "set", device, "up"])
    (pod.home / "pod-resolv.conf").write_text(f"nameserver {cluster_dns}\n")
    pod.capture("install", "--resolv-conf", str(pod.home / "pod-resolv.conf"))
    log = pod.home / "meshdns.log"
    meshdns = pod.ns.popen(
        pod.twistd("--uid", str(PROXY_ID), "--gid", str(PROXY_ID), "--logfile", str(log)),
        env=child_env(), cwd=pod.home,
    )
    wait_for_meshdns(meshdns, log)
    asked = pod.ns.run(
        [sys.executable, "-c", ASK_FROM, protocol, pod_ip, cluster_dns, "53", "www.upstream.test"]
    )
    assert asked.stdout == "NOERROR 127.0.0.10\n"
