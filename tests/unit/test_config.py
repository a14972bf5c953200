"""
Tests for L{meshdns_plugin.config}: defaults, every key, and one clear line for
every kind of mistake (naming the file and the key).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from meshdns_plugin.config import (
    _CHECKS,
    _FIELDS,
    CacheConfig,
    Config,
    ConfigError,
    ListenConfig,
    MeshConfig,
    UpstreamConfig,
    load_config,
    parse_config,
)
from tests.support.paths import SHIPPED_CONFIG

SHIPPED = SHIPPED_CONFIG
# Every section of Config (all its fields but entries and source), so that a
# section added later is covered by the generic tests below.
SECTIONS = {
    f.name: f.default_factory
    for f in dataclasses.fields(Config)
    if f.name not in ("entries", "source")
}


def write(tmp_path: Path, text: str, name: str = "meshdns.yaml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def config_error(tmp_path: Path, text: str) -> tuple[str, str]:
    """Load C{text} as a config file; return (file path, error line)."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return path, str(caught.value)


def assert_one_line_naming(message: str, path: str, key: str) -> None:
    assert "\n" not in message
    assert path in message
    assert key in message
    assert "Traceback" not in message


# --- defaults and the shipped file -------------------------------------------


def test_shipped_file_holds_the_defaults() -> None:
    """conf/meshdns.yaml documents the defaults: loading it changes nothing but entries."""
    shipped = load_config(str(SHIPPED))
    defaults = Config()
    for name in SECTIONS:
        assert getattr(shipped, name) == getattr(defaults, name), name


def test_shipped_file_documents_every_key() -> None:
    """Every key of every section appears in conf/meshdns.yaml (STYLE.md: commented key by key)."""
    raw = yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))
    missing = [
        f"{name}.{key}"
        for name, cls in SECTIONS.items()
        for key in _CHECKS[cls]
        if key not in (raw.get(name) or {})
    ]
    assert missing == []
    assert "entries" in raw


@pytest.mark.parametrize("cls", list(SECTIONS.values()))
def test_every_field_has_a_key(cls: type) -> None:
    """The keys set every field of their section (C{listen.address} sets C{addresses})."""
    keys = {_FIELDS.get((cls, key), key) for key in _CHECKS[cls]}
    assert keys == {f.name for f in dataclasses.fields(cls)}


def test_shipped_entries_point_at_the_conf_folder() -> None:
    shipped = load_config(str(SHIPPED))
    assert shipped.entries == (str(SHIPPED.parent / "entries"),)
    assert shipped.source == str(SHIPPED)


def test_none_reads_the_embedded_default() -> None:
    embedded = load_config(None)
    shipped = load_config(str(SHIPPED))
    assert dataclasses.replace(embedded, source="") == dataclasses.replace(shipped, source="")
    assert os.path.samefile(embedded.source, SHIPPED)


def test_sections_include_those_of_the_issue() -> None:
    assert {"listen", "upstream", "mesh", "cache"} <= set(SECTIONS)


def test_defaults_match_issue() -> None:
    """The defaults of issue 2 item 3, written out independently of the code."""
    config = parse_config({}, "f.yaml", "/base")
    assert (config.listen.addresses, config.listen.port) == (("127.0.0.1",), 15053)
    assert config.upstream.resolv_conf == "/etc/resolv.conf"
    assert config.upstream.servers == ()
    assert config.upstream.timeout == 5
    mesh = config.mesh
    assert (mesh.namespace, mesh.cluster_domain, mesh.search) == ("default", "cluster.local", None)
    assert (mesh.ttl, mesh.auto_allocate, mesh.state_file) == (30, True, None)
    assert mesh.ipv4_range == ipaddress.ip_network("240.240.0.0/16")
    assert mesh.ipv6_range == ipaddress.ip_network("2001:2::/48")
    assert config.entries == ()
    assert config.cache.max_entries == 100000


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "---\n"])
def test_empty_file_is_the_defaults(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    config = load_config(path)
    assert dataclasses.replace(config, source="<defaults>") == Config()
    assert config.source == path


@pytest.mark.parametrize("name", list(SECTIONS))
def test_empty_section_is_its_defaults(tmp_path: Path, name: str) -> None:
    config = load_config(write(tmp_path, f"{name}:\n"))
    assert getattr(config, name) == SECTIONS[name]()


def test_config_is_frozen() -> None:
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.mesh.ttl = 5  # type: ignore[misc]


# --- every key ---------------------------------------------------------------


FULL = """
listen:
  address: "::1"
  port: 5300
  allow: [10.0.0.0/8, "2001:db8::/32"]
upstream:
  resolv_conf: /tmp/my-resolv.conf
  servers: [192.0.2.1, "192.0.2.2:5353", "[2001:db8::53]:5354", "2001:db8::54"]
  timeout: 2.5
mesh:
  namespace: ns1
  cluster_domain: Example.Local.
  search: [ns1.svc.example.local, svc.example.local]
  ttl: 7
  auto_allocate: false
  ipv4_range: 10.99.0.0/24
  ipv6_range: fd00:99::/64
  state_file: /var/lib/meshdns/vips.json
entries:
  - entries
  - /abs/other.yaml
cache:
  max_entries: 12
"""


def test_every_key_is_read(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    config = load_config(path)
    assert config.listen == ListenConfig(
        addresses=("::1",),
        port=5300,
        allow=(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32")),
    )
    assert config.upstream == UpstreamConfig(
        resolv_conf="/tmp/my-resolv.conf",
        servers=(
            ("192.0.2.1", 53),
            ("192.0.2.2", 5353),
            ("2001:db8::53", 5354),
            ("2001:db8::54", 53),
        ),
        timeout=2.5,
    )
    assert config.mesh == MeshConfig(
        namespace="ns1",
        cluster_domain="example.local",
        search=("ns1.svc.example.local", "svc.example.local"),
        ttl=7,
        auto_allocate=False,
        ipv4_range=ipaddress.IPv4Network("10.99.0.0/24"),
        ipv6_range=ipaddress.IPv6Network("fd00:99::/64"),
        state_file="/var/lib/meshdns/vips.json",
    )
    assert config.entries == (str(tmp_path / "entries"), "/abs/other.yaml")
    assert config.cache == CacheConfig(max_entries=12)
    assert config.source == path


def test_timeout_integer_is_seconds(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "upstream: {timeout: 3}\n"))
    assert config.upstream.timeout == 3.0


def test_search_domains_normalised(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, "mesh: {search: [NS1.Svc.Cluster.Local., cluster.local]}\n")
    )
    assert config.mesh.search == ("ns1.svc.cluster.local", "cluster.local")


def test_empty_search_list_is_kept_empty(tmp_path: Path) -> None:
    """An explicit empty list turns the shortcut off; it is not "use resolv.conf" (null)."""
    config = load_config(write(tmp_path, "mesh: {search: []}\n"))
    assert config.mesh.search == ()


# --- upstream.servers forms --------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.2.3.4", ("1.2.3.4", 53)),
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("[::1]:5353", ("::1", 5353)),
        ("::1", ("::1", 53)),
        ("2001:db8::1", ("2001:db8::1", 53)),
        ("[2001:DB8:0::1]:53", ("2001:db8::1", 53)),
        ("192.0.2.1:65535", ("192.0.2.1", 65535)),
        ("192.0.2.1:1", ("192.0.2.1", 1)),
        # Brackets without a port: port 53.
        ("[::1]", ("::1", 53)),
        # A bare IPv6 address is the whole text, never address and port.
        ("::1:53", ("::1:53", 53)),
        ("2001:db8::53", ("2001:db8::53", 53)),
    ],
)
def test_server_forms(tmp_path: Path, text: str, expected: tuple[str, int]) -> None:
    config = load_config(write(tmp_path, yaml.safe_dump({"upstream": {"servers": [text]}})))
    assert config.upstream.servers == (expected,)


@pytest.mark.parametrize(
    "text",
    [
        "1.2.3.4:0",
        "1.2.3.4:65536",
        "1.2.3.4:",
        "1.2.3.4:dns",
        "1.2.3.4:-53",
        "[::1]:",
        "[::1]5353",
        "[::1:5353",
        "::1]:53",
        "dns.example.com",
        "dns.example.com:53",
        "1.2.3.4.5",
        "300.1.1.1",
        "",
    ],
)
def test_invalid_servers(tmp_path: Path, text: str) -> None:
    path, message = config_error(tmp_path, yaml.safe_dump({"upstream": {"servers": [text]}}))
    assert_one_line_naming(message, path, "upstream.servers")


@pytest.mark.parametrize(
    ("text", "fix"),
    [
        ("[1.2.3.4]:53", "1.2.3.4:53"),
        ("[1.2.3.4]", "1.2.3.4:53"),
        ("[192.0.2.1]:5353", "192.0.2.1:5353"),
    ],
)
def test_brackets_around_ipv4_are_refused(tmp_path: Path, text: str, fix: str) -> None:
    """Brackets are for IPv6 only; the message says what to write instead."""
    path, message = config_error(tmp_path, yaml.safe_dump({"upstream": {"servers": [text]}}))
    assert message == (
        f"{path}: upstream.servers: {text!r}: brackets are for IPv6 only; write {fix}"
    )


@given(
    address=st.ip_addresses(v=4),
    port=st.integers(min_value=1, max_value=65535),
)
def test_ipv4_server_with_port_round_trips(address: ipaddress.IPv4Address, port: int) -> None:
    config = parse_config({"upstream": {"servers": [f"{address}:{port}"]}}, "f", "/")
    assert config.upstream.servers == ((str(address), port),)


@given(
    address=st.ip_addresses(v=6),
    port=st.integers(min_value=1, max_value=65535),
)
def test_ipv6_server_with_port_round_trips(address: ipaddress.IPv6Address, port: int) -> None:
    config = parse_config(
        {"upstream": {"servers": [f"[{address.exploded.upper()}]:{port}", address.exploded]}},
        "f",
        "/",
    )
    assert config.upstream.servers == ((str(address), port), (str(address), 53))


# --- listen.address: one IP or several ---------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1", ("127.0.0.1",)),
        (["127.0.0.1"], ("127.0.0.1",)),
        (["127.0.0.1", "::1"], ("127.0.0.1", "::1")),
        (["0:0::1", "127.0.0.1", "127.0.0.2"], ("::1", "127.0.0.1", "127.0.0.2")),
    ],
)
def test_listen_addresses(tmp_path: Path, value: object, expected: tuple[str, ...]) -> None:
    """One IP or a list, normalised, in the order given."""
    config = load_config(write(tmp_path, yaml.safe_dump({"listen": {"address": value}})))
    assert config.listen.addresses == expected


def test_wildcards_of_both_versions_apart_from_their_own(tmp_path: Path) -> None:
    """0.0.0.0 covers IPv4 only: listing ::1 beside it is fine."""
    text = yaml.safe_dump({"listen": {"address": ["0.0.0.0", "::1"], "allow": ["10.0.0.0/8"]}})
    assert load_config(write(tmp_path, text)).listen.addresses == ("0.0.0.0", "::1")


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ([], "expected an IP address or a non-empty list of them, got []"),
        ("localhost", "'localhost' is not an IP address"),
        (["127.0.0.1", "localhost"], "'localhost' is not an IP address"),
        (["127.0.0.1", ["::1"]], "['::1'] is not an IP address"),
        ([None], "None is not an IP address"),
        (["127.0.0.1", "127.0.0.1"], "127.0.0.1 is listed twice"),
        (["::1", "127.0.0.1", "0:0::1"], "::1 is listed twice"),
        (
            ["0.0.0.0", "127.0.0.1"],
            "0.0.0.0 already listens on every IPv4 address, 127.0.0.1 included: "
            "list one or the other",
        ),
        (
            ["127.0.0.1", "::"],
            ":: already listens on every address, IPv4 too, 127.0.0.1 included: "
            "list one or the other",
        ),
        (
            ["::", "0.0.0.0"],
            ":: already listens on every address, IPv4 too, 0.0.0.0 included: "
            "list one or the other",
        ),
    ],
)
def test_invalid_listen_addresses(tmp_path: Path, value: object, problem: str) -> None:
    text = yaml.safe_dump({"listen": {"address": value, "allow": ["10.0.0.0/8"]}})
    path, message = config_error(tmp_path, text)
    assert message == f"{path}: listen.address: {problem}"


@pytest.mark.parametrize(
    ("value", "exposed"),
    [
        ("0.0.0.0", "0.0.0.0"),
        ("::", "::"),
        (["127.0.0.1", "192.0.2.7"], "192.0.2.7"),
        (["::1", "0.0.0.0", "2001:db8::7"], "0.0.0.0"),
    ],
)
def test_any_address_beyond_loopback_needs_allow(
    tmp_path: Path, value: object, exposed: str
) -> None:
    """The open-resolver rule holds for each address: one beyond loopback needs allow."""
    path, message = config_error(tmp_path, yaml.safe_dump({"listen": {"address": value}}))
    assert message == (
        f"{path}: listen.allow: required when listening on {exposed}, which is not loopback "
        "(list the client networks, e.g. [10.0.0.0/8])"
    )
    allowed = yaml.safe_dump({"listen": {"address": value, "allow": ["10.0.0.0/8"]}})
    assert exposed in load_config(write(tmp_path, allowed)).listen.addresses


def test_port_0_needs_a_single_address(tmp_path: Path) -> None:
    """Each listener would get a free port of its own: refused, naming listen.port."""
    text = yaml.safe_dump({"listen": {"address": ["127.0.0.1", "::1"], "port": 0}})
    path, message = config_error(tmp_path, text)
    assert message == (
        f"{path}: listen.port: 0 (any free port) needs a single listen address, not 2: "
        "each would get a different port"
    )
    for single in ("::1", ["::1"]):
        text = yaml.safe_dump({"listen": {"address": single, "port": 0}})
        assert load_config(write(tmp_path, text)).listen.port == 0


# --- mesh.namespace -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["default", "ns1", "a", "0", "istio-system", "a" * 63, "1-a"])
def test_kubernetes_namespace_names(tmp_path: Path, name: str) -> None:
    config = load_config(write(tmp_path, yaml.safe_dump({"mesh": {"namespace": name}})))
    assert config.mesh.namespace == name


@pytest.mark.parametrize(
    "name", ["NS1", "Default", "-ns", "ns-", "ns_1", "ns.1", "ns 1", "a" * 64, "café", "*"]
)
def test_namespace_must_be_an_rfc_1123_label(tmp_path: Path, name: str) -> None:
    path, message = config_error(tmp_path, yaml.safe_dump({"mesh": {"namespace": name}}))
    assert message == (
        f"{path}: mesh.namespace: {name!r} is not a Kubernetes namespace name (lowercase "
        "letters, digits and '-', starting and ending with a letter or digit, "
        "at most 63 characters)"
    )


# --- unknown keys ------------------------------------------------------------


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path, message = config_error(tmp_path, "listen: {}\nlisten_port: 53\n")
    assert_one_line_naming(message, path, "listen_port")
    assert "unknown" in message


@pytest.mark.parametrize("name", list(SECTIONS))
def test_unknown_key_in_each_section(tmp_path: Path, name: str) -> None:
    path, message = config_error(tmp_path, f"{name}:\n  bogus_key: 1\n")
    assert_one_line_naming(message, path, f"{name}.bogus_key")
    assert "unknown" in message


# --- wrong types and invalid values -------------------------------------------


BAD_VALUES = [
    ("listen", "address", "localhost"),
    ("listen", "address", 5),
    ("listen", "port", True),
    ("listen", "port", "53"),
    ("listen", "port", 65536),
    ("listen", "port", -1),
    ("listen", "port", 5.5),
    ("listen", "allow", "10.0.0.0/8"),
    ("listen", "allow", ["not-a-network"]),
    ("upstream", "resolv_conf", ""),
    ("upstream", "resolv_conf", ["/etc/resolv.conf"]),
    ("upstream", "servers", "1.2.3.4"),
    ("upstream", "servers", {"a": 1}),
    ("upstream", "servers", [53]),
    ("upstream", "timeout", True),
    ("upstream", "timeout", "5"),
    ("upstream", "timeout", 0),
    ("upstream", "timeout", -1),
    ("upstream", "timeout", 3601),
    ("mesh", "namespace", ""),
    ("mesh", "namespace", 5),
    ("mesh", "namespace", ["ns1"]),
    ("mesh", "cluster_domain", "a..b"),
    ("mesh", "cluster_domain", "x" * 64 + ".local"),
    ("mesh", "cluster_domain", 5),
    ("mesh", "search", "ns1.svc.cluster.local"),
    ("mesh", "search", ["ok.local", "bad..local"]),
    ("mesh", "search", [5]),
    ("mesh", "ttl", True),
    ("mesh", "ttl", -1),
    ("mesh", "ttl", 1.5),
    ("mesh", "ttl", "30"),
    ("mesh", "auto_allocate", "yes please"),
    ("mesh", "auto_allocate", 1),
    ("mesh", "auto_allocate", None),
    ("mesh", "state_file", 5),
    ("mesh", "state_file", ""),
    ("cache", "max_entries", 0),
    ("cache", "max_entries", True),
    ("cache", "max_entries", "100"),
    ("cache", "max_entries", 1.0),
    ("admin", "address", "localhost"),
    ("admin", "port", 70000),
    ("admin", "port", False),
    ("reload", "poll_interval", 0),
    ("reload", "poll_interval", "2"),
    ("reload", "debounce", -0.1),
    ("log", "queries", "no"),
    ("log", "queries", 0),
]


@pytest.mark.parametrize(("section", "key", "value"), BAD_VALUES)
def test_wrong_type_or_value(tmp_path: Path, section: str, key: str, value: object) -> None:
    path, message = config_error(tmp_path, yaml.safe_dump({section: {key: value}}))
    assert_one_line_naming(message, path, f"{section}.{key}")


@pytest.mark.parametrize("section", list(SECTIONS))
@pytest.mark.parametrize("value", [[], "text", 5, True])
def test_section_must_be_a_mapping(tmp_path: Path, section: str, value: object) -> None:
    path, message = config_error(tmp_path, yaml.safe_dump({section: value}))
    assert_one_line_naming(message, path, section)


@pytest.mark.parametrize("value", ["entries", 5, True, {"a": "b"}, ["ok", 5], [None], [""]])
def test_entries_must_be_a_list_of_paths(tmp_path: Path, value: object) -> None:
    path, message = config_error(tmp_path, yaml.safe_dump({"entries": value}))
    assert_one_line_naming(message, path, "entries")


@pytest.mark.parametrize("value", [{}, "", False, 0])
def test_entries_of_a_falsy_wrong_type_is_an_error(tmp_path: Path, value: object) -> None:
    """C{entries: {}} or C{entries: false} is a mistake, not an empty list."""
    path, message = config_error(tmp_path, yaml.safe_dump({"entries": value}))
    assert_one_line_naming(message, path, "entries")


@pytest.mark.parametrize("text", ["- listen\n- mesh\n", "just text\n", "5\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    path, message = config_error(tmp_path, text)
    assert "\n" not in message
    assert path in message


# --- ranges --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("ipv4_range", "2001:2::/48"),
        ("ipv4_range", "10.0.0.0/31"),
        ("ipv4_range", "10.0.0.0/32"),
        ("ipv4_range", "10.0.0.0/33"),
        ("ipv4_range", "10.0.0.0/"),
        ("ipv4_range", "nonsense"),
        ("ipv4_range", 24),
        ("ipv6_range", "240.240.0.0/16"),
        ("ipv6_range", "2001:db8::/127"),
        ("ipv6_range", "2001:db8::/129"),
        ("ipv6_range", "2001:zz::/48"),
    ],
)
def test_invalid_ranges(tmp_path: Path, key: str, value: object) -> None:
    path, message = config_error(tmp_path, yaml.safe_dump({"mesh": {key: value}}))
    assert_one_line_naming(message, path, f"mesh.{key}")


@pytest.mark.parametrize(
    ("key", "value"), [("ipv4_range", "10.0.0.0/30"), ("ipv6_range", "fd00::/126")]
)
def test_smallest_ranges_accepted(tmp_path: Path, key: str, value: str) -> None:
    config = load_config(write(tmp_path, yaml.safe_dump({"mesh": {key: value}})))
    assert getattr(config.mesh, key) == ipaddress.ip_network(value)


# --- relative paths ---------------------------------------------------------------


def test_relative_paths_are_taken_from_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entries, resolv.conf and the state file: the same file means the same files anywhere."""
    folder = tmp_path / "etc" / "meshdns"
    folder.mkdir(parents=True)
    path = folder / "meshdns.yaml"
    path.write_text(
        "entries: [entries, ./one.yaml, ../shared/two.yaml, /abs/three.yaml]\n"
        "upstream: {resolv_conf: resolv.conf}\n"
        "mesh: {state_file: ../state/vips.json}\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(os.path.relpath(path, elsewhere))
    assert config.entries == (
        str(folder / "entries"),
        str(folder / "one.yaml"),
        str(tmp_path / "etc" / "shared" / "two.yaml"),
        "/abs/three.yaml",
    )
    assert config.upstream.resolv_conf == str(folder / "resolv.conf")
    assert config.mesh.state_file == str(tmp_path / "etc" / "state" / "vips.json")


def test_absolute_and_default_paths_stay_as_they_are(tmp_path: Path) -> None:
    text = "upstream: {resolv_conf: /run/resolv.conf}\nmesh: {state_file: /var/vips.json}\n"
    config = load_config(write(tmp_path, text))
    assert (config.upstream.resolv_conf, config.mesh.state_file) == (
        "/run/resolv.conf",
        "/var/vips.json",
    )
    defaults = load_config(write(tmp_path, "mesh: {}\n"))
    assert (defaults.upstream.resolv_conf, defaults.mesh.state_file) == ("/etc/resolv.conf", None)


# --- files that cannot be used -------------------------------------------------


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path, message = config_error(tmp_path, "listen:\n  port: 1\nmesh: ttl: 3\n")
    assert_one_line_naming(message, path, "line 3")


def test_invalid_yaml_deep_in_the_file_names_its_line(tmp_path: Path) -> None:
    lines = ["# comment"] * 20 + ["mesh:", "  ttl: [1, 2", "cache: {}"]
    path, message = config_error(tmp_path, "\n".join(lines) + "\n")
    assert "\n" not in message and path in message
    # The flow sequence opened on line 22 is still open when line 23 is read.
    assert "line 22" in message or "line 23" in message


def test_two_documents_are_invalid(tmp_path: Path) -> None:
    path, message = config_error(tmp_path, "listen: {}\n---\ncache: {}\n")
    assert_one_line_naming(message, path, "line 2")


def test_control_character_names_the_line(tmp_path: Path) -> None:
    """A reader error (no problem_mark) must still be one clean line with its line number."""
    path, message = config_error(tmp_path, 'listen: {}\nmesh: {namespace: "a\x07b"}\n')
    assert_one_line_naming(message, path, "line 2")
    assert "::" not in message.replace(path, "")


def test_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    """A file in another encoding stops start-up with one line, not a UnicodeDecodeError."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes("mesh:\n  namespace: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert "\n" not in str(caught.value)
    assert str(path) in str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert_one_line_naming(str(caught.value), path, "cannot read")


def test_folder_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(str(tmp_path))
    assert_one_line_naming(str(caught.value), str(tmp_path), "cannot read")


def test_limits_max_file_size(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "limits: {max_file_size: 1024}\n"))
    assert config.limits.max_file_size == 1024
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, "limits: {max_file_size: 0}\n"))
    assert str(caught.value).endswith("limits.max_file_size: 0 is out of range 1..1099511627776")
