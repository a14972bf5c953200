"""
Tests for L{meshdns_plugin.ops.capture} and L{meshdns_plugin.ops.capturerules}:
the pure rule builders and the command line's errors, on fake tables (the real
thing, in a network namespace, is C{tests.integration.test_capture}).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

from meshdns_plugin.ops import capture
from meshdns_plugin.ops.capture import DEFAULT_PORT
from meshdns_plugin.ops.capturerules import (
    CHAIN,
    CaptureError,
    NatState,
    capture_rules,
    install_commands,
    parse_nat_state,
    remove_commands,
    route_commands,
    split_nameservers,
)


@pytest.fixture(autouse=True)
def record(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """
    The capture record, in the test's folder: the commands run in-process
    (after L{parse}) must never write the host's own.
    """
    path = tmp_path / "run" / "capture.json"
    monkeypatch.setattr(capture, "RECORD_PATH", str(path))
    return path


# -- pure builders ---------------------------------------------------------


def test_rules_exclude_proxy_owner_before_redirect() -> None:
    """
    meshdns's own uid and gid return before any REDIRECT, or its upstream
    queries would loop back to it.
    """
    rules = capture_rules(15053, 1337, 1338, ["10.0.0.2"])
    assert rules[0] == ["-A", CHAIN, "-m", "owner", "--uid-owner", "1337", "-j", "RETURN"]
    assert rules[1] == ["-A", CHAIN, "-m", "owner", "--gid-owner", "1338", "-j", "RETURN"]
    assert all("REDIRECT" in rule for rule in rules[2:])


def test_rules_dns_servers_redirect_udp_and_tcp_per_server() -> None:
    rules = capture_rules(25353, 1337, 1337, ["10.0.0.2", "10.0.0.3"])
    redirect = ["--dport", "53", "-j", "REDIRECT", "--to-ports", "25353"]
    assert rules[2:] == [
        ["-A", CHAIN, "-d", "10.0.0.2", "-p", "udp", *redirect],
        ["-A", CHAIN, "-d", "10.0.0.2", "-p", "tcp", *redirect],
        ["-A", CHAIN, "-d", "10.0.0.3", "-p", "udp", *redirect],
        ["-A", CHAIN, "-d", "10.0.0.3", "-p", "tcp", *redirect],
    ]


def test_rules_all_destinations_have_no_address_match() -> None:
    rules = capture_rules(15053, 1337, 1337, None)
    assert len(rules) == 4
    assert all("-d" not in rule for rule in rules)
    assert [rule[rule.index("-p") + 1] for rule in rules[2:]] == ["udp", "tcp"]


def test_split_nameservers_by_version() -> None:
    """IPv6 rules come only from IPv6 servers; zone ids and duplicates go."""
    servers = [("10.0.0.2", 53), ("fe80::1%eth0", 53), ("10.0.0.2", 53), ("::1", 53)]
    assert split_nameservers(servers) == {4: ["10.0.0.2"], 6: ["fe80::1", "::1"]}
    assert split_nameservers([("10.0.0.2", 53)]) == {4: ["10.0.0.2"], 6: []}


LISTING = """\
-P PREROUTING ACCEPT
-P OUTPUT ACCEPT
-N MESHDNS_OUTPUT
-N OTHER
-A OUTPUT -j MESHDNS_OUTPUT
-A OUTPUT -p tcp -m tcp --dport 9999 -j OTHER
-A OUTPUT -p udp -m comment --comment "by hand" -j MESHDNS_OUTPUT
-A MESHDNS_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A OTHER -j RETURN
"""


def test_parse_nat_state_finds_chain_and_every_jump() -> None:
    state = parse_nat_state(LISTING)
    assert state.chain_rules == (
        "-N MESHDNS_OUTPUT",
        "-A MESHDNS_OUTPUT -m owner --uid-owner 1337 -j RETURN",
    )
    assert state.jumps == (
        ("-j", CHAIN),
        ("-p", "udp", "-m", "comment", "--comment", "by hand", "-j", CHAIN),
    )
    assert state.installed
    assert not parse_nat_state("-P OUTPUT ACCEPT\n").installed


def test_install_on_clean_table_creates_chain_and_jump() -> None:
    rules = capture_rules(15053, 1337, 1337, None)
    commands = install_commands("iptables", rules, NatState())
    prefix = ["iptables", "-w", "-t", "nat"]
    assert commands == [
        [*prefix, "-N", CHAIN],
        [*prefix, "-F", CHAIN],
        *([*prefix, *rule] for rule in rules),
        [*prefix, "-I", "OUTPUT", "1", "-j", CHAIN],
    ]


def test_install_again_refills_chain_only() -> None:
    """Idempotence: no second chain creation, no second jump."""
    rules = capture_rules(15053, 1337, 1337, None)
    commands = install_commands("ip6tables", rules, parse_nat_state(LISTING))
    assert ["-N", CHAIN] not in [c[4:] for c in commands]
    assert not any("OUTPUT" in c for c in commands)
    assert commands[0] == ["ip6tables", "-w", "-t", "nat", "-F", CHAIN]


def test_install_nothing_to_capture_removes() -> None:
    """A version with no server left loses its old rules on a new install."""
    state = parse_nat_state(LISTING)
    assert install_commands("ip6tables", [], state) == remove_commands("ip6tables", state)


def test_remove_deletes_jumps_then_chain() -> None:
    prefix = ["iptables", "-w", "-t", "nat"]
    assert remove_commands("iptables", parse_nat_state(LISTING)) == [
        [*prefix, "-D", "OUTPUT", "-j", CHAIN],
        [
            *prefix,
            "-D",
            "OUTPUT",
            "-p",
            "udp",
            "-m",
            "comment",
            "--comment",
            "by hand",
            "-j",
            CHAIN,
        ],
        [*prefix, "-F", CHAIN],
        [*prefix, "-X", CHAIN],
    ]
    assert remove_commands("iptables", NatState()) == []


def test_route_commands() -> None:
    ranges = ["240.240.0.0/16", "2001:2::/48"]
    assert route_commands(ranges, (), install=True) == [
        ["ip", "route", "replace", "local", "240.240.0.0/16", "dev", "lo"],
        ["ip", "-6", "route", "replace", "local", "2001:2::/48", "dev", "lo"],
    ]
    assert route_commands(ranges, ["2001:2::/48"], install=False) == [
        ["ip", "-6", "route", "del", "local", "2001:2::/48", "dev", "lo", "table", "local"],
    ]
    assert route_commands(ranges, [], install=False) == []


def test_failed_command_is_one_line_with_command_and_stderr() -> None:
    argv = [sys.executable, "-c", "import sys; sys.stderr.write('boom\\nmore'); sys.exit(2)"]
    with pytest.raises(CaptureError) as caught:
        capture._run(argv)
    assert str(caught.value).endswith("failed: boom")
    assert sys.executable in str(caught.value)


# -- command line, without touching anything ---------------------------------


def parse(*argv: str) -> argparse.Namespace:
    """Parse C{argv} with a parser made as C{cli.py} makes it."""
    parser = argparse.ArgumentParser(prog="meshdns")
    capture.register(parser.add_subparsers(required=True))
    return parser.parse_args(argv)


def test_parser_defaults() -> None:
    args = parse("capture", "install")
    assert (args.capture_all, args.proxy_uid, args.proxy_gid) == (False, 1337, 1337)
    assert (args.port, args.resolv_conf, args.config, args.vip_routes) == (None, None, None, False)
    assert parse("capture", "install", "--all").capture_all
    with pytest.raises(SystemExit):
        parse("capture", "install", "--all", "--dns-servers")
    with pytest.raises(SystemExit):
        parse("capture", "install", "--port", "70000")


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """
    Make sure a CLI test run in the host's namespace can execute nothing:
    an empty PATH, and a runner that fails the test if reached.
    """
    monkeypatch.setenv("PATH", str(tmp_path))

    def refuse(argv: list[str]) -> str:
        pytest.fail(f"would have run {argv}")

    monkeypatch.setattr(capture, "_run", refuse)


@pytest.mark.usefixtures("isolated")
@pytest.mark.parametrize("action", ["install", "remove", "show"])
def test_not_root(
    action: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(capture.os, "geteuid", lambda: 1000)
    args = parse("capture", action)
    assert args.func(args) == 1
    assert capsys.readouterr().err == (
        "meshdns capture: error: must run as root (iptables needs CAP_NET_ADMIN)\n"
    )


@pytest.mark.usefixtures("isolated")
def test_iptables_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(capture.os, "geteuid", lambda: 0)
    args = parse("capture", "install", "--all")
    assert args.func(args) == 1
    assert capsys.readouterr().err == (
        "meshdns capture: error: iptables not found; install the iptables package\n"
    )


@pytest.mark.usefixtures("isolated")
def test_no_nameserver(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(capture.os, "geteuid", lambda: 0)
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text("search example.com\n")
    args = parse("capture", "install", "--resolv-conf", str(resolv_conf))
    assert args.func(args) == 1
    assert capsys.readouterr().err == (
        f"meshdns capture: error: no nameserver in {resolv_conf}; fix it or use --all\n"
    )


@pytest.fixture
def fake_tables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[list[str]]:
    """
    Root, and empty nat tables of both versions that nothing really touches:
    the commands capture would run are recorded in the list returned.
    """
    monkeypatch.setattr(capture.os, "geteuid", lambda: 0)
    monkeypatch.setenv("PATH", str(tmp_path))
    ran: list[list[str]] = []
    monkeypatch.setattr(capture, "_run", ran.append)
    tables = {4: "iptables", 6: "ip6tables"}
    monkeypatch.setattr(capture, "_find_iptables", lambda version: (tables[version], NatState()))
    return ran


def test_ipv6_unusable_is_a_warning(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    fake_tables: list[list[str]],
) -> None:
    """A kernel without IPv6 nat must not stop IPv4 capture; the user is told."""
    ran = fake_tables

    def find(version: int) -> tuple[str, NatState]:
        if version == 6:
            raise CaptureError("ip6tables -w -t nat -S failed: no nat table")
        return "iptables", NatState()

    monkeypatch.setattr(capture, "_find_iptables", find)
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text("nameserver 127.0.0.53\nnameserver ::1\n")
    args = parse("capture", "install", "--resolv-conf", str(resolv_conf))
    assert args.func(args) == 0
    assert capsys.readouterr().err == (
        "meshdns capture: warning: IPv6 DNS is not captured: "
        "ip6tables -w -t nat -S failed: no nat table\n"
    )
    assert {command[0] for command in ran} == {"iptables"}
    assert ran[-1][-2:] == ["-j", CHAIN]


def test_install_records_the_rules_and_remove_deletes_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake_tables: list[list[str]], record: Path
) -> None:
    """
    The record holds each IP version's chain rules as C{install} ran them,
    readable by meshdns after it dropped root; C{remove} deletes it.
    """
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text("nameserver 127.0.0.53\n")
    args = parse("capture", "install", "--resolv-conf", str(resolv_conf), "--proxy-uid", "7")
    assert args.func(args) == 0
    rules = capture_rules(DEFAULT_PORT, 7, 1337, ["127.0.0.53"])
    assert json.loads(record.read_text()) == {
        "rules": {"4": [" ".join(rule) for rule in rules]}
    }
    assert record.stat().st_mode & 0o777 == 0o644
    assert capture.read_record(str(record)) == {4: tuple(" ".join(rule) for rule in rules)}
    monkeypatch.setattr(capture, "_present_routes", lambda ranges: [])
    args = parse("capture", "remove")
    assert args.func(args) == 0
    assert not record.exists()
    assert args.func(args) == 0


def test_unwritable_record_names_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fake_tables: list[list[str]]
) -> None:
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text("nameserver 127.0.0.53\n")
    args = parse("capture", "install", "--resolv-conf", str(resolv_conf), "--record", str(tmp_path))
    assert args.func(args) == 1
    assert capsys.readouterr().err == (
        f"meshdns capture: error: cannot record the rules in {tmp_path}: "
        "Is a directory; give --record PATH\n"
    )
    assert not Path(f"{tmp_path}.tmp").exists()


@pytest.mark.parametrize(
    "text", ["", "[]", '{"rules": {"5": []}}', '{"rules": {"4": [1]}}', '{"rules": []}']
)
def test_a_record_not_written_by_install_is_refused(record: Path, text: str) -> None:
    record.parent.mkdir()
    record.write_text(text)
    with pytest.raises(CaptureError) as caught:
        capture.read_record(str(record))
    assert str(caught.value) == f"{record} is not a record of meshdns capture install"


def test_no_record_means_no_rules(record: Path) -> None:
    assert capture.read_record(str(record)) == {}


def test_installed_rules_without_root_come_from_the_record(
    monkeypatch: pytest.MonkeyPatch, record: Path
) -> None:
    """Listing the tables needs root: any other user reads the record, and runs nothing."""
    monkeypatch.setattr(capture.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(capture, "_run", lambda argv: pytest.fail(f"would have run {argv}"))
    capture.write_record(str(record), {4: [["-A", CHAIN, "-j", "RETURN"]]})
    assert capture.installed_rules(str(record)) == {4: (f"-A {CHAIN} -j RETURN",)}


def test_installed_rules_as_root_come_from_the_tables(
    monkeypatch: pytest.MonkeyPatch, record: Path
) -> None:
    """
    Root lists the tables and ignores the record; a chain that OUTPUT does
    not jump to captures nothing, nor does a version that cannot be listed.
    """
    monkeypatch.setattr(capture.os, "geteuid", lambda: 0)
    capture.write_record(str(record), {4: [["-A", CHAIN, "-j", "RETURN"]]})
    states = {
        4: ("iptables", parse_nat_state(LISTING)),
        6: ("ip6tables", NatState(chain_rules=(f"-N {CHAIN}",))),
    }
    monkeypatch.setattr(capture, "_find_iptables", lambda version: states[version])
    assert capture.installed_rules(str(record)) == {4: parse_nat_state(LISTING).chain_rules}

    def unlistable(version: int) -> tuple[str, NatState]:
        raise CaptureError("iptables -w -t nat -S failed: no nat table")

    monkeypatch.setattr(capture, "_find_iptables", unlistable)
    assert capture.installed_rules(str(record)) == {}


@pytest.mark.parametrize(
    ("addresses", "version", "covered"),
    [
        (["127.0.0.1"], 4, True),
        (["127.0.0.1"], 6, False),
        (["127.0.0.1", "::1"], 6, True),
        (["::1"], 4, False),
        (["127.0.0.2"], 4, False),
        (["0.0.0.0"], 4, True),
        (["0.0.0.0"], 6, False),
        (["0.0.0.0", "::1"], 6, True),
        (["::"], 4, True),
        (["::"], 6, True),
    ],
)
def test_listens_for_redirect(addresses: list[str], version: int, covered: bool) -> None:
    """REDIRECT sends this host's packets to 127.0.0.1 or ::1: who listens there?"""
    assert capture.listens_for_redirect(addresses, version) is covered


V4_AND_V6 = "nameserver 127.0.0.53\nnameserver ::1\n"


@pytest.mark.parametrize(
    ("listen", "nameservers", "options", "missing"),
    [
        ("127.0.0.1", V4_AND_V6, [], [6]),
        ("127.0.0.1", V4_AND_V6, ["--all"], [6]),
        ("127.0.0.1", "nameserver 127.0.0.53\n", [], []),
        ("[127.0.0.1, '::1']", V4_AND_V6, [], []),
        ("['::1']", V4_AND_V6, [], [4]),
        ("['::1']", "nameserver ::1\n", [], []),
        ("'::'", V4_AND_V6, ["--all"], []),
    ],
)
def test_warns_when_the_config_does_not_listen_where_capture_sends(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    fake_tables: list[list[str]],
    listen: str,
    nameservers: str,
    options: list[str],
    missing: list[int],
) -> None:
    """
    One warning line per IP version whose captured DNS reaches an address
    the config does not listen on; capture is installed all the same.
    """
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text(nameservers)
    config = tmp_path / "meshdns.yaml"
    config.write_text(f"listen: {{address: {listen}, port: 5300, allow: [10.0.0.0/8]}}\n")
    args = parse(
        "capture", "install", "--config", str(config), "--resolv-conf", str(resolv_conf), *options
    )
    assert args.func(args) == 0
    target = {4: "127.0.0.1", 6: "::1"}
    assert capsys.readouterr().err == "".join(
        f"meshdns capture: warning: captured IPv{version} DNS goes to {target[version]} "
        f"port 5300, but listen.address in {config} does not include {target[version]}\n"
        for version in missing
    )
    assert any(CHAIN in command for command in fake_tables)


def test_no_listen_warning_without_a_config(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, fake_tables: list[list[str]]
) -> None:
    """Without --config capture does not know where meshdns listens: nothing to say."""
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text(V4_AND_V6)
    args = parse("capture", "install", "--resolv-conf", str(resolv_conf))
    assert args.func(args) == 0
    assert capsys.readouterr().err == ""
    assert {command[0] for command in fake_tables} == {"iptables", "ip6tables"}


# -- the real thing, inside a network namespace ------------------------------




























