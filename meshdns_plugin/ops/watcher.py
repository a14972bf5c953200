# -*- test-case-name: tests.unit.ops.test_watcher -*-
"""
Reloading name tables live: when (L{TableWatcher}: inotify events on the
directories that hold the entries, a fingerprint poll as the fallback, and
SIGHUP) and how (L{Reloader}: prepare in a thread, commit and swap in the
reactor thread). The watcher is the one owner of reloads: one runs at a
time, and the newest read wins.

Parsing is pure-Python YAML, far too slow to stall DNS answers with, so the
watcher's reloads run L{TableLoader.prepare} in the reactor's thread pool and
only L{TableLoader.commit} and the one-assignment table swap in the reactor
thread. The parsing thread shares the GIL, which the interpreter hands back
to the reactor thread every few milliseconds: queries keep being answered
during a reload, from the old table until the swap.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from twisted.application import service
from twisted.internet import defer, task, threads
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath

from meshdns_plugin.config import Config
from meshdns_plugin.dns.authority import MeshAuthority
from meshdns_plugin.mesh.loader import PreparedTable, TableLoader
from meshdns_plugin.ops.stats import ReloadStats
from meshdns_plugin.sources.files import ENTRY_FILE_SUFFIXES

try:
    from twisted.internet import inotify
except ImportError:  # not Linux: polling and SIGHUP only
    inotify = None  # type: ignore[assignment]

_log = Logger()

_T = TypeVar("_T")


def _in_reactor_thread_pool(reactor: Any) -> Callable[[Callable[[], _T]], defer.Deferred[_T]]:
    """Run functions in C{reactor}'s thread pool (stopped by the reactor at shutdown)."""

    def run(function: Callable[[], _T]) -> defer.Deferred[_T]:
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), function)

    return run


class Reloader:
    """
    Swaps freshly built tables into a L{MeshAuthority}: the one place that
    says what a reload does, whether it runs inline (L{reload}) or with the
    parsing in a thread (L{reloadInThread}).

    Invalid documents do not reject a reload: they are left out (one error
    line each, file, document and field), the rest is served, and an
    accepted reload logs one line with the entry, invalid-document, name and
    VIP counts and the time it took. An unexpected error (a bug, not bad
    input) is logged with its traceback and counted as a failed reload, so
    it leaves the current table serving. Either way C{stats}
    is updated, which is what C{/metrics} reports.
    """

    def __init__(
        self,
        loader: TableLoader,
        authority: MeshAuthority,
        stats: ReloadStats,
        reactor: Any = None,
        inThread: Callable[[Callable[[], PreparedTable]], defer.Deferred[PreparedTable]]
        | None = None,
    ) -> None:
        """
        @param inThread: runs a function in a thread and returns a Deferred of
            its result; the reactor's thread pool by default (tests pass a
            synchronous one).
        """
        self.loader = loader
        self.authority = authority
        self.stats = stats
        if inThread is None:
            if reactor is None:
                from twisted.internet import reactor
            inThread = _in_reactor_thread_pool(reactor)
        self._inThread = inThread

    def reload(self) -> bool:
        """
        Rebuild the table from the files in the calling thread and swap it in.

        @return: whether the new table is now serving.
        """
        started = time.monotonic()
        try:
            prepared = self.loader.prepare(*self.loader.snapshot())
        except Exception:
            return self._rejected(Failure())
        return self._accepted(prepared, started)

    def reloadInThread(self) -> defer.Deferred[bool]:
        """
        Rebuild the table in a thread, then swap it in the reactor thread.

        @return: a Deferred that fires with whether the new table is serving;
            it never fails.
        """
        started = time.monotonic()
        # The API's documents are taken here, in the reactor thread that
        # changes them; the files are read in the thread.
        snapshot = self.loader.snapshot()
        d = self._inThread(lambda: self.loader.prepare(*snapshot))
        d.addCallbacks(self._accepted, self._rejected, callbackArgs=(started,))
        return d

    def _accepted(self, prepared: PreparedTable, started: float) -> bool:
        table = self.loader.commit(prepared)
        self.authority.table = table
        self.stats.ok += 1
        self.stats.last_ok = True
        self.stats.last_time = time.time()
        _log.info(
            "Reloaded: {entries} entries, {names} mesh names, {vips} VIP hosts, "
            "{invalid} invalid documents left out, in {seconds:.3f} s",
            entries=prepared.entry_count,
            invalid=len(prepared.entries.problems),
            names=len(table),
            vips=len(table.vips),
            seconds=time.monotonic() - started,
        )
        return True

    def _rejected(self, reason: Failure) -> bool:
        _log.failure("Reload failed, keeping the current table", reason)
        self.stats.failed += 1
        self.stats.last_ok = False
        return False


#: A file's identity and version: device, inode, size, mtime and ctime (ns).
FileStamp = tuple[int, int, int, int, int]
#: Every entry file that a load would read, with its stamp (L{None}: missing).
Fingerprint = tuple[tuple[str, FileStamp | None], ...]


def _stamp(path: str) -> FileStamp | None:
    """
    The stamp of the file C{path} finally points at: C{os.stat} follows
    symlinks, so a Kubernetes ConfigMap's C{..data} swap changes it.
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def fingerprint(paths: Iterable[str]) -> Fingerprint:
    """
    Stamp every file that L{load_entries} would read for C{paths}: the same
    selection (entry-suffixed, non-hidden names directly inside a folder), so
    that files it ignores, such as the VIP state file or C{..data}, never
    trigger a reload.
    """
    stamps: list[tuple[str, FileStamp | None]] = []
    for path in paths:
        if not os.path.isdir(path):
            stamps.append((path, _stamp(path)))
            continue
        try:
            names = sorted(os.listdir(path))
        except OSError:
            stamps.append((path, None))
            continue
        for name in names:
            if not name.startswith(".") and name.endswith(ENTRY_FILE_SUFFIXES):
                child = os.path.join(path, name)
                stamps.append((child, _stamp(child)))
    return tuple(stamps)


def watch_targets(paths: Iterable[str]) -> set[str]:
    """
    The directories whose events can change what a load reads: the folder
    holding each path (renames and symlink swaps happen there, not on the
    file), each path that is a folder itself, and for a path whose folder
    does not exist yet, its nearest existing ancestor.
    """
    targets = set()
    for path in paths:
        if os.path.isdir(path):
            targets.add(path)
        parent = os.path.dirname(path)
        while not os.path.isdir(parent) and os.path.dirname(parent) != parent:
            parent = os.path.dirname(parent)
        targets.add(parent)
    return targets


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


class TableWatcher(service.Service):
    """
    Reloads the table when the entry files change, and on SIGHUP.

    Three triggers, all ending in L{check}:
      - inotify on the directories of L{watch_targets}, for an editor's save
        (C{IN_CLOSE_WRITE}), an atomic rename (C{IN_MOVED_TO}/C{IN_MOVED_FROM}),
        creation and deletion, and a ConfigMap's C{..data} symlink swap (a
        rename in the mounted folder). Events are debounced: the first one
        schedules a check C{debounce} seconds later, and the ones that follow
        fold into it;
      - a poll every C{poll_interval} seconds, for file systems without
        inotify events (and for anything inotify missed, such as a queue
        overflow);
      - SIGHUP, which reloads even if nothing seems to have changed.
    Events and polls reload only when the L{fingerprint} changed, so the
    state file being written, or an unrelated file in the same folder,
    costs a few C{stat} calls and no reload; a broken file is reported once,
    not at every poll. One reload runs at a time; a trigger during a reload
    runs one more check after it.

    Twisted's L{INotify} closes itself entirely when any watched directory is
    deleted (C{IN_DELETE_SELF}); the watcher then starts a new one and
    watches whatever exists at the next check.

    @ivar fingerprint: the files as they were when the last reload started.
    """

    def __init__(
        self,
        reloader: Reloader,
        paths: Iterable[str],
        poll_interval: float,
        debounce: float,
        reactor: Any = None,
        useInotify: bool = True,
        initial: Fingerprint | None = None,
    ) -> None:
        """
        @param paths: the configured entry files and folders.
        @param useInotify: whether to use inotify (off: polling and SIGHUP
            only); it is off anyway where inotify does not exist.
        @param initial: the fingerprint taken before the load that serves
            now, so that a change made during it is seen at the first check.
        """
        if reactor is None:
            from twisted.internet import reactor
        self.reloader = reloader
        self.paths = tuple(paths)
        self.poll_interval = poll_interval
        self.debounce = debounce
        self.fingerprint = fingerprint(self.paths) if initial is None else initial
        self._reactor = reactor
        self._useInotify = useInotify and inotify is not None
        self._notifier: Any = None
        self._watched: dict[str, tuple[int, int]] = {}
        self._pending: Any = None
        self._poll: task.LoopingCall | None = None
        self._reloading: defer.Deferred[bool] | None = None
        self._again = False
        self._forceAgain = False
        self._sighupInstalled = False
        self._previousSighup: Any = None

    @classmethod
    def forConfig(
        cls,
        config: Config,
        reloader: Reloader,
        reactor: Any = None,
        initial: Fingerprint | None = None,
    ) -> TableWatcher:
        """The watcher of C{config}'s entries, with its C{reload} settings."""
        return cls(
            reloader,
            config.entries,
            config.reload.poll_interval,
            config.reload.debounce,
            reactor,
            initial=initial,
        )

    def reloadNow(self) -> bool:
        """
        Reload at once, in the calling thread, as the watcher's own reloads
        do (one at a time, the fingerprint taken before reading). During a
        reload in a thread, nothing is read now: a forced reload follows it,
        so the newest read still wins.

        @return: whether a new table is serving now.
        """
        if self._reloading is not None:
            self._again = True
            self._forceAgain = True
            return False
        self.fingerprint = fingerprint(self.paths)
        return self.reloader.reload()

    def startService(self) -> None:
        super().startService()
        self._poll = task.LoopingCall(self._polled)
        self._poll.clock = self._reactor
        self._poll.start(self.poll_interval, now=False)
        if self._useInotify:
            self._watch()
        self._reactor.callWhenRunning(self._installSighup)

    def stopService(self) -> defer.Deferred[None]:
        """Stop every trigger; wait for a reload in progress to finish."""
        super().stopService()
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None
        if self._notifier is not None:
            self._notifier.loseConnection()
            self._notifier = None
        self._watched = {}
        if self._sighupInstalled:
            # None: the previous handler was not set from Python.
            previous = self._previousSighup
            signal.signal(signal.SIGHUP, signal.SIG_DFL if previous is None else previous)
            self._sighupInstalled = False
        if self._reloading is None:
            return defer.succeed(None)
        finished: defer.Deferred[None] = defer.Deferred()

        def reloaded(result: bool) -> bool:
            finished.callback(None)
            return result

        self._reloading.addBoth(reloaded)
        return finished

    def check(self, force: bool = False) -> None:
        """
        Reload in a thread if the files changed since the last reload (or
        always, with C{force}); during a reload, check again after it.
        """
        if self._reloading is not None:
            self._again = True
            self._forceAgain = self._forceAgain or force
            return
        current = fingerprint(self.paths)
        if current == self.fingerprint and not force:
            return
        # Taken before reading: a change made while parsing shows up as a
        # difference at the next check, never as a missed update.
        self.fingerprint = current
        self._reloading = self.reloader.reloadInThread()
        self._reloading.addBoth(self._reloaded)

    def _reloaded(self, result: bool) -> bool:
        self._reloading = None
        if self._again and self.running:
            force, self._again, self._forceAgain = self._forceAgain, False, False
            self.check(force)
        return result

    def _polled(self) -> None:
        try:
            if self._useInotify:
                self._watch()
            self.check()
        except Exception:
            # A LoopingCall stops at the first exception: keep polling.
            _log.failure("Checking the entry files failed")

    def _changed(self, watch: object, path: FilePath[bytes], mask: int) -> None:
        """An inotify event: check once the burst is over."""
        if self._pending is None and self.running:
            self._pending = self._reactor.callLater(self.debounce, self._settled)

    def _settled(self) -> None:
        self._pending = None
        if self._useInotify:
            self._watch()
        self.check()

    def _watch(self) -> None:
        """Watch every directory of L{watch_targets} that exists now."""
        if self._notifier is None or not self._notifier.connected:
            try:
                self._notifier = inotify.INotify(self._reactor)
            except inotify.INotifyError as e:
                _log.warn(
                    "inotify unavailable ({error}); checking entry files every {interval} s",
                    error=e,
                    interval=self.poll_interval,
                )
                self._useInotify = False
                return
            self._notifier.startReading()
            self._watched = {}
        mask = (
            inotify.IN_CLOSE_WRITE
            | inotify.IN_MOVED_TO
            | inotify.IN_MOVED_FROM
            | inotify.IN_CREATE
            | inotify.IN_DELETE
            | inotify.IN_MOVE_SELF
        )
        for directory in sorted(watch_targets(self.paths)):
            identity = _identity(directory)
            if identity is None or self._watched.get(directory) == identity:
                continue
            path = FilePath(directory)
            if directory in self._watched:
                # Replaced by another directory of the same name: the old
                # watch follows the old inode wherever it went.
                self._notifier.ignore(path)
            try:
                self._notifier.watch(path, mask=mask, callbacks=[self._changed])
            except inotify.INotifyError as e:
                _log.warn("Cannot watch {path} ({error}); polling it", path=directory, error=e)
                continue
            self._watched[directory] = identity

    def _installSighup(self) -> None:
        if not self.running:
            return
        if threading.current_thread() is not threading.main_thread():
            _log.warn("Not in the main thread: SIGHUP cannot trigger reloads")
            return
        self._previousSighup = signal.signal(signal.SIGHUP, self._sighup)
        self._sighupInstalled = True

    def _sighup(self, signum: int, frame: object) -> None:
        # A signal handler interrupts whatever the main thread was doing,
        # reactor internals included: hand over to the reactor loop.
        self._reactor.callFromThread(self._hangup)

    def _hangup(self) -> None:
        _log.info("SIGHUP: reloading the entries")
        self.check(force=True)
