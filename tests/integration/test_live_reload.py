"""
Live reload against the real C{twistd -n meshdns} process: every way an entry
file changes in practice, bad input, SIGHUP, and reloads under query load.

The poll interval is set far beyond each test's length, so a change that is
picked up was seen by inotify; polling itself is tested on a fake clock in
C{tests.unit.ops.test_watcher}. Everything talks to loopback only: meshdns, its admin
endpoint and the fake upstream.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import dns.exception
import dns.rcode
import dns.rdatatype
import pytest

from tests.support.processes import MeshdnsProcess, free_port
from tests.support.samples import BROKEN, entry
from tests.support.scrape import parse, scrape, value

#: Far longer than any test here: a reload seen within a test came from inotify.
NO_POLLING = 600


def config_for(upstream, **sections: object) -> dict:
    return {
        "upstream": {"servers": [upstream.server], "timeout": 2},
        "mesh": {"search": []},
        "reload": {"poll_interval": NO_POLLING, "debounce": 0.05},
        "admin": {"port": 0},
        **sections,
    }


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def addresses(meshdns: MeshdnsProcess, name: str) -> list[str]:
    """The A records meshdns answers for C{name} (none if unknown to the mesh)."""
    reply = meshdns.query(name, timeout=2)
    return sorted(
        r.address for rrset in reply.answer if rrset.rdtype == dns.rdatatype.A for r in rrset
    )


def reloads(meshdns: MeshdnsProcess) -> int:
    return meshdns.log().count("Reloaded:")


def wait_for_answer(meshdns: MeshdnsProcess, name: str, expected: list[str]) -> None:
    wait_for(lambda: addresses(meshdns, name) == expected, f"{name} -> {expected}")


def test_edit_in_place(start_meshdns, upstream) -> None:
    meshdns = start_meshdns(config_for(upstream), {"se.yaml": entry("a.example", "192.0.2.1")})
    assert addresses(meshdns, "a.example") == ["192.0.2.1"]
    path = meshdns.directory / "se.yaml"
    inode = path.stat().st_ino
    with open(path, "r+") as f:  # what an editor without a backup copy does
        f.truncate()
        f.write(entry("a.example", "192.0.2.2"))
    assert path.stat().st_ino == inode
    wait_for_answer(meshdns, "a.example", ["192.0.2.2"])
    assert "Query from" not in meshdns.log()  # query logging is off by default


def test_atomic_rename(start_meshdns, upstream) -> None:
    meshdns = start_meshdns(
        config_for(upstream), {"entries/se.yaml": entry("a.example", "192.0.2.1")}
    )
    temporary = meshdns.directory / "entries" / ".se.yaml.swp"
    temporary.write_text(entry("a.example", "192.0.2.3"))
    os.replace(temporary, meshdns.directory / "entries" / "se.yaml")
    wait_for_answer(meshdns, "a.example", ["192.0.2.3"])


def make_configmap(folder: Path, version: str, files: dict[str, str]) -> None:
    """
    Write C{files} the way the kubelet updates a ConfigMap volume: a new
    timestamped folder, a C{..data_tmp} symlink to it renamed over C{..data},
    the visible names symlinks through C{..data}, and the old folder removed.
    """
    folder.mkdir(exist_ok=True)
    data = folder / f"..{version}"
    data.mkdir()
    for name, text in files.items():
        (data / name).write_text(text)
    previous = os.readlink(folder / "..data") if (folder / "..data").is_symlink() else None
    (folder / "..data_tmp").symlink_to(data.name)
    os.replace(folder / "..data_tmp", folder / "..data")
    for name in files:
        if not (folder / name).is_symlink():
            (folder / name).symlink_to(f"..data/{name}")
    if previous is not None:
        shutil.rmtree(folder / previous)


def test_configmap_data_swap(start_meshdns, upstream, tmp_path: Path) -> None:
    configmap = tmp_path / "configmap"
    make_configmap(configmap, "2024_01", {"se.yaml": entry("a.example", "192.0.2.1")})
    meshdns = start_meshdns({**config_for(upstream), "entries": [str(configmap)]})
    assert addresses(meshdns, "a.example") == ["192.0.2.1"]
    make_configmap(
        configmap,
        "2024_02",
        {"se.yaml": entry("a.example", "192.0.2.4"), "more.yaml": entry("b.example", "192.0.2.5")},
    )
    wait_for_answer(meshdns, "a.example", ["192.0.2.4"])
    assert addresses(meshdns, "b.example") == ["192.0.2.5"]


def test_delete_and_create(start_meshdns, upstream) -> None:
    meshdns = start_meshdns(
        {**config_for(upstream), "entries": ["entries"]},
        {"entries/a.yaml": entry("a.example", "192.0.2.1")},
    )
    (meshdns.directory / "entries" / "a.yaml").unlink()
    # Gone from the mesh: forwarded, and the upstream does not know it.
    wait_for(lambda: meshdns.query("a.example").rcode() == dns.rcode.NXDOMAIN, "a.example to go")
    assert "Reloaded: 0 entries, 0 mesh names" in meshdns.log()
    (meshdns.directory / "entries" / "b.yaml").write_text(entry("b.example", "192.0.2.6"))
    wait_for_answer(meshdns, "b.example", ["192.0.2.6"])


def test_folder_deleted_and_recreated(start_meshdns, upstream) -> None:
    """Twisted's INotify shuts down when a watched folder goes: the watcher starts anew."""
    meshdns = start_meshdns(
        {**config_for(upstream), "entries": ["entries"]},
        {"entries/a.yaml": entry("a.example", "192.0.2.1")},
    )
    folder = meshdns.directory / "entries"
    shutil.rmtree(folder)
    wait_for(lambda: reloads(meshdns) == 1, "the reload after the folder went")
    folder.mkdir()
    (folder / "a.yaml").write_text(entry("a.example", "192.0.2.8"))
    wait_for_answer(meshdns, "a.example", ["192.0.2.8"])
    (folder / "a.yaml").write_text(entry("a.example", "192.0.2.9"))
    wait_for_answer(meshdns, "a.example", ["192.0.2.9"])


def test_broken_document_is_left_out_and_the_rest_keeps_serving(start_meshdns, upstream) -> None:
    admin = free_port()
    meshdns = start_meshdns(
        config_for(upstream, admin={"port": admin}),
        {"se.yaml": entry("a.example", "192.0.2.1")},
    )
    path = meshdns.directory / "se.yaml"
    documents = [entry("a.example", "192.0.2.1"), entry("c.example", "192.0.2.3", "c")]
    path.write_text("---\n".join([*documents, BROKEN.replace("name: se", "name: b")]))
    wait_for(lambda: "Invalid, left out" in meshdns.log(), "the invalid document to be logged")
    wait_for_answer(meshdns, "c.example", ["192.0.2.3"])
    invalid = [line for line in meshdns.log().splitlines() if "Invalid, left out" in line]
    assert len(invalid) == 1
    assert f"{path}: document 2: spec.addresses[0]: 'not-an-ip' is not an IP address" in invalid[0]
    for _ in range(5):
        assert addresses(meshdns, "a.example") == ["192.0.2.1"]
    samples = parse(scrape(admin)[1])
    assert value(samples, "meshdns_invalid_documents") == 1
    assert value(samples, "meshdns_reloads_total", result="failure") == 0
    assert value(samples, "meshdns_last_reload_success") == 1
    assert scrape(admin, "/readyz") == (200, "ready\n")
    path.write_text(entry("a.example", "192.0.2.7"))
    wait_for_answer(meshdns, "a.example", ["192.0.2.7"])
    samples = parse(scrape(admin)[1])
    assert value(samples, "meshdns_invalid_documents") == 0
    assert value(samples, "meshdns_reloads_total", result="success") == 3


def test_sighup_reloads_at_once(start_meshdns, upstream) -> None:
    meshdns = start_meshdns(config_for(upstream), {"se.yaml": entry("a.example", "192.0.2.1")})
    meshdns.process.send_signal(signal.SIGHUP)
    wait_for(lambda: reloads(meshdns) == 1, "the SIGHUP reload")
    assert "SIGHUP: reloading" in meshdns.log()
    assert meshdns.process.poll() is None
    assert addresses(meshdns, "a.example") == ["192.0.2.1"]


FILLER = "---\n".join(
    entry(f"filler-{i}.example", f"198.18.{i // 250}.{i % 250 + 1}", f"f{i}") for i in range(300)
)


def test_reloads_under_query_load_lose_no_query(start_meshdns, upstream) -> None:
    """
    Ten reloads (each parsing 300 entries in a thread) while queries flow
    over UDP and TCP: every query is answered, from the old or the new table.
    """
    versions = ["192.0.2.1", "192.0.2.2"]
    files = {"filler.yaml": FILLER, "entries/se.yaml": entry("load.example", versions[0])}
    meshdns = start_meshdns({**config_for(upstream), "entries": ["filler.yaml", "entries"]}, files)
    assert addresses(meshdns, "load.example") == [versions[0]]
    stop = threading.Event()
    answered: list[str] = []
    failures: list[str] = []

    def load() -> None:
        deadline = time.monotonic() + 20  # bounded even if the main thread fails
        count = 0
        while not stop.is_set() and time.monotonic() < deadline:
            count += 1
            try:
                reply = meshdns.query("load.example", tcp=count % 4 == 0, timeout=2)
            except (dns.exception.DNSException, OSError) as e:
                failures.append(repr(e))
                continue
            found = [r.address for rrset in reply.answer for r in rrset]
            if reply.rcode() != dns.rcode.NOERROR or len(found) != 1 or found[0] not in versions:
                failures.append(str(reply))
            else:
                answered.append(found[0])

    worker = threading.Thread(target=load)
    worker.start()
    try:
        for i in range(1, 11):
            temporary = meshdns.directory / "entries" / ".se.tmp"
            temporary.write_text(entry("load.example", versions[i % 2]))
            os.replace(temporary, meshdns.directory / "entries" / "se.yaml")
            wait_for(lambda i=i: reloads(meshdns) >= i, f"reload {i}")
    finally:
        stop.set()
        worker.join(25)
    assert failures == []
    assert len(answered) > 100
    assert set(answered) == set(versions)
    assert addresses(meshdns, "load.example") == [versions[0]]
