"""
Tests for L{meshdns_plugin.mesh.yamltext}: the fast loader gives what PyYAML's
safe loader gives (errors included) except where Kubernetes reads YAML
otherwise, and no file can cost more than its limits.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from meshdns_plugin.mesh import yamltext

DOCUMENTS = [
    "a: 1\nb: [x, 2.5, true, null]\n",
    "base: &b {x: 1}\nderived:\n  <<: *b\n  y: 2\n",
    "list: &l [1, 2]\nagain: *l\n",
    "? [complex, key]\n: value\n",
    "plain\n",
    "---\nfirst: 1\n---\nsecond: 2\n...\n",
    "octal: 0o17\nhex: 0x1F\nbig: 12345678901234567890\nneg: -3\n",
    "binary: !!binary aGVsbG8=\nset: !!set {a, b}\n",
]


def _outcome(load, text: str) -> object:
    try:
        return list(load(text))
    except yaml.YAMLError as e:
        return type(e)


@pytest.mark.parametrize("text", DOCUMENTS)
def test_same_as_safe_load(text: str) -> None:
    assert _outcome(yamltext.load_all, text) == _outcome(yaml.safe_load_all, text)


def test_unknown_tag_is_an_error() -> None:
    with pytest.raises(yaml.YAMLError):
        list(yamltext.load_all("x: !python/object:os.system echo\n"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("v: !!int abc\n", "line 1: invalid YAML: 'abc' is not a valid int"),
        (
            "a: 1\nv: !!float " + "x" * 10_000 + "\n",
            "line 2: invalid YAML: '" + "x" * 40 + "'... is not a valid float",
        ),
        # Through the generic constructor (a merge key in the same mapping).
        ("v: {<<: {b: 1}, t: !!timestamp 2020-13-45}\n",
         "line 1: invalid YAML: '2020-13-45' is not a valid timestamp"),
    ],
)
def test_a_value_its_tag_cannot_read_is_one_short_error(text: str, message: str) -> None:
    with pytest.raises(yaml.YAMLError) as caught:
        list(yamltext.load_all(text))
    assert yamltext.describe(caught.value, text) == message


def test_a_long_problem_is_cut() -> None:
    text = "v: !" + "t" * 10_000 + " x\n"
    with pytest.raises(yaml.YAMLError) as caught:
        list(yamltext.load_all(text))
    assert len(yamltext.describe(caught.value, text)) < 250


_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=20), st.floats(allow_nan=False)
)
_trees = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(tree=_trees)
def test_round_trip_matches(tree) -> None:
    text = yaml.safe_dump(tree)
    assert yamltext.load(text) == yaml.safe_load(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        # Base-60 numbers and timestamps are YAML 1.1 only: go-yaml (kubectl,
        # Istio) reads them as strings.
        ("1:20", "1:20"),
        ("1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8"),
        ("190:20:30.15", "190:20:30.15"),
        ("2024-01-02", "2024-01-02"),
        # What both read alike.
        ("017", 15),
        ("0x1F", 31),
        ("yes", True),
        ("1.5", 1.5),
        ("~", None),
    ],
)
def test_scalars_as_kubernetes_reads_them(text: str, value: object) -> None:
    assert yamltext.load(f"v: {text}\n") == {"v": value}


def test_flow_sequence_with_a_colon_before_the_bracket() -> None:
    """
    libyaml refuses C{[001:db8::]}; go-yaml reads one address, and so does
    meshdns, for every document of the file, each once, in order.
    """
    text = "a: [10.0.0.1]\n---\naddresses: [001:db8::, 2001:db8::1]\n---\nc: [x:, y]\n"
    assert list(yamltext.load_all(text)) == [
        {"a": ["10.0.0.1"]},
        {"addresses": ["001:db8::", "2001:db8::1"]},
        {"c": ["x:", "y"]},
    ]
    assert yamltext.load("addresses: [001:db8::]\n") == {"addresses": ["001:db8::"]}


def test_block_item_ending_in_a_colon_is_a_mapping_as_in_kubectl() -> None:
    """C{- 2001:db8::} ends with C{:} and a line break: a key, for go-yaml too."""
    assert yamltext.load("- 2001:db8::\n") == [{"2001:db8:": None}]


def test_an_alias_shares_its_node() -> None:
    data = yamltext.load("x: &a {k: [1, 2]}\ny: *a\n")
    assert data == {"x": {"k": [1, 2]}, "y": {"k": [1, 2]}}
    assert data["x"] is data["y"]


def _laughs(depth: int, width: int = 9) -> str:
    """The "billion laughs": each level lists the one below C{width} times."""
    lines = ["a0: &a0 [lol]"]
    for level in range(1, depth + 1):
        lines.append(f"a{level}: &a{level} [{', '.join([f'*a{level - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def _refusal(text: str) -> str:
    started = time.monotonic()
    with pytest.raises(yamltext.LimitError) as caught:
        list(yamltext.load_all(text))
    assert time.monotonic() - started < 0.5
    return yamltext.describe(caught.value, text)


def test_billion_laughs_is_refused_at_once() -> None:
    text = _laughs(9)
    assert len(text) <= 500
    assert _refusal(text) == (
        f"line 9: expands to more than {yamltext.MAX_NODES} nodes through aliases (the limit)"
    )


def test_a_few_aliases_are_fine() -> None:
    data = yamltext.load(_laughs(3))
    assert len(data["a3"]) == 9 and data["a3"][0] is data["a2"]


def test_merge_keys_cannot_multiply_either() -> None:
    lines = ["m0: &m0 {x: 1}"]
    for level in range(1, 10):
        merged = ", ".join([f"*m{level - 1}"] * 9)
        lines.append(f"m{level}: &m{level} {{<<: [{merged}], y{level}: 1}}")
    assert "expands to more than" in _refusal("\n".join(lines) + "\n")


def test_a_recursive_alias_is_refused() -> None:
    assert _refusal("a: &a [1, *a]\n") == (
        "line 1: an alias refers to a node that contains it (a recursive structure)"
    )


def _nested(levels: int) -> str:
    """A mapping holding lists nested so that the document is C{levels} deep."""
    inner = levels - 2  # the mapping, and the scalar at the bottom
    return "a: " + "[" * inner + "x" + "]" * inner + "\n"


def test_nesting_up_to_the_limit() -> None:
    assert yamltext.load(_nested(yamltext.MAX_DEPTH)) is not None
    too_deep = f"line 1: nested more than {yamltext.MAX_DEPTH} levels deep (the limit)"
    assert _refusal(_nested(yamltext.MAX_DEPTH + 1)) == too_deep
    # Through an alias, and through the generic constructor (a merge key).
    aliased = "x: &x [[1]]\nb: " + "[" * 97 + "*x" + "]" * 97 + "\n"
    assert _refusal(aliased).endswith("nested more than 100 levels deep (the limit)")
    merged = "b: {<<: {k: 1}, v: " + "[" * 99 + "]" * 99 + "}\n"
    assert _refusal(merged) == too_deep


@pytest.mark.parametrize("loader", yamltext._LOADERS)
def test_a_thousand_levels_is_one_error(loader: type) -> None:
    """libyaml stops at its own limit (1000), PyYAML's composer recurses: one error either way."""
    text = _nested(1000)
    with pytest.raises(yaml.YAMLError) as caught:
        list(yamltext._documents(text, loader))
    assert yamltext.describe(caught.value, text).endswith(
        f"nested more than {yamltext.MAX_DEPTH} levels deep (the limit)"
    )


def test_a_large_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as f:
        f.truncate(8 * 1024**3)  # sparse: 8 GB that take no space
    started = time.monotonic()
    with pytest.raises(ValueError) as caught:
        yamltext.read_text(str(path))
    assert time.monotonic() - started < 0.5
    assert str(caught.value) == (
        f"{8 * 1024**3} bytes, over the limit of {yamltext.MAX_FILE_SIZE} bytes "
        "(limits.max_file_size); not read"
    )


def test_the_size_limit_is_inclusive(tmp_path: Path) -> None:
    path = tmp_path / "entries.yaml"
    path.write_text("a: 1\n")
    assert yamltext.read_text(str(path), max_size=5) == "a: 1\n"
    with pytest.raises(ValueError, match="^5 bytes, over the limit of 4 bytes"):
        yamltext.read_text(str(path), max_size=4)
