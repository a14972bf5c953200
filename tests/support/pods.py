"""
What a test of a pod's network namespace needs besides the namespace itself
(L{tests.support.netns}): Istio's proxy user (uid 1337) and a folder it can
write, the C{meshdns} command, and waits for the processes started there.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.required import unavailable

#: Istio's proxy uid and gid, and capture's default exclusion.
PROXY_ID = 1337
#: The user made for uid 1337 when the machine has none (twistd --uid needs one).
TEST_USER = "meshdns-test"
#: Serialises the runs that may create and remove L{TEST_USER}.
USER_LOCK = Path(tempfile.gettempdir()) / "meshdns-test-uid-1337.lock"


#: The C{meshdns} command, run with this interpreter.
MESHDNS = [
    sys.executable, "-c", "import sys; from meshdns_plugin.cli import main; sys.exit(main())"
]
START_TIMEOUT = 15.0


@contextmanager
def proxy_user() -> Iterator[None]:
    """
    A passwd entry for uid 1337 while the test runs: the existing one, or
    L{TEST_USER}, made now and removed afterwards.
    """
    with open(USER_LOCK, "w") as lock:
        deadline = time.monotonic() + 60
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    unavailable(f"{USER_LOCK} stayed locked for 60 s")
                time.sleep(0.1)
        try:
            pwd.getpwuid(PROXY_ID)
            created = False
        except KeyError:
            if shutil.which("useradd") is None:
                unavailable(f"no user has uid {PROXY_ID}, and there is no useradd to add one")
            subprocess.run(
                ["useradd", "--no-create-home", "--no-user-group", "--shell", "/usr/sbin/nologin",
                 "--uid", str(PROXY_ID), TEST_USER],
                check=True, capture_output=True,
            )
            created = True
        try:
            yield
        finally:
            if created:
                subprocess.run(["userdel", TEST_USER], check=False, capture_output=True)


@contextmanager
def proxy_directory() -> Iterator[Path]:
    """
    A folder for meshdns's files that uid 1337 can read and write (pytest's
    own temporary folders are root's, mode 0700).
    """
    directory = Path(tempfile.mkdtemp(prefix="meshdns-walkthrough-"))
    try:
        directory.chmod(0o755)
        os.chown(directory, PROXY_ID, PROXY_ID)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def started(process: subprocess.Popen[str], prefix: str) -> str:
    """The first stdout line of C{process}, which must start with C{prefix}."""
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith(prefix):
        process.kill()
        pytest.fail(f"expected {prefix!r}, got {line!r}; stderr: {process.communicate()[1]}")
    return line


def wait_for_meshdns(process: subprocess.Popen[str], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if log.exists() and "MeshDNSServerFactory starting on" in log.read_text():
            return
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    pytest.fail(f"meshdns did not start:\n{log.read_text() if log.exists() else ''}"
                f"{process.communicate()[1]}")


def uid_of(pid: int) -> int:
    """The real uid of process C{pid}."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


NAMESERVER = ("127.0.0.53", 53)


REFUSAL = (
    "DNS capture is installed and excludes uid 1337 and gid 1337, but meshdns runs as "
    "uid {uid} gid {gid}: its upstream queries to 127.0.0.53 port 53 would be redirected to "
    "port 15053, back to meshdns; run it with twistd --uid 1337 --gid 1337, or exclude "
    "uid {uid} with meshdns capture install --proxy-uid {uid}"
)
