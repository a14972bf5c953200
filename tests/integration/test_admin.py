"""
L{meshdns_plugin.ops.admin} with a real socket: readiness stays false when a listener's
port is taken.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.samples import ADDRESS_AND_AUTO as ENTRIES
from tests.support.scrape import get
from tests.support.servers import memory_mesh_service


def test_readyz_is_false_when_a_listener_cannot_bind(tmp_path: Path) -> None:
    import socket

    from meshdns_plugin.service import ListenError

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        mesh = memory_mesh_service(
            tmp_path, ENTRIES, listen={"port": taken.getsockname()[1]}, admin={"port": 15999}
        )
        with pytest.raises(ListenError, match=r"^cannot listen on 127\.0\.0\.1 port \d+ \(UDP\)"):
            mesh.startService()
    assert get(mesh, "/readyz")[0] == 503
