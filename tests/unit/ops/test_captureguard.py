"""
Tests for L{meshdns_plugin.ops.captureguard}: the pure decision, and the real
C{meshdns capture install} and C{twistd -n meshdns} in a network namespace
made for each test, where the namespace's own 127.0.0.53:53 plays the
nameserver that capture redirects and meshdns forwards to.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshdns_plugin.ops import captureguard
from meshdns_plugin.ops.captureguard import (
    Capture,
    CaptureGuard,
    CaptureLoopError,
    Exclusion,
    Redirect,
    capture_loop,
    parse_capture,
)
from meshdns_plugin.ops.capturerules import CHAIN, CaptureError
from tests.support.netns import Netns, network_namespace, skip_unless_netns_possible
from tests.support.pods import (
    MESHDNS,
    PROXY_ID,
    proxy_directory,
    proxy_user,
    started,
    uid_of,
    wait_for_meshdns,
)
from tests.support.processes import FAKE_UPSTREAM, REPO_ROOT, TWISTD, child_env

#: What C{iptables -t nat -S MESHDNS_OUTPUT} prints after a default install.
LISTED = [
    f"-N {CHAIN}",
    f"-A {CHAIN} -m owner --uid-owner 1337 -j RETURN",
    f"-A {CHAIN} -m owner --gid-owner 1337 -j RETURN",
    f"-A {CHAIN} -d 127.0.0.53/32 -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053",
    f"-A {CHAIN} -d 127.0.0.53/32 -p tcp -m tcp --dport 53 -j REDIRECT --to-ports 15053",
]
DEFAULT = Capture(
    (Exclusion(range(1337, 1338), None), Exclusion(None, range(1337, 1338))),
    (Redirect(ipaddress.ip_network("127.0.0.53/32"), 15053),) * 2,
)
NAMESERVER = ("127.0.0.53", 53)
REFUSAL = (
    "DNS capture is installed and excludes uid 1337 and gid 1337, but meshdns runs as "
    "uid {uid} gid {gid}: its upstream queries to 127.0.0.53 port 53 would be redirected to "
    "port 15053, back to meshdns; run it with twistd --uid 1337 --gid 1337, or exclude "
    "uid {uid} with meshdns capture install --proxy-uid {uid}"
)


# -- reading the rules -------------------------------------------------------


def test_parse_what_iptables_lists() -> None:
    assert parse_capture(LISTED) == DEFAULT


def test_parse_what_the_record_holds() -> None:
    """The record has the rules as install ran them: no prefix length, no C{-m udp}."""
    recorded = [
        f"-A {CHAIN} -m owner --uid-owner 1337 -j RETURN",
        f"-A {CHAIN} -m owner --gid-owner 1337 -j RETURN",
        f"-A {CHAIN} -d 127.0.0.53 -p udp --dport 53 -j REDIRECT --to-ports 15053",
        f"-A {CHAIN} -d 127.0.0.53 -p tcp --dport 53 -j REDIRECT --to-ports 15053",
    ]
    assert parse_capture(recorded) == DEFAULT


def test_parse_leaves_out_what_capture_does_not_write() -> None:
    """Negations, other ports and targets, unreadable values: none can loop meshdns."""
    capture = parse_capture([
        f"-A {CHAIN} -m owner ! --uid-owner 1000 -j RETURN",
        f"-A {CHAIN} -d 10.0.0.0/8 -j RETURN",
        f"-A {CHAIN} -m owner --uid-owner lots -j RETURN",
        f"-A {CHAIN} -p udp -m udp --dport 5353 -j REDIRECT --to-ports 15053",
        f"-A {CHAIN} -p udp -m udp --dport 53 -j DNAT --to-destination 10.0.0.1",
        f'-A {CHAIN} -m comment --comment "unbalanced',
        f"-A {CHAIN} -m owner --uid-owner 1000-1999 --gid-owner 5 -j RETURN",
        f"-A {CHAIN} -p tcp -m tcp --dport 53 -j REDIRECT --to-ports 16053-16060",
    ])
    assert capture == Capture(
        (Exclusion(range(1000, 2000), range(5, 6)),), (Redirect(None, 16053),)
    )


# -- the decision --------------------------------------------------------------


@pytest.mark.parametrize(
    ("uid", "gid", "servers", "captures"),
    [
        (1337, 1337, [NAMESERVER], {4: DEFAULT}),
        (1337, 0, [NAMESERVER], {4: DEFAULT}),
        (0, 1337, [NAMESERVER], {4: DEFAULT}),
        (0, 0, [("127.0.0.53", 5353)], {4: DEFAULT}),
        (0, 0, [("127.0.0.54", 53)], {4: DEFAULT}),
        (0, 0, [("::1", 53)], {4: DEFAULT}),
        (0, 0, [NAMESERVER], {6: Capture((), (Redirect(None, 15053),))}),
        (0, 0, [NAMESERVER], {}),
        (0, 0, [], {4: DEFAULT}),
    ],
    ids=[
        "excluded", "excluded-uid", "excluded-gid", "other-port", "other-address", "other-version",
        "other-version-captured", "no-capture", "no-upstream",
    ],
)
def test_no_loop(
    uid: int, gid: int, servers: list[tuple[str, int]], captures: dict[int, Capture]
) -> None:
    assert capture_loop(captures, uid, gid, servers, 15053) is None


def test_root_loops() -> None:
    assert capture_loop({4: DEFAULT}, 0, 0, [NAMESERVER], 15053) == REFUSAL.format(uid=0, gid=0)


def test_every_destination_captures_every_server_of_its_version() -> None:
    everywhere = Capture(DEFAULT.exclusions, (Redirect(None, 15053),))
    servers = [("127.0.0.9", 53), ("fe80::1%eth0", 5353), ("fe80::1%eth0", 53), ("::1", 53)]
    line = capture_loop({6: everywhere}, 1000, 1000, servers, 15053)
    assert line is not None and "its upstream queries to fe80::1%eth0 port 53" in line


def test_redirect_to_another_port_is_no_loop_but_no_upstream_either() -> None:
    line = capture_loop({4: DEFAULT}, 0, 0, [NAMESERVER], 5300)
    assert line is not None
    assert "redirected to port 15053, away from the upstream; run it with" in line


def test_the_fix_names_only_what_is_excluded() -> None:
    uid_only = Capture((Exclusion(range(7, 8), None),), DEFAULT.redirects)
    line = capture_loop({4: uid_only}, 0, 0, [NAMESERVER], 15053)
    assert line is not None and line.startswith("DNS capture is installed and excludes uid 7, ")
    assert line.endswith("; run it with twistd --uid 7, or exclude uid 0 with "
                         "meshdns capture install --proxy-uid 0")
    nothing = Capture((), DEFAULT.redirects)
    line = capture_loop({4: nothing}, 0, 0, [NAMESERVER], 15053)
    assert line is not None and "excludes no uid or gid, but" in line
    assert line.endswith(
        "back to meshdns; exclude uid 0 with meshdns capture install --proxy-uid 0"
    )


# -- the service ---------------------------------------------------------------


def test_guard_reads_nothing_without_a_server_on_port_53(monkeypatch: pytest.MonkeyPatch) -> None:
    """Most upstreams are on port 53; one that is not cannot be captured, so nothing is run."""
    monkeypatch.setattr(captureguard, "installed_rules", lambda record: pytest.fail("read"))
    guard = CaptureGuard([("127.0.0.1", 5353)], 15053, "/nonexistent")
    guard.privilegedStartService()
    guard.startService()


def test_guard_decides_as_the_user_it_runs_as(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read while privileged, decided after twistd's --uid/--gid (here: never dropped)."""
    reads = []

    def rules(record: str) -> dict[int, list[str]]:
        reads.append(record)
        return {4: LISTED}

    monkeypatch.setattr(captureguard, "installed_rules", rules)
    monkeypatch.setattr(captureguard.os, "geteuid", lambda: 1337)
    monkeypatch.setattr(captureguard.os, "getegid", lambda: 1337)
    guard = CaptureGuard([NAMESERVER], 15053, "record.json")
    guard.privilegedStartService()
    guard.startService()
    monkeypatch.setattr(captureguard.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(captureguard.os, "getegid", lambda: 1000)
    guard = CaptureGuard([NAMESERVER], 15053, "record.json")
    with pytest.raises(CaptureLoopError) as caught:
        guard.startService()
    assert str(caught.value) == REFUSAL.format(uid=1000, gid=1000)
    assert reads == ["record.json", "record.json"]


def test_an_unreadable_record_is_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreadable(record: str) -> dict[int, list[str]]:
        raise CaptureError(f"cannot read {record}: Permission denied")

    monkeypatch.setattr(captureguard, "installed_rules", unreadable)
    warnings = []
    monkeypatch.setattr(captureguard._log, "warn", lambda text, **kw: warnings.append(kw["e"]))
    CaptureGuard([NAMESERVER], 15053, "record.json").startService()
    assert warnings == ["cannot read record.json: Permission denied"]


# -- the real thing, inside a network namespace ------------------------------

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
            env=child_env(), cwd=REPO_ROOT,
        )
        assert result.stderr == ""

    def twistd(self, *argv: str, before: tuple[str, ...] = ()) -> list[str]:
        """C{twistd -n [ARGV] meshdns} with this pod's config and record."""
        return [*before, *TWISTD, *argv, "meshdns", "--config", str(self.config),
                "--capture-record", str(self.record)]

    def refused(self, argv: list[str]) -> str:
        """Run C{argv} to its end; it must fail with one line, which is returned."""
        result = self.ns.run(argv, check=False, env=child_env(), cwd=REPO_ROOT)
        assert result.returncode == 1, result
        assert "Traceback" not in result.stdout + result.stderr
        assert "serving on" not in result.stdout
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result
        return lines[0]


@pytest.fixture
def pod() -> Iterator[Pod]:
    skip_unless_netns_possible()
    if shutil.which("iptables") is None:
        pytest.skip("iptables is not installed (apt-get install iptables)")
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
        env=child_env(), cwd=REPO_ROOT,
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
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
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
        env=child_env(), cwd=REPO_ROOT,
    )
    wait_for_meshdns(meshdns, log)
    assert uid_of(meshdns.pid) == 1338


def test_no_capture_no_check(pod: Pod) -> None:
    """Without capture, root forwards to port 53 as before, and nothing is said."""
    log = pod.home / "meshdns.log"
    meshdns = pod.ns.popen(pod.twistd("--logfile", str(log)), env=child_env(), cwd=REPO_ROOT)
    wait_for_meshdns(meshdns, log)
    asked = pod.ns.run([sys.executable, "-c", ASK, "127.0.0.1", str(DNS_PORT), "www.upstream.test"])
    assert asked.stdout == "NOERROR 127.0.0.10\n"
    assert "DNS capture" not in log.read_text()


def test_the_readme_shows_the_refusal_as_it_is() -> None:
    assert "meshdns: " + REFUSAL.format(uid=0, gid=0) in (REPO_ROOT / "README.md").read_text()


#: Asks as ASK does, from the source address given first (a pod's own IP).
ASK_FROM = """
import sys, dns.message, dns.query, dns.rcode
source, address, port, name = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
query = dns.message.make_query(name, "A")
reply = dns.query.udp(query, address, port=port, timeout=5, source=source)
print(dns.rcode.to_text(reply.rcode()), *(r.address for rrset in reply.answer for r in rrset))
"""


def test_a_captured_query_from_the_pods_own_address_is_answered(pod: Pod) -> None:
    """
    A pod's query to its cluster DNS address keeps the pod's IP as source
    when capture redirects it to meshdns on loopback: meshdns must answer it
    with the default C{listen.allow} (loopback only), since nothing from
    outside the host can reach a loopback listener.
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
        env=child_env(), cwd=REPO_ROOT,
    )
    wait_for_meshdns(meshdns, log)
    asked = pod.ns.run(
        [sys.executable, "-c", ASK_FROM, pod_ip, cluster_dns, "53", "www.upstream.test"]
    )
    assert asked.stdout == "NOERROR 127.0.0.10\n"
