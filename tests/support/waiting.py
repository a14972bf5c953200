"""Waiting for a condition, bounded, instead of sleeping for a fixed time and hoping."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def wait_until(check: Callable[[], T], what: str, timeout: float = 10.0, every: float = 0.1) -> T:
    """
    Call C{check} every C{every} seconds until it returns something true, and
    return that; fail the test, naming C{what}, after C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)
