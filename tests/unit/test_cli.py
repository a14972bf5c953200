"""
Tests for L{meshdns_plugin.cli}: the C{meshdns} command, run in process
(C{main(argv)}), on files only (against a running meshdns, and as the
installed console script: C{tests.integration.test_cli}).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from twisted.logger import capturedLogs

from meshdns_plugin.cli import _default_server, build_parser, main
from meshdns_plugin.config import load_config
from meshdns_plugin.mesh.loader import TableLoader
from meshdns_plugin.mesh.table import table_document
from meshdns_plugin.sources.files import load_entries
from tests.support.cli import run
from tests.support.paths import REPO_ROOT
from tests.support.samples import BROKEN, entry, external_name, guide_config

REPO = REPO_ROOT
SHIPPED = REPO / "conf" / "meshdns.yaml"




def write_config(tmp_path: Path, entries: dict[str, str], **sections: object) -> str:
    for name, text in entries.items():
        (tmp_path / name).write_text(text)
    config = {"entries": list(entries), "mesh": {"search": []}, **sections}
    path = tmp_path / "meshdns.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


# --- check ----------------------------------------------------------------------


def test_check_ok_is_one_line(capsys, tmp_path: Path) -> None:
    config = write_config(tmp_path, {"a.yaml": entry("a.example", "192.0.2.1")})
    code, out, err = run(capsys, "check", "--config", config)
    assert code == 0
    assert out.splitlines() == [f"OK {config}: 1 entries, 1 names, 0 VIP hosts"]


def test_check_the_shipped_config(capsys) -> None:
    code, out, _ = run(capsys, "check")
    assert code == 0
    assert out.startswith(f"OK {SHIPPED}: 4 entries")


def test_check_reports_what_a_reload_would_log(capsys, tmp_path: Path) -> None:
    bad = entry("c.example", "192.0.2.300", name="c")
    config = write_config(tmp_path, {"a.yaml": entry("a.example", "192.0.2.1"), "b.yaml": BROKEN})
    code, _, err = run(capsys, "check", "-c", config)
    assert code == 1
    (tmp_path / "b.yaml").write_text(BROKEN + "---\n" + bad)
    code, out, err = run(capsys, "check", "-c", config)
    assert code == 1
    lines = err.splitlines()
    assert len(lines) == 2
    assert out.startswith("FAILED ") and "2 invalid document(s)" in out
    # The very messages the server logs when it leaves the same documents out.
    loader = TableLoader(load_config(config), load_entries)
    with capturedLogs() as events:
        loader.load()
    logged = [f"meshdns: invalid: {event['problem']}" for event in events if "problem" in event]
    assert lines == logged
    assert "b.yaml: document 0: spec.addresses[0]" in lines[0]
    assert "b.yaml: document 1: spec.addresses[0]" in lines[1]


def test_check_warns_of_collisions_naming_both_entries(capsys, tmp_path: Path) -> None:
    both = entry("one.example", "192.0.2.77", name="one") + "---\n"
    both += entry("two.example", "192.0.2.77", name="two")
    config = write_config(tmp_path, {"a.yaml": both})
    code, out, err = run(capsys, "check", "-c", config)
    assert code == 0
    assert out.startswith("OK ") and "1 collision warning(s)" in out
    (line,) = [line for line in err.splitlines() if "collision" in line]
    assert "192.0.2.77" in line
    assert "one.example (ServiceEntry default/one)" in line
    assert "two.example (ServiceEntry default/two)" in line
    # The server logs the same warning when it loads them.
    with capturedLogs() as events:
        TableLoader(load_config(config), load_entries).load()
    assert [str(e["collision"]) for e in events if "collision" in e] == [line.split(": ", 2)[2]]


def test_check_fails_for_a_missing_entries_path(capsys, tmp_path: Path) -> None:
    (tmp_path / "meshdns.yaml").write_text("entries: [entires/]\n")
    code, out, err = run(capsys, "check", "-c", str(tmp_path / "meshdns.yaml"))
    assert code == 1
    assert "missing: " in err and "entires" in err
    assert out.startswith("FAILED ")


def test_check_bad_config_is_one_line(capsys, tmp_path: Path) -> None:
    path = tmp_path / "meshdns.yaml"
    path.write_text("reload: {poll_interval: -1}\n")
    code, out, err = run(capsys, "check", "--config", str(path))
    assert (code, out) == (1, "")
    problem = "reload.poll_interval: -1 is out of range (0, 3600]"
    assert err.splitlines() == [f"meshdns: {path}: {problem}"]


def test_check_missing_config(capsys, tmp_path: Path) -> None:
    code, _, err = run(capsys, "check", "--config", str(tmp_path / "nope.yaml"))
    assert code == 1
    assert err.count("\n") == 1 and "nope.yaml" in err


# --- table and listeners ------------------------------------------------------------


def test_table_text_is_aligned(capsys, tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        {"a.yaml": entry("a.example", "192.0.2.1") + "---\n" + entry("auto.internal", name="x")},
    )
    code, out, _ = run(capsys, "table", "--config", config)
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["NAME", "TYPE", "ADDRESSES", "SOURCE"]
    assert rows[0].split() == ["a.example", "A", "192.0.2.1", "ServiceEntry", "default/se"]
    assert [row.split()[:2] for row in rows[1:]] == [
        ["auto.internal", "A"],
        ["auto.internal", "AAAA"],
    ]
    assert all("(VIP)" in row for row in rows[1:])
    assert len({row.index("ServiceEntry") for row in rows}) == 1


def test_table_lists_aliases_with_their_target(capsys, tmp_path: Path) -> None:
    external = external_name("mydb", "ns1", "db.example.com")
    config = write_config(tmp_path, {"a.yaml": entry("a.example", "192.0.2.1") + external})
    code, out, _ = run(capsys, "table", "--config", config)
    assert code == 0
    header, *rows = out.splitlines()
    assert [row.split() for row in rows] == [
        ["a.example", "A", "192.0.2.1", "ServiceEntry", "default/se"],
        ["mydb.ns1", "CNAME", "db.example.com", "Service", "ns1/mydb"],
        ["mydb.ns1.svc", "CNAME", "db.example.com", "Service", "ns1/mydb"],
        ["mydb.ns1.svc.cluster.local", "CNAME", "db.example.com", "Service", "ns1/mydb"],
    ]
    assert len({row.index("db.example.com") for row in rows[1:]} | {header.index("ADDRESSES")}) == 1
    code, out, _ = run(capsys, "check", "--config", config)
    assert out.split(":", 1)[1].strip() == "2 entries, 4 names, 0 VIP hosts"


def test_table_json_is_the_debug_table(capsys, tmp_path: Path) -> None:
    config = write_config(tmp_path, {"a.yaml": entry("a.example", "192.0.2.1")})
    code, out, _ = run(capsys, "table", "--json", "--config", config)
    assert code == 0
    expected = table_document(TableLoader(load_config(config), load_entries).prepare().table)
    assert json.loads(out) == expected




def test_listeners_as_the_istio_guide_shows_them(capsys, tmp_path: Path) -> None:
    code, out, _ = run(capsys, "listeners", "-c", guide_config(tmp_path))
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["ADDRESSES", "PORT", "MATCH", "DESTINATION"]
    tcp_echo = [row.split() for row in rows if "tcp-echo" in row and "240.240." in row]
    assert len(tcp_echo) == 2
    for cells, host in zip(tcp_echo, ("external-1", "external-2"), strict=True):
        assert re.fullmatch(r"240\.240\.\d+\.\d+", cells[0])
        assert cells[1:] == [
            "9000",
            "ALL",
            "Cluster:",
            f"outbound|9000||tcp-echo.{host}.svc.cluster.local",
        ]
    # address.internal has resolution NONE: its traffic goes to the address
    # itself, and the server opens no listener for it, so none is listed.
    assert "address.internal" not in out


def test_listeners_lists_only_what_the_server_opens(capsys, tmp_path: Path) -> None:
    text = entry("plain.example", name="p").replace("resolution: DNS", "resolution: NONE")
    text = text.replace("spec:\n", "spec:\n  ports: [{number: 443, name: tls, protocol: TLS}]\n")
    config = write_config(tmp_path, {"a.yaml": text}, vip_listeners={"enabled": True})
    code, out, _ = run(capsys, "listeners", "--config", config)
    assert code == 0
    assert out.split() == ["ADDRESSES", "PORT", "MATCH", "DESTINATION"]


# --- query ------------------------------------------------------------------------




@pytest.mark.parametrize(
    ("address", "asked"),
    [
        ("'::1'", "::1"),
        ("['::1', 127.0.0.1]", "::1"),
        ("[127.0.0.2, '::1']", "127.0.0.2"),
        ("0.0.0.0", "127.0.0.1"),
        ("'::'", "::1"),
        ("[0.0.0.0, '::1']", "127.0.0.1"),
    ],
)
def test_query_asks_the_first_listen_address(
    tmp_path: Path, address: str, asked: str
) -> None:
    """Without --server: the config's first address, a wildcard asked on loopback."""
    config = tmp_path / "meshdns.yaml"
    config.write_text(f"listen: {{address: {address}, port: 5300, allow: [10.0.0.0/8]}}\n")
    args = build_parser().parse_args(["query", "a.example", "-c", str(config)])
    assert _default_server(args) == (asked, 5300)




def test_query_server_in_brackets_must_be_ipv6(capsys) -> None:
    """--server takes the forms of upstream.servers, with the same message."""
    with pytest.raises(SystemExit) as exited:
        main(["query", "a.example", "--server", "[127.0.0.1]:5300"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        "argument --server: '[127.0.0.1]:5300': brackets are for IPv6 only; write 127.0.0.1:5300"
    )


# --- the command line ---------------------------------------------------------------


def test_capture_is_a_subcommand() -> None:
    args = build_parser().parse_args(["capture", "show"])
    assert callable(args.func)


