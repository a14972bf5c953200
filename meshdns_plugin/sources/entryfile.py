# -*- test-case-name: tests.unit.sources.test_entryfile,tests.integration.test_entryfile -*-
"""
One entry file -> a L{ReadResult}: here, or, for a large file, in a child
process, so that the peak of parsing it never stays in the server.

A parsed YAML tree costs about forty times its text (C{kubectl get -o yaml}
of 20,000 Services and their EndpointSlices: 38 MB of text, 1.5 GB of
nodes and dicts), and a Python process keeps most of what it once held.
What stays is the compact model, a few percent of it. So a file of
L{APART_BYTES} or more is read by C{python -m meshdns_plugin.sources.entryfile}
(started with C{exec}, never a bare C{fork} of the threaded server), which
sends back the model objects, pickled, and exits: the peak lives and dies
there. The child also turns off the cyclic garbage collector, which would
otherwise walk the millions of young objects of the parse again and again
(half the time of a large file); nothing it builds is cyclic, and its
memory goes back to the system as a whole when it exits.
"""

from __future__ import annotations

import gc
import os
import pickle
import subprocess
import sys

import yaml

import meshdns_plugin
from meshdns_plugin.mesh import yamltext
from meshdns_plugin.mesh.kinds import ReadResult, read_object
from meshdns_plugin.mesh.model import Problem

#: Files at least this large are parsed in a child process.
APART_BYTES = 4 * 1024 * 1024
#: A child that has not answered in this many seconds is given up on (a file
#: of L{yamltext.MAX_FILE_SIZE} takes about twenty).
CHILD_TIMEOUT = 300


def read_text(text: str, file: str) -> ReadResult:
    """Read every document of one file's text."""
    result = ReadResult()
    index = 0
    try:
        for index, raw in enumerate(yamltext.load_all(text)):  # noqa: B007
            read = read_object(raw, file, index)
            result.objects.extend(read.objects)
            result.notes.extend(read.notes)
            result.problems.extend(read.problems)
    except yaml.YAMLError as e:
        result.problems.append(Problem(file, None, None, yamltext.describe(e, text)))
    return result


def read_here(path: str, max_size: int) -> ReadResult:
    """Read one entry file in this process."""
    try:
        text = yamltext.read_text(path, max_size)
    except OSError as e:
        return ReadResult(problems=[Problem(path, None, None, f"cannot read: {e.strerror}")])
    except ValueError as e:
        return ReadResult(problems=[Problem(path, None, None, str(e))])
    return read_text(text, path)


def read_file(path: str, max_size: int) -> ReadResult:
    """
    Read one entry file: in a child process if it is large (L{APART_BYTES})
    and not over C{max_size} (a file over it is one problem, found without
    reading it), else here. The result is the same either way.
    """
    try:
        size = os.stat(path).st_size
    except OSError:
        size = 0
    if not APART_BYTES <= size <= max_size:
        return read_here(path, max_size)
    return read_apart(path, max_size)


def read_apart(path: str, max_size: int) -> ReadResult:
    """
    Read one entry file in a child process running this module.

    The child imports the same C{meshdns_plugin} as this process (its folder
    goes first on C{PYTHONPATH}, and C{-P} keeps the working directory off
    C{sys.path}). A child that cannot start, fails or answers nonsense makes
    the file one problem, which keeps its documents' last valid versions.
    """
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(meshdns_plugin.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    command = [sys.executable, "-P", "-m", __name__, path, str(max_size)]
    try:
        child = subprocess.run(
            command, env=env, capture_output=True, timeout=CHILD_TIMEOUT, check=False
        )
    except (OSError, subprocess.SubprocessError) as e:
        return _failed(path, f"cannot start a process to parse it: {e}")
    if child.returncode != 0:
        last = (child.stderr.decode("utf-8", "replace").strip().splitlines() or ["no message"])[-1]
        return _failed(path, f"its parsing process failed (exit {child.returncode}: {last})")
    try:
        result = pickle.loads(child.stdout)
    except Exception as e:  # noqa: BLE001  (whatever a truncated pickle raises)
        return _failed(path, f"its parsing process answered nonsense ({e.__class__.__name__})")
    if not isinstance(result, ReadResult):
        return _failed(path, "its parsing process answered nonsense")
    return result


def _failed(path: str, message: str) -> ReadResult:
    return ReadResult(problems=[Problem(path, None, None, message)])


def main(argv: list[str]) -> int:
    """
    The child: read C{argv[0]} (at most C{argv[1]} bytes) and write the
    pickled L{ReadResult} to standard output.
    """
    gc.disable()
    path, max_size = argv[0], int(argv[1])
    data = pickle.dumps(read_here(path, max_size), protocol=pickle.HIGHEST_PROTOCOL)
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    # Freeing a million objects one by one is pointless: the process ends.
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
