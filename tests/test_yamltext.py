"""The fast YAML loader gives exactly what PyYAML's safe loader gives, errors included."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from meshdns_plugin import yamltext

DOCUMENTS = [
    "a: 1\nb: [x, 2.5, true, null, 2024-01-02]\n",
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
