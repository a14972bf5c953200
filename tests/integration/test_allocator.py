"""
Tests of L{meshdns_plugin.mesh.allocator} that need fresh interpreters: replicas in other
processes (other hash seeds) agree, and a huge range cannot stall a process.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys

import pytest

from meshdns_plugin.mesh.allocator import (
    allocate,
)

V4 = ipaddress.IPv4Network("240.240.0.0/16")
V6 = ipaddress.IPv6Network("2001:2::/48")


def test_replicas_in_other_processes_agree() -> None:
    """No per-process hash (such as Python's randomised C{hash()}) decides a VIP."""
    hosts = ["auto.internal", "tcp-echo.external-1.svc.cluster.local", "a.example", "b.example"]
    code = (
        "import ipaddress, json, sys\n"
        "from meshdns_plugin.mesh.allocator import allocate\n"
        f"a = allocate({hosts!r}, ipaddress.ip_network('{V4}'), ipaddress.ip_network('{V6}'))\n"
        "print(json.dumps(a.as_state()))\n"
    )
    results = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        ).stdout
        results.add(out)
    assert len(results) == 1
    here = allocate(hosts, V4, V6).as_state()
    assert json.loads(results.pop()) == here


def test_large_ranges_do_not_stall() -> None:
    """
    Capacity is arithmetic, not a count of every address of a /8 or an IPv6
    /96 (4 billion of them). Run in a child process, so that a regression
    fails within seconds instead of hanging the test run.
    """
    code = (
        "import ipaddress, json\n"
        "from meshdns_plugin.mesh.allocator import allocate\n"
        "a = allocate(['a.example', 'b.example'], ipaddress.ip_network('10.0.0.0/8'),"
        " ipaddress.ip_network('fd00::/96'))\n"
        "print(json.dumps(a.as_state()))\n"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=10
        ).stdout
    except subprocess.TimeoutExpired:
        pytest.fail("allocating from a /8 and a /96 did not finish in 10 seconds")
    state = json.loads(out)
    assert set(state) == {"a.example", "b.example"}
    for vips in state.values():
        assert ipaddress.ip_address(vips["ipv4"]) in ipaddress.ip_network("10.0.0.0/8")
        assert ipaddress.ip_address(vips["ipv6"]) in ipaddress.ip_network("fd00::/96")
