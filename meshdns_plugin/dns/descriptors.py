# -*- test-case-name: tests.unit.dns.test_descriptors -*-
"""
File descriptors: how many the process may open, and how many of them
client TCP connections may take.

Every forwarded question holds an upstream socket while it is asked, and the
entry watcher and the admin endpoint need descriptors too: a TCP flood that
took every descriptor would make forwarding fail with EMFILE. So the soft
limit is raised to the hard one at start (a default soft limit of 1024 is a
leftover of C{select}; meshdns uses epoll), and TCP connections are capped
below it, keeping a reserve of L{FIXED_RESERVE} plus one descriptor per
question C{upstream.max_concurrent} allows in flight.
"""

from __future__ import annotations

import resource

from twisted.logger import Logger

_log = Logger()

#: Descriptors kept for what is not a question nor a client connection: the
#: listening sockets, the entry watcher (inotify, the files it reads), the
#: admin endpoint and its clients, the log, the reply memo's epoll set.
FIXED_RESERVE = 64


def raise_open_files_limit() -> int:
    """
    Raise the soft RLIMIT_NOFILE to the hard limit; the soft limit in force
    after (unchanged if the kernel refuses, which is logged).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == hard:
        return soft if soft != resource.RLIM_INFINITY else hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as e:
        _log.warn(
            "Cannot raise the open files limit from {soft} to {hard}: {error}",
            soft=soft, hard=hard, error=e,
        )
        return soft
    return hard


def tcp_connection_cap(configured: int, open_files: int, max_concurrent: int) -> int:
    """
    The most TCP client connections to accept: C{configured}, but never so
    many that the reserve (L{FIXED_RESERVE} + C{max_concurrent}) is eaten
    into, and at least a quarter of C{open_files} (a small limit with a
    large C{max_concurrent} still serves some TCP).
    """
    room = open_files - FIXED_RESERVE - max_concurrent
    return max(1, min(configured, max(room, open_files // 4)))
