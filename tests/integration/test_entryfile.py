"""
Tests for L{meshdns_plugin.sources.entryfile}'s child process: a large file
parsed apart gives what it gives when parsed here, problems included, and a
child that fails or answers nonsense makes the file one problem naming it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from meshdns_plugin.sources import entryfile
from tests.support.cluster import pods_slice, service, service_entry

TEXT = (
    service("team-a", "web", "10.96.0.10")
    + pods_slice("team-a", "web", "10.1.0.5", "10.1.0.6")
    + service_entry("team-a", "api", "api.example.com", "192.0.2.1")
    + service("team-a", "bad", "10.96.0.999")
    + "\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n"
)


def test_apart_reads_what_here_reads(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(TEXT)
    apart = entryfile.read_apart(str(path), 1 << 20)
    assert apart == entryfile.read_here(str(path), 1 << 20)
    web, web_slice, api = apart.objects
    assert web.cluster_ips == ("10.96.0.10",)
    assert web_slice.addresses == ("10.1.0.5", "10.1.0.6")
    assert api.hosts == ("api.example.com",)
    (problem,) = apart.problems
    assert (problem.file, problem.document, problem.field) == (str(path), 3, "spec.clusterIP")
    assert apart.notes == [f"{path}: document 4: skipped v1 ConfigMap"]


def test_failed_child_is_one_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(TEXT)
    monkeypatch.setattr(sys, "executable", "/bin/false")
    result = entryfile.read_apart(str(path), 1 << 20)
    assert result.objects == []
    (problem,) = result.problems
    assert (problem.file, problem.document) == (str(path), None)
    assert problem.message.startswith("its parsing process failed (exit 1")


def test_child_answering_nonsense_is_one_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(TEXT)
    monkeypatch.setattr(sys, "executable", "/bin/echo")
    (problem,) = entryfile.read_apart(str(path), 1 << 20).problems
    assert problem.message.startswith("its parsing process answered nonsense")


def test_unreadable_file_apart_is_one_problem(tmp_path: Path) -> None:
    missing = tmp_path / "gone.yaml"
    (problem,) = entryfile.read_apart(str(missing), 1 << 20).problems
    assert problem.message == "cannot read: No such file or directory"
