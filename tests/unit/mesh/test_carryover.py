"""
Tests for L{meshdns_plugin.mesh.carryover}, and the multi-team folder it is
for: many teams' files in one ConfigMap, some of them broken.
"""

from __future__ import annotations

from pathlib import Path

from meshdns_plugin.config import parse_config
from meshdns_plugin.mesh.carryover import carry_over
from meshdns_plugin.mesh.loader import TableLoader
from meshdns_plugin.sources.files import load_entries
from tests.support.samples import TEAM_A, TEAM_B, TEAM_C


def folder(tmp_path: Path, **files: str) -> Path:
    entries = tmp_path / "configmap"
    entries.mkdir(exist_ok=True)
    for name, text in files.items():
        (entries / f"{name}.yaml").write_text(text)
    return entries


def loader_for(tmp_path: Path) -> TableLoader:
    raw = {"entries": ["configmap"], "mesh": {"namespace": "team-a", "search": []}}
    return TableLoader(parse_config(raw, "meshdns.yaml", str(tmp_path)), load_entries)


def ipv4(table, name: str) -> tuple[str, ...]:
    found = table.resolve(name.encode())
    return () if found is None else found.records.ipv4


def test_a_folder_with_broken_files_serves_every_valid_document(tmp_path: Path) -> None:
    folder(tmp_path, team_a=TEAM_A, team_b=TEAM_B, team_c=TEAM_C)
    loader = loader_for(tmp_path)
    table = loader.load()
    assert ipv4(table, "maps.example.com") == ("192.0.2.10",)
    assert ipv4(table, "geo.example.com")  # a VIP
    assert ipv4(table, "ledger.team-b.svc.cluster.local") == ("10.96.1.1",)
    assert ipv4(table, "bank.example.net") == ()
    # Each invalid one precisely: file, document, field, reason.
    found = [(Path(p.file).name, p.document, p.field) for p in loader.problems]
    assert found == [("team_b.yaml", 1, "spec.addresses[0]"), ("team_c.yaml", None, None)]
    assert "192.0.2.300" in str(loader.problems[0])
    assert all("\n" not in str(p) for p in loader.problems)


def test_one_more_file_breaking_keeps_serving_what_it_served(tmp_path: Path) -> None:
    entries = folder(tmp_path, team_a=TEAM_A, team_b=TEAM_B)
    loader = loader_for(tmp_path)
    before = loader.load()
    geo = before.vips["geo.example.com"]
    # team-a breaks its file: one document with a bad field, the other a YAML error.
    (entries / "team_a.yaml").write_text(TEAM_A.replace("192.0.2.10", "192.0.2.x"))
    table = loader.load()
    assert ipv4(table, "maps.example.com") == ("192.0.2.10",)
    assert table.vips["geo.example.com"] == geo
    (entries / "team_a.yaml").write_text(TEAM_A + "  ports: [\n")
    table = loader.load()
    assert ipv4(table, "maps.example.com") == ("192.0.2.10",)
    assert table.vips["geo.example.com"] == geo
    assert ipv4(table, "ledger.team-b.svc.cluster.local") == ("10.96.1.1",)
    # Removed for good: gone.
    (entries / "team_a.yaml").unlink()
    table = loader.load()
    assert ipv4(table, "maps.example.com") == ()


def test_nothing_is_carried_without_problems_or_a_previous_load(tmp_path: Path) -> None:
    entries = folder(tmp_path, team_a=TEAM_A)
    current = load_entries([str(entries)])
    assert carry_over(current, None) is current
    assert carry_over(current, current) is current


def test_a_valid_document_of_the_same_key_is_never_shadowed(tmp_path: Path) -> None:
    entries = folder(tmp_path, team_a=TEAM_A)
    previous = load_entries([str(entries)])
    # The same maps entry, moved to a new file; the old file now broken.
    (entries / "moved.yaml").write_text(TEAM_A.split("---")[0].replace("192.0.2.10", "192.0.2.11"))
    (entries / "team_a.yaml").write_text("kind: [\n")
    result = carry_over(load_entries([str(entries)]), previous)
    hosts = {e.hosts[0]: e.addresses for e in result.service_entries}
    assert hosts == {"maps.example.com": ("192.0.2.11",), "geo.example.com": ()}


