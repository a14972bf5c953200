"""
Fixtures for integration tests: a real fake upstream and real C{twistd meshdns}
processes, on loopback only (the helpers are in L{tests.support.processes}).

Every process a fixture starts is stopped by its PID at teardown (SIGTERM,
then SIGKILL after 5 s).

Fixtures:
  - C{upstream}, C{module_upstream}: a running L{UpstreamProcess};
  - C{upstream_factory}: C{(fail_mode=None) -> UpstreamProcess}, for fault tests;
  - C{start_meshdns}: C{(config, entries=None, extra_args=()) -> MeshdnsProcess}.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import (
    MeshdnsProcess,
    UpstreamProcess,
    launch_meshdns,
    start_upstream,
)


@pytest.fixture
def upstream_factory(tmp_path: Path) -> Iterator[Callable[..., UpstreamProcess]]:
    """C{(fail_mode=None) -> UpstreamProcess}: as many fake upstreams as a test needs."""
    started: list[UpstreamProcess] = []

    def start(fail_mode: str | None = None) -> UpstreamProcess:
        log_path = tmp_path / f"upstream-{len(started) + 1}.log"
        started.append(start_upstream(log_path, fail_mode))
        return started[-1]

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def upstream(upstream_factory: Callable[..., UpstreamProcess]) -> UpstreamProcess:
    """A well-behaved fake upstream, for this test alone."""
    return upstream_factory()


@pytest.fixture(scope="module")
def module_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamProcess]:
    """
    A well-behaved fake upstream shared by a module's tests: cheaper, but its
    counts accumulate, so call C{reset()} before counting.
    """
    process = start_upstream(tmp_path_factory.mktemp("upstream") / "upstream.log")
    yield process
    process.stop()


@pytest.fixture
def start_meshdns(tmp_path: Path) -> Iterator[Callable[..., MeshdnsProcess]]:
    """
    C{(config, entries=None, extra_args=(), open_files=None) -> MeshdnsProcess}:
    L{launch_meshdns} in C{tmp_path}; every process started is stopped at teardown.
    """
    started: list[MeshdnsProcess] = []

    def start(
        config: dict[str, Any],
        entries: dict[str, str] | None = None,
        extra_args: Sequence[str] = (),
        open_files: int | None = None,
    ) -> MeshdnsProcess:
        meshdns = launch_meshdns(tmp_path, config, entries, extra_args, open_files)
        started.append(meshdns)
        return meshdns

    yield start
    for meshdns in started:
        meshdns.stop()
