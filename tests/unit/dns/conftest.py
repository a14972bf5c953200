"""
Fixtures of the forwarder's unit tests: a fake reactor with datagram
sockets, and the sockets the upstream client makes on it.
"""

from __future__ import annotations

import pytest

from tests.support.servers import FakeDatagramSockets, UDPReactor


@pytest.fixture
def reactor() -> UDPReactor:
    return UDPReactor()


@pytest.fixture
def sockets(reactor: UDPReactor) -> FakeDatagramSockets:
    return FakeDatagramSockets(reactor)
