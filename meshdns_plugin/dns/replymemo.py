# -*- test-case-name: tests.unit.dns.test_replymemo -*-
"""
The reply memo: the replies the fast path gave to UDP query packets, kept
under the packet less its ID, so that the same packet again (a client asking
the same name, the same way) gets the same bytes without being parsed.

A reply depends only on the packet, the name table and, for a cache hit, the
cached reply's remaining TTLs; so a memo entry holds as long as the table is
the same object (the memo is emptied when another is swapped in) and, for a
cache hit, until its TTLs lose their next second. Under load most queries
are repeats, and this is what puts meshdns beside dnsmasq (bench/README.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from meshdns_plugin.dns.stats import ServerStats, UpstreamStats


@dataclass(slots=True)
class MemoEntry:
    """
    The reply to one UDP query packet, less its ID.

    @ivar tails: the reply without its first two bytes, one per rotation of
        a multi-address answer.
    @ivar counter: the C{ServerStats.queries} key the query is counted under.
    @ivar fresh_until: for a cache hit, when (on the cache's clock) its TTLs
        lose their next second and the entry is no longer good; L{None} for a
        mesh answer, good as long as the table.
    """

    tails: tuple[bytes, ...]
    counter: tuple[str, str]
    fresh_until: float | None = None


class ReplyMemo:
    """
    Replies keyed by the query packet less its ID, for one name table (the
    L{meshdns_plugin.dns.fastpath.FastPath} that fills it empties it when
    the table is replaced).

    A reply given from the memo is counted as the fast path counts it. A
    cache hit served from the memo does not touch the cache's LRU order: the
    entry is renewed, and the cache touched, once a second.
    """

    #: Entries kept; when full, the memo is emptied and fills up again.
    MAX_ENTRIES = 10000

    def __init__(
        self,
        clock: Callable[[], float],
        stats: ServerStats,
        upstream: UpstreamStats | None,
        rotation: Iterator[int],
    ) -> None:
        """
        @param clock: the cache's clock, against which C{fresh_until} is read.
        @param stats: where replies are counted.
        @param upstream: where cache hits are counted (L{None}: no cache).
        @param rotation: the address-rotation counter the mesh answers share.
        """
        self._clock = clock
        self._queries = stats.queries
        self._upstream = upstream
        self._rotation = rotation
        self._entries: dict[bytes, MemoEntry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget every reply (the table they came from is gone)."""
        self._entries.clear()

    def reply(self, data: bytes) -> bytes | None:
        """
        The remembered reply to the query packet C{data}, with its ID, if
        there is one still good; L{None} otherwise.
        """
        entry = self._entries.get(data[2:])
        if entry is None:
            return None
        if entry.fresh_until is not None:
            if self._clock() >= entry.fresh_until:
                return None
            self._upstream.cache_hits += 1  # type: ignore[union-attr]
        self._queries[entry.counter] += 1
        tails = entry.tails
        if len(tails) == 1:
            return data[:2] + tails[0]
        return data[:2] + tails[next(self._rotation) % len(tails)]

    def remember(self, data: bytes, entry: MemoEntry) -> None:
        """Keep C{entry} as the reply to the query packet C{data}."""
        entries = self._entries
        if len(entries) >= self.MAX_ENTRIES:
            entries.clear()
        entries[data[2:]] = entry
