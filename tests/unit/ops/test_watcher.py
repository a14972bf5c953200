"""
Tests for L{meshdns_plugin.ops.watcher}: loading in two steps, the reloader's
accept/reject rules, the fingerprint, and the watcher's triggers on a fake
clock (inotify itself is exercised against the real process in
C{tests.integration.test_live_reload}).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from pathlib import Path

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs

from meshdns_plugin.config import Config, parse_config
from meshdns_plugin.dns.authority import MeshAuthority
from meshdns_plugin.mesh.loader import PreparedTable, TableLoader
from meshdns_plugin.ops.stats import ReloadStats
from meshdns_plugin.ops.watcher import Reloader, TableWatcher, fingerprint, watch_targets
from meshdns_plugin.sources.files import load_entries
from tests.support.samples import BROKEN, entry


def make_config(tmp_path: Path, **mesh: object) -> Config:
    return parse_config(
        {"entries": ["entries"], "mesh": {"search": [], **mesh}}, "meshdns.yaml", str(tmp_path)
    )


def write_entries(tmp_path: Path, text: str, name: str = "se.yaml") -> Path:
    folder = tmp_path / "entries"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def answers(authority: MeshAuthority, name: str) -> tuple[str, ...]:
    resolution = authority.table.resolve(name.encode())
    return () if resolution is None else resolution.records.ipv4


def synchronous(function):
    """An C{inThread} that runs in the calling thread (tests only)."""
    return defer.maybeDeferred(function)


class Rig:
    """A loader, an authority and a reloader over C{tmp_path/entries}."""

    def __init__(self, tmp_path: Path, inThread=synchronous, **mesh: object) -> None:
        self.config = make_config(tmp_path, **mesh)
        self.loader = TableLoader(self.config, load_entries)
        self.authority = MeshAuthority(self.loader.load())
        self.stats = ReloadStats(ok=1)
        self.reloader = Reloader(self.loader, self.authority, self.stats, inThread=inThread)


# --- TableLoader ---------------------------------------------------------------


def test_prepare_changes_nothing_commit_writes_state(tmp_path: Path) -> None:
    """prepare() is what `meshdns check` runs: it must not write the state file."""
    write_entries(tmp_path, entry("auto.example"))
    state = tmp_path / "state.json"
    loader = TableLoader(make_config(tmp_path, state_file=str(state)), load_entries)
    prepared = loader.prepare()
    assert isinstance(prepared, PreparedTable)
    assert not state.exists()
    assert prepared.entry_count == 1
    assert "auto.example" in prepared.allocation.vips
    table = loader.commit(prepared)
    assert table is prepared.table
    saved = json.loads(state.read_text())["hosts"]
    assert saved["auto.example"]["ipv4"] == prepared.allocation.vips["auto.example"].ipv4


def test_vips_survive_reloads_that_add_hosts(tmp_path: Path) -> None:
    write_entries(tmp_path, entry("first.example"))
    loader = TableLoader(make_config(tmp_path), load_entries)
    before = loader.load().vips["first.example"]
    write_entries(tmp_path, entry("second.example", name="other"), "other.yaml")
    after = loader.load().vips
    assert after["first.example"] == before
    assert set(after) == {"first.example", "second.example"}


def test_invalid_documents_keep_remembered_vips(tmp_path: Path) -> None:
    write_entries(tmp_path, entry("first.example"))
    loader = TableLoader(make_config(tmp_path), load_entries)
    vip = loader.load().vips["first.example"]
    write_entries(tmp_path, BROKEN, "broken.yaml")
    assert loader.load().vips["first.example"] == vip
    assert [p.file for p in loader.problems] == [str(tmp_path / "entries" / "broken.yaml")]
    os.remove(tmp_path / "entries" / "broken.yaml")
    assert loader.load().vips["first.example"] == vip
    assert loader.problems == ()


def test_unreadable_state_file_is_an_error_line_not_a_failure(tmp_path: Path) -> None:
    write_entries(tmp_path, entry("auto.example"))
    state = tmp_path / "state.json"
    state.write_text("{not json")
    prepared = TableLoader(make_config(tmp_path, state_file=str(state)), load_entries).prepare()
    assert len(prepared.errors) == 1
    assert "allocating afresh" in prepared.errors[0]
    assert "auto.example" in prepared.table.vips


# --- Reloader ------------------------------------------------------------------


def test_reload_swaps_table_and_logs_one_line(tmp_path: Path) -> None:
    path = write_entries(tmp_path, entry("a.example", "192.0.2.1"))
    rig = Rig(tmp_path)
    path.write_text(entry("a.example", "192.0.2.2"))
    with capturedLogs() as events:
        assert rig.reloader.reload() is True
    assert answers(rig.authority, "a.example") == ("192.0.2.2",)
    assert (rig.stats.ok, rig.stats.failed, rig.stats.last_ok) == (2, 0, True)
    reloaded = [e for e in events if e["log_format"].startswith("Reloaded")]
    assert len(reloaded) == 1
    assert (reloaded[0]["entries"], reloaded[0]["names"]) == (1, 1)


def test_invalid_documents_are_left_out_and_logged_one_line_each(tmp_path: Path) -> None:
    write_entries(tmp_path, entry("a.example", "192.0.2.1"))
    rig = Rig(tmp_path)
    write_entries(
        tmp_path,
        BROKEN
        + "---\n"
        + entry("c.example", "bad", name="c")
        + "---\n"
        + entry("d.example", "192.0.2.4", name="d"),
        "bad.yaml",
    )
    with capturedLogs() as events:
        assert rig.reloader.reload() is True
    assert answers(rig.authority, "a.example") == ("192.0.2.1",)
    assert answers(rig.authority, "d.example") == ("192.0.2.4",)
    assert answers(rig.authority, "c.example") == ()
    assert (rig.stats.ok, rig.stats.failed, rig.stats.last_ok) == (2, 0, True)
    problems = [str(e["problem"]) for e in events if "problem" in e]
    assert len(problems) == 2
    assert all("bad.yaml" in p and "spec.addresses[0]" in p for p in problems)
    assert "document 0" in problems[0] and "document 1" in problems[1]


def test_last_valid_version_keeps_serving_until_fixed_or_removed(tmp_path: Path) -> None:
    path = write_entries(tmp_path, entry("a.example", "192.0.2.1", name="a"))
    other = write_entries(tmp_path, entry("b.example", "192.0.2.2", name="b"), "b.yaml")
    rig = Rig(tmp_path)
    # The same document (kind, namespace, name), now invalid: its old version serves.
    path.write_text(entry("a.example", "not-an-ip", name="a"))
    with capturedLogs() as events:
        assert rig.reloader.reload()
    assert answers(rig.authority, "a.example") == ("192.0.2.1",)
    assert any("last valid version" in str(e.get("note", "")) for e in events)
    # Still broken at the next reload, and another file changes: still served.
    other.write_text(entry("b.example", "192.0.2.3", name="b"))
    assert rig.reloader.reload()
    assert answers(rig.authority, "a.example") == ("192.0.2.1",)
    assert answers(rig.authority, "b.example") == ("192.0.2.3",)
    # Fixed: the new version serves.
    path.write_text(entry("a.example", "192.0.2.9", name="a"))
    assert rig.reloader.reload()
    assert answers(rig.authority, "a.example") == ("192.0.2.9",)
    # Broken again, then removed: gone.
    path.write_text(entry("a.example", "nope", name="a"))
    assert rig.reloader.reload()
    assert answers(rig.authority, "a.example") == ("192.0.2.9",)
    path.unlink()
    assert rig.reloader.reload()
    assert answers(rig.authority, "a.example") == ()


def test_a_file_that_stops_parsing_keeps_serving_what_it_served(tmp_path: Path) -> None:
    path = write_entries(
        tmp_path, entry("a.example", "192.0.2.1", name="a") + "---\n" + entry("e.example", name="e")
    )
    rig = Rig(tmp_path)
    vip = rig.authority.table.vips["e.example"]
    path.write_text("kind: [\n" + path.read_text())
    assert rig.reloader.reload()
    assert answers(rig.authority, "a.example") == ("192.0.2.1",)
    assert rig.authority.table.vips["e.example"] == vip
    assert [(p.document, p.field) for p in rig.loader.problems] == [(None, None)]


def test_reload_in_thread_prepares_in_thread_and_swaps_after(tmp_path: Path) -> None:
    path = write_entries(tmp_path, entry("a.example", "192.0.2.1"))
    started: list[defer.Deferred] = []
    jobs = []

    def inThread(function):
        jobs.append(function)
        started.append(defer.Deferred())
        return started[-1]

    rig = Rig(tmp_path, inThread=inThread)
    path.write_text(entry("a.example", "192.0.2.2"))
    results = []
    rig.reloader.reloadInThread().addCallback(results.append)
    assert answers(rig.authority, "a.example") == ("192.0.2.1",)  # old table until the swap
    started[0].callback(jobs[0]())
    assert results == [True]
    assert answers(rig.authority, "a.example") == ("192.0.2.2",)


def test_unexpected_error_in_thread_is_a_failed_reload(tmp_path: Path) -> None:
    write_entries(tmp_path, entry("a.example", "192.0.2.1"))
    rig = Rig(tmp_path, inThread=lambda function: defer.fail(RuntimeError("boom")))
    results = []
    with capturedLogs() as events:
        rig.reloader.reloadInThread().addCallback(results.append)
    assert results == [False]
    assert rig.stats.failed == 1
    assert any("log_failure" in e for e in events)


# --- fingerprint and watch targets ----------------------------------------------


def test_fingerprint_sees_edits_renames_and_deletions(tmp_path: Path) -> None:
    path = write_entries(tmp_path, entry("a.example", "192.0.2.1"))
    paths = [str(tmp_path / "entries")]
    first = fingerprint(paths)
    assert first == fingerprint(paths)
    path.write_text(entry("a.example", "192.0.2.22"))
    second = fingerprint(paths)
    assert second != first
    replacement = tmp_path / "entries" / ".se.yaml.tmp"
    replacement.write_text(entry("a.example", "192.0.2.23"))
    assert fingerprint(paths) == second  # hidden files are not entries
    os.replace(replacement, path)
    third = fingerprint(paths)
    assert third != second
    path.unlink()
    assert fingerprint(paths) == ()


def test_fingerprint_ignores_what_a_load_ignores(tmp_path: Path) -> None:
    write_entries(tmp_path, entry("a.example", "192.0.2.1"))
    paths = [str(tmp_path / "entries")]
    before = fingerprint(paths)
    (tmp_path / "entries" / "notes.txt").write_text("x")
    (tmp_path / "entries" / "..data_tmp").write_text("x")
    assert fingerprint(paths) == before


def test_fingerprint_follows_configmap_symlinks(tmp_path: Path) -> None:
    """A ConfigMap swap replaces ..data, never the visible symlink itself."""
    folder = tmp_path / "cm"
    (folder / "..v1").mkdir(parents=True)
    (folder / "..v1" / "se.yaml").write_text(entry("a.example", "192.0.2.1"))
    (folder / "..data").symlink_to("..v1")
    (folder / "se.yaml").symlink_to("..data/se.yaml")
    before = fingerprint([str(folder)])
    (folder / "..v2").mkdir()
    (folder / "..v2" / "se.yaml").write_text(entry("a.example", "192.0.2.2"))
    (folder / "..data_tmp").symlink_to("..v2")
    os.replace(folder / "..data_tmp", folder / "..data")
    assert fingerprint([str(folder)]) != before


def test_fingerprint_of_missing_paths(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere.yaml")
    assert fingerprint([missing]) == ((missing, None),)


def test_watch_targets(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "file.yaml").write_text("")
    targets = watch_targets(
        [
            str(tmp_path / "folder"),
            str(tmp_path / "file.yaml"),
            str(tmp_path / "not" / "yet" / "there.yaml"),
        ]
    )
    assert targets == {str(tmp_path / "folder"), str(tmp_path)}


# --- TableWatcher ----------------------------------------------------------------


class SignalReactor(MemoryReactorClock):
    """A fake reactor that also takes calls from other threads (and signal handlers)."""

    def __init__(self) -> None:
        super().__init__()
        self.fromThreads: list = []

    def callFromThread(self, function, *args, **kwargs) -> None:
        self.fromThreads.append((function, args, kwargs))


def make_watcher(rig: Rig, reactor: MemoryReactorClock, **kwargs) -> TableWatcher:
    watcher = TableWatcher(
        rig.reloader,
        rig.config.entries,
        poll_interval=2,
        debounce=0.2,
        reactor=reactor,
        useInotify=False,
        **kwargs,
    )
    watcher.startService()
    return watcher


def test_poll_reloads_only_when_files_changed(tmp_path: Path) -> None:
    path = write_entries(tmp_path, entry("a.example", "192.0.2.1"))
    rig = Rig(tmp_path)
    clock = MemoryReactorClock()
    make_watcher(rig, clock)
    clock.advance(2)
    clock.advance(2)
    assert rig.stats.ok == 1  # nothing changed: no reload
    path.write_text(entry("a.example", "192.0.2.2"))
    clock.advance(2)
    assert rig.stats.ok == 2
    assert answers(rig.authority, "a.example") == ("192.0.2.2",)


def test_broken_file_is_reported_once_then_fix_applies(tmp_path: Path) -> None:
    path = write_entries(tmp_path, entry("a.example", "192.0.2.1"))
    rig = Rig(tmp_path)
    clock = MemoryReactorClock()
    make_watcher(rig, clock)
    path.write_text(BROKEN)
    with capturedLogs() as events:
        for _ in range(5):
            clock.advance(2)
    assert len([e for e in events if "problem" in e]) == 1
    assert (rig.stats.ok, rig.stats.failed) == (2, 0)
    assert answers(rig.authority, "a.example") == ("192.0.2.1",)
    path.write_text(entry("a.example", "192.0.2.3"))
    clock.advance(2)
    assert (rig.stats.ok, rig.stats.last_ok) == (3, True)
    assert answers(rig.authority, "a.example") == ("192.0.2.3",)


def test_deleting_every_file_is_an_empty_table(tmp_path: Path) -> None:
    path = write_entries(tmp_path, entry("a.example", "192.0.2.1"))
    rig = Rig(tmp_path)
    clock = MemoryReactorClock()
    make_watcher(rig, clock)
    path.unlink()
    clock.advance(2)
    assert (rig.stats.ok, rig.stats.failed) == (2, 0)
    assert len(rig.authority.table) == 0


def test_events_are_debounced_into_one_reload(tmp_path: Path) -> None:
    path = write_entries(tmp_path, entry("a.example", "192.0.2.1"))
    rig = Rig(tmp_path)
    clock = MemoryReactorClock()
    watcher = make_watcher(rig, clock)
    path.write_text(entry("a.example", "192.0.2.2"))
    for _ in range(10):
        watcher._changed(None, None, 0)
    assert len(clock.getDelayedCalls()) == 2  # the poll, and one pending check
    clock.advance(0.2)
    assert rig.stats.ok == 2
    assert answers(rig.authority, "a.example") == ("192.0.2.2",)


class HeldThreads(list):
    """
    An C{inThread} whose work waits: each call is kept as C{(Deferred,
    function)}, for the test to run and fire when it wants.
    """

    def __call__(self, function):
        self.append((defer.Deferred(), function))
        return self[-1][0]


def test_change_during_reload_is_checked_after_it(tmp_path: Path) -> None:
    path = write_entries(tmp_path, entry("a.example", "192.0.2.1"))
    pending = HeldThreads()
    rig = Rig(tmp_path, inThread=pending)
    clock = MemoryReactorClock()
    watcher = make_watcher(rig, clock)
    path.write_text(entry("a.example", "192.0.2.2"))
    watcher.check()
    path.write_text(entry("a.example", "192.0.2.33"))
    watcher.check()  # during the first reload: folded into one more check
    assert len(pending) == 1
    d, function = pending.pop()
    d.callback(function())
    assert len(pending) == 1  # the second change started a second reload
    d, function = pending.pop()
    d.callback(function())
    assert answers(rig.authority, "a.example") == ("192.0.2.33",)
    assert rig.stats.ok == 3


def test_sighup_handler_reloads_even_without_change(tmp_path: Path) -> None:
    write_entries(tmp_path, entry("a.example", "192.0.2.1"))
    rig = Rig(tmp_path)
    reactor = SignalReactor()
    previous = signal.getsignal(signal.SIGHUP)
    watcher = make_watcher(rig, reactor)
    reactor.run()  # runs the callWhenRunning hooks: installs the handler
    try:
        assert signal.getsignal(signal.SIGHUP) == watcher._sighup
        os.kill(os.getpid(), signal.SIGHUP)
        assert len(reactor.fromThreads) == 1
        function, args, kwargs = reactor.fromThreads.pop()
        function(*args, **kwargs)
        assert rig.stats.ok == 2
    finally:
        watcher.stopService()
    assert signal.getsignal(signal.SIGHUP) == previous


def test_stop_waits_for_reload_in_progress_and_stops_polling(tmp_path: Path) -> None:
    path = write_entries(tmp_path, entry("a.example", "192.0.2.1"))
    pending: list[defer.Deferred] = []
    rig = Rig(tmp_path, inThread=lambda function: pending.append(defer.Deferred()) or pending[-1])
    clock = MemoryReactorClock()
    watcher = make_watcher(rig, clock)
    path.write_text(entry("a.example", "192.0.2.2"))
    watcher.check()
    stopped = []
    watcher.stopService().addCallback(stopped.append)
    assert stopped == []
    pending[0].callback(rig.loader.prepare())
    assert stopped == [None]
    assert clock.getDelayedCalls() == []


def test_reload_now_during_a_threaded_reload_follows_it(tmp_path: Path) -> None:
    """One owner: a direct reload never races the watcher's; the newest read wins."""
    path = write_entries(tmp_path, entry("a.example", "192.0.2.1"))
    pending = HeldThreads()
    rig = Rig(tmp_path, inThread=pending)
    watcher = make_watcher(rig, MemoryReactorClock())
    path.write_text(entry("a.example", "192.0.2.2"))
    watcher.check()
    d, function = pending.pop()
    prepared = function()  # read 192.0.2.2, not swapped in yet
    path.write_text(entry("a.example", "192.0.2.3"))
    assert watcher.reloadNow() is False  # not now: a reload is running
    d.callback(prepared)
    (d, function), = pending  # the forced reload that follows it
    d.callback(function())
    assert answers(rig.authority, "a.example") == ("192.0.2.3",)


def test_a_change_before_the_watcher_starts_is_seen(tmp_path: Path) -> None:
    path = write_entries(tmp_path, entry("a.example", "192.0.2.1"))
    before = fingerprint([str(tmp_path / "entries")])
    rig = Rig(tmp_path)  # the first load
    path.write_text(entry("a.example", "192.0.2.9"))
    clock = MemoryReactorClock()
    watcher = make_watcher(rig, clock, initial=before)
    clock.advance(2)  # the first poll
    assert answers(rig.authority, "a.example") == ("192.0.2.9",)
    watcher.stopService()


def test_reloads_repeat_no_problem_and_warn_of_missing_paths(tmp_path: Path) -> None:
    write_entries(tmp_path, entry("a.example", "bad"))
    config = make_config(tmp_path)
    config = dataclasses.replace(config, entries=(*config.entries, str(tmp_path / "gone")))
    loader = TableLoader(config, load_entries)
    with capturedLogs() as events:
        loader.load()
        loader.load()
    problems = [e for e in events if "problem" in e]
    missing = [e for e in events if e.get("path") == str(tmp_path / "gone")]
    assert len(problems) == 1  # reported once, not at every reload
    assert len(missing) == 2 and all(e["log_level"].name == "warn" for e in missing)
