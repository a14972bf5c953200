"""
Hostile entry files fed to a live C{twistd -n meshdns}: an alias bomb of a
few hundred bytes, a file over the size limit and a document nested 1,000
deep. Each is one clear line naming the file and the limit, meshdns keeps
answering from the table it had, and its memory stays bounded.
"""

from __future__ import annotations

import time
from pathlib import Path

from meshdns_plugin.mesh import yamltext
from tests.support.processes import MeshdnsProcess
from tests.support.samples import entry

#: RSS meshdns may reach while refusing the files (it starts at about 60 MB;
#: the bomb, expanded, would take gigabytes).
RSS_BOUND_MB = 250


def billion_laughs() -> str:
    """The alias bomb: 9 levels, each listing the one below 9 times."""
    lines = ["a0: &a0 [lol]"]
    for level in range(1, 10):
        lines.append(f"a{level}: &a{level} [{', '.join([f'*a{level - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


def rss_mb(meshdns: MeshdnsProcess) -> float:
    """The resident set size of the meshdns process, from /proc, in MB."""
    for line in Path(f"/proc/{meshdns.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_hostile_files_are_refused_and_meshdns_keeps_answering(start_meshdns, upstream) -> None:
    meshdns = start_meshdns(
        {
            "entries": ["entries"],
            "upstream": {"servers": [upstream.server]},
            "reload": {"poll_interval": 0.2, "debounce": 0.05},
        },
        {"entries/good.yaml": entry("good.internal", "198.51.100.7")},
    )
    assert meshdns.query("good.internal").answer[0].to_text().endswith("198.51.100.7")
    folder = meshdns.directory / "entries"
    bomb = folder / "bomb.yaml"
    bomb.write_text(billion_laughs())
    assert len(bomb.read_bytes()) <= 500
    huge = folder / "huge.yaml"
    with open(huge, "wb") as f:
        f.truncate(yamltext.MAX_FILE_SIZE + 1)  # sparse: no disk space
    deep = folder / "deep.yaml"
    deep.write_text("a: " + "[" * 998 + "]" * 998 + "\n")
    started = time.monotonic()
    expected = [
        f"{bomb}: line 9: expands to more than {yamltext.MAX_NODES} nodes through aliases "
        "(the limit)",
        f"{deep}: line 1: nested more than {yamltext.MAX_DEPTH} levels deep (the limit)",
        f"{huge}: {yamltext.MAX_FILE_SIZE + 1} bytes, over the limit of "
        f"{yamltext.MAX_FILE_SIZE} bytes (limits.max_file_size); not read",
    ]
    # Written one after the other, they may take one reload or several: each
    # file is reported once, in one line, whichever reload first read it.
    while True:
        log = meshdns.log()
        reported = [
            line.split("Invalid, left out: ", 1)[1]
            for line in log.splitlines()
            if "Invalid, left out: " in line
        ]
        if set(expected) <= set(reported) or time.monotonic() - started > 10:
            break
        time.sleep(0.1)
    assert sorted(reported) == sorted(expected)
    assert "Traceback" not in log
    assert meshdns.query("good.internal").answer[0].to_text().endswith("198.51.100.7")
    assert rss_mb(meshdns) < RSS_BOUND_MB
