"""
The handover's socket rules, on real loopback sockets in this process: a
second socket binds beside the first, the steering program sends every new
datagram and connection to the socket of the group at the index it returns
(Linux's behaviour, documented in socket(7) for C{SO_ATTACH_REUSEPORT_CBPF},
checked here rather than assumed): the oldest one, then the newest, and the
first takes everything again once the newest closes, as a predecessor of a
later successor; and L{has_successor} sees the other socket.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import pytest

from meshdns_plugin.dns.handover import NEWEST, OLDEST, has_successor, share_port, steer

LOOPBACK = "127.0.0.1"
#: Datagrams and connections sent in each check: with Linux's hash over 16
#: client ports, two sockets without steering would both get some.
SENT = 16


def bound(kind: int, port: int, steered: bool = True) -> socket.socket:
    sock = socket.socket(socket.AF_INET, kind)
    share_port(sock)
    sock.bind((LOOPBACK, port))
    if kind == socket.SOCK_STREAM:
        sock.listen(64)
    if steered:
        assert steer(sock, NEWEST)
    sock.setblocking(False)
    return sock


@contextlib.contextmanager
def group(kind: int, steered: bool = True) -> Iterator[tuple[socket.socket, socket.socket]]:
    """The first socket, bound on a free port, and a second beside it."""
    first = bound(kind, 0, steered)
    second = bound(kind, first.getsockname()[1], steered)
    try:
        yield first, second
    finally:
        first.close()
        second.close()


def send_datagrams(port: int) -> None:
    for index in range(SENT):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.sendto(b"%d" % index, (LOOPBACK, port))


def received(sock: socket.socket) -> int:
    """Datagrams (UDP) or connections (TCP) queued on C{sock}, all taken."""
    count = 0
    while True:
        try:
            if sock.type == socket.SOCK_STREAM:
                sock.accept()[0].close()
            else:
                sock.recv(512)
        except BlockingIOError:
            return count
        count += 1


def connect(port: int) -> list[socket.socket]:
    return [socket.create_connection((LOOPBACK, port), timeout=2) for _ in range(SENT)]


def test_udp_goes_to_the_oldest_then_the_newest() -> None:
    with group(socket.SOCK_DGRAM) as (first, second):
        port = first.getsockname()[1]
        assert steer(second, OLDEST)
        send_datagrams(port)
        assert (received(first), received(second)) == (SENT, 0)
        assert steer(second, NEWEST)
        send_datagrams(port)
        assert (received(first), received(second)) == (0, SENT)
        second.close()
        send_datagrams(port)
        assert received(first) == SENT
        # The next successor.
        third = bound(socket.SOCK_DGRAM, port)
        with third:
            send_datagrams(port)
            assert (received(first), received(third)) == (0, SENT)


def test_udp_without_steering_spreads() -> None:
    """The control: without the program both sockets get datagrams."""
    with group(socket.SOCK_DGRAM, steered=False) as (first, second):
        send_datagrams(first.getsockname()[1])
        assert received(first) > 0 and received(second) > 0


def test_tcp_goes_to_the_oldest_then_the_newest() -> None:
    with group(socket.SOCK_STREAM) as (first, second):
        port = first.getsockname()[1]
        assert steer(second, OLDEST)
        clients = connect(port)
        assert (received(first), received(second)) == (SENT, 0)
        assert steer(second, NEWEST)
        clients += connect(port)
        assert (received(first), received(second)) == (0, SENT)
        second.close()
        clients += connect(port)
        assert received(first) == SENT
        for client in clients:
            client.close()


@pytest.mark.parametrize("kind", [socket.SOCK_DGRAM, socket.SOCK_STREAM])
def test_has_successor(kind: int) -> None:
    with group(kind) as (first, second):
        assert has_successor(first) and has_successor(second)
        second.close()
        assert not has_successor(first)


def test_accepted_connection_is_no_successor() -> None:
    """A connection accepted on the port shares its address, but is not a listener."""
    listener = bound(socket.SOCK_STREAM, 0)
    with listener, socket.create_connection(listener.getsockname(), timeout=2):
        listener.setblocking(True)
        accepted, _ = listener.accept()
        with accepted:
            assert not has_successor(listener)


def test_not_shared_without_reuseport() -> None:
    """A process that did not ask to share the port keeps it (startup's EADDRINUSE)."""
    first = bound(socket.SOCK_DGRAM, 0)
    with first, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        with pytest.raises(OSError, match="Address already in use"):
            other.bind(first.getsockname())
