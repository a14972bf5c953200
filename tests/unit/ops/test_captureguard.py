"""
Tests for L{meshdns_plugin.ops.captureguard}: the pure decision (the real
C{meshdns capture install} and C{twistd -n meshdns} in a network namespace are
C{tests.integration.test_captureguard}).
"""

from __future__ import annotations

import ipaddress

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
from tests.support.paths import REPO_ROOT
from tests.support.pods import NAMESERVER, REFUSAL

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













def test_the_readme_shows_the_refusal_as_it_is() -> None:
    assert "meshdns: " + REFUSAL.format(uid=0, gid=0) in (REPO_ROOT / "README.md").read_text()




