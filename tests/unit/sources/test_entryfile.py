"""
Tests for L{meshdns_plugin.sources.entryfile} in this process: which files
are parsed apart, and that the model objects a child sends back survive
pickling and C{dataclasses.replace} and are compact (slots, shared strings).
The child itself runs in C{tests.integration.test_entryfile}.
"""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import pytest

from meshdns_plugin.mesh.kinds import ReadResult
from meshdns_plugin.sources import entryfile
from meshdns_plugin.sources.files import parse_entries
from tests.support.cluster import pods_slice, service, service_entry


def never_apart(path: str, max_size: int) -> ReadResult:
    raise AssertionError(f"{path} was sent to a child")


def test_small_file_is_read_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(entryfile, "read_apart", never_apart)
    path = tmp_path / "small.yaml"
    path.write_text(service("team-a", "web", "10.96.0.10"))
    (found,) = entryfile.read_file(str(path), 1024).objects
    assert found.cluster_ips == ("10.96.0.10",)


def test_large_file_is_read_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked = []
    monkeypatch.setattr(entryfile, "APART_BYTES", 10)
    monkeypatch.setattr(entryfile, "read_apart", lambda *args: asked.append(args) or ReadResult())
    path = tmp_path / "large.yaml"
    path.write_text(service("team-a", "web", "10.96.0.10"))
    entryfile.read_file(str(path), 1024)
    assert asked == [(str(path), 1024)]


def test_file_over_the_limit_is_refused_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refusing a file by its size needs no child."""
    monkeypatch.setattr(entryfile, "APART_BYTES", 10)
    monkeypatch.setattr(entryfile, "read_apart", never_apart)
    path = tmp_path / "huge.yaml"
    path.write_text(service("team-a", "web", "10.96.0.10"))
    (problem,) = entryfile.read_file(str(path), 20).problems
    assert "over the limit of 20 bytes" in problem.message


TEXT = (
    service("team-a", "web", "10.96.0.10")
    + pods_slice("team-a", "web", "10.1.0.5", "10.1.0.6")
    + service_entry("team-a", "api", "api.example.com", "192.0.2.1")
    + service("team-a", "db", "10.96.0.11")
)


def test_model_objects_survive_pickling_and_replace() -> None:
    entries = parse_entries(TEXT, "cluster.yaml")
    assert pickle.loads(pickle.dumps(entries)) == entries
    web = entries.services[0]
    moved = dataclasses.replace(web, cluster_ips=("10.96.0.20",))
    assert (moved.name, moved.cluster_ips) == ("web", ("10.96.0.20",))
    assert web.cluster_ips == ("10.96.0.10",)


def test_model_objects_are_compact() -> None:
    """No per-object dict, and a namespace or a kind is one string, shared."""
    entries = parse_entries(TEXT, "cluster.yaml")
    web, db = entries.services
    assert not hasattr(web, "__dict__") and not hasattr(web.origin, "__dict__")
    assert web.origin.namespace is db.origin.namespace
    assert web.origin.kind is db.origin.kind
    assert entries.endpoint_slices[0].origin.namespace is web.origin.namespace
