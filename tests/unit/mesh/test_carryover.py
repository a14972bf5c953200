"""
Tests for L{meshdns_plugin.mesh.carryover}, and the multi-team folder it is
for: many teams' files in one ConfigMap, some of them broken.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from meshdns_plugin.config import parse_config
from meshdns_plugin.mesh.carryover import carry_over
from meshdns_plugin.mesh.entries import load_entries
from meshdns_plugin.mesh.loader import TableLoader

TEAM_A = """\
# team-a: two external APIs
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: maps, namespace: team-a}
spec:
  hosts: [maps.example.com]
  addresses: [192.0.2.10]
  ports: [{number: 443, name: https, protocol: TLS}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: geo, namespace: team-a}
spec:
  hosts: [geo.example.com]
  ports: [{number: 443, name: https, protocol: TLS}]
  resolution: DNS
"""

#: team-b: one good Service, one ServiceEntry with a typo in its address.
TEAM_B = """\
apiVersion: v1
kind: Service
metadata: {name: ledger, namespace: team-b}
spec: {clusterIP: 10.96.1.1, ports: [{port: 80}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: bank, namespace: team-b}
spec:
  hosts: [bank.example.net]
  addresses: [192.0.2.300]
  ports: [{number: 443, name: https, protocol: TLS}]
  resolution: DNS
"""

#: team-c: not YAML at all (a merge conflict committed by mistake).
TEAM_C = """\
<<<<<<< HEAD
apiVersion: v1
=======
kind: [Service
>>>>>>> theirs
"""


def folder(tmp_path: Path, **files: str) -> Path:
    entries = tmp_path / "configmap"
    entries.mkdir(exist_ok=True)
    for name, text in files.items():
        (entries / f"{name}.yaml").write_text(text)
    return entries


def loader_for(tmp_path: Path) -> TableLoader:
    raw = {"entries": ["configmap"], "mesh": {"namespace": "team-a", "search": []}}
    return TableLoader(parse_config(raw, "meshdns.yaml", str(tmp_path)))


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


def test_twistd_starts_with_invalid_documents_and_serves_the_rest(
    start_meshdns: Callable[..., Any], upstream: Any
) -> None:
    """The real process: no traceback, one error line per invalid document."""
    meshdns = start_meshdns(
        {"upstream": {"servers": [upstream.server]}, "mesh": {"search": []}},
        {"team_a.yaml": TEAM_A, "team_b.yaml": TEAM_B, "team_c.yaml": TEAM_C},
    )
    reply = meshdns.query("maps.example.com")
    assert [r.to_text() for rrset in reply.answer for r in rrset] == ["192.0.2.10"]
    reply = meshdns.query("ledger.team-b.svc.cluster.local")
    assert [r.to_text() for rrset in reply.answer for r in rrset] == ["10.96.1.1"]
    log = meshdns.log()
    assert "Traceback" not in log
    invalid = [line for line in log.splitlines() if "Invalid, left out" in line]
    assert len(invalid) == 2
    assert any("team_b.yaml: document 1: spec.addresses[0]" in line for line in invalid)
    assert any("team_c.yaml" in line for line in invalid)
