"""
C{examples/embed.tac} as a real process (C{twistd -ny}): one DNS port answers
the application's own zone, meshdns's mesh names and forwarded names; its own
web page answers beside it; and meshdns's reloads work inside it.

Everything is on loopback: the example's ports are free loopback ports, and
its upstream is the fake upstream (C{EMBED_UPSTREAM}), never the host's
resolv.conf servers.
"""

from __future__ import annotations

import http.client
import ipaddress
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from tests.support.paths import REPO_ROOT
from tests.support.processes import (
    LOOPBACK,
    TWISTD,
    MeshdnsProcess,
    UpstreamProcess,
    child_env,
    free_port,
    stop_process,
    wait_until_answering,
)
from tests.support.samples import entry

EXAMPLES = REPO_ROOT / "examples"
#: The files of the example, which finds the entries at C{../conf/entries}.
EXAMPLE_FILES = ("embed.tac", "embed.yaml", "example.zone")


@dataclass
class Embedded(MeshdnsProcess):
    """The running example: its DNS port is what L{MeshdnsProcess} talks to."""

    web_port: int

    def get(self, path: str) -> tuple[int, bytes]:
        """GET C{path} from the example's web page (no proxy: loopback only)."""
        connection = http.client.HTTPConnection(LOOPBACK, self.web_port, timeout=5)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()


def two_free_ports() -> tuple[int, int]:
    """A DNS port (UDP and TCP) and a distinct web port on loopback."""
    dns_port = free_port()
    for _ in range(10):
        web_port = free_port()
        if web_port != dns_port:
            return dns_port, web_port
    raise RuntimeError("no second free port")


def start_embedded(tac: Path, directory: Path, upstream: UpstreamProcess) -> Embedded:
    """Run C{twistd -ny tac} in C{directory} and wait until its DNS port answers."""
    dns_port, web_port = two_free_ports()
    env = child_env()
    env.update(
        EMBED_DNS_PORT=str(dns_port), EMBED_WEB_PORT=str(web_port), EMBED_UPSTREAM=upstream.server
    )
    log_path = directory / "embed.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [*TWISTD, "-y", str(tac)],
            cwd=directory,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    embedded = Embedded(
        LOOPBACK, dns_port, process, directory, tac.with_name("embed.yaml"), log_path, web_port
    )
    wait_until_answering(embedded)
    return embedded


@pytest.fixture(scope="module")
def embedded(
    module_upstream: UpstreamProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Embedded]:
    """The example as shipped, run from the repository's C{examples/}."""
    process = start_embedded(
        EXAMPLES / "embed.tac", tmp_path_factory.mktemp("embed"), module_upstream
    )
    yield process
    stop_process(process.process)


def addresses(reply: dns.message.Message) -> list[str]:
    return sorted(r.address for rrset in reply.answer for r in rrset if hasattr(r, "address"))


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_own_zone(embedded: Embedded, tcp: bool) -> None:
    reply = embedded.query("www.example.test", tcp=tcp)
    assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AA
    assert addresses(reply) == ["192.0.2.10"]
    assert addresses(embedded.query("www.example.test", "AAAA", tcp=tcp)) == ["2001:db8::10"]
    (mx,) = embedded.query("example.test", "MX", tcp=tcp).answer
    assert mx.rdtype == dns.rdatatype.MX and str(mx[0].exchange) == "mail.example.test."


def test_own_zone_is_authoritative_for_missing_names(
    embedded: Embedded, module_upstream: UpstreamProcess
) -> None:
    """A name in the zone that does not exist is NXDOMAIN here, never forwarded."""
    module_upstream.reset()
    reply = embedded.query("nope.example.test")
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert module_upstream.counts() == {}


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_mesh_names(embedded: Embedded, tcp: bool) -> None:
    reply = embedded.query("address.internal", tcp=tcp)
    assert reply.flags & dns.flags.AA and addresses(reply) == ["198.51.100.1"]
    (vip,) = addresses(embedded.query("auto.internal", tcp=tcp))
    assert ipaddress.ip_address(vip) in ipaddress.ip_network("240.240.0.0/16")


def test_forwarded_names_are_cached(embedded: Embedded, module_upstream: UpstreamProcess) -> None:
    module_upstream.reset()
    for _ in range(3):
        reply = embedded.query("x.upstream.test")
        assert reply.rcode() == dns.rcode.NOERROR and not reply.flags & dns.flags.AA
        assert addresses(reply) == ["127.0.0.10"]
    assert module_upstream.count("x.upstream.test") == 1


def test_own_web_page(embedded: Embedded) -> None:
    status, body = embedded.get("/")
    assert status == 200 and b"embeds meshdns" in body


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def test_reload_in_the_embedded_service(tmp_path: Path, upstream: UpstreamProcess) -> None:
    """
    A copy of the example, laid out as in the repository: an entry file
    added to its C{conf/entries}, then edited, is served without a restart.
    """
    (tmp_path / "examples").mkdir()
    for name in EXAMPLE_FILES:
        shutil.copy(EXAMPLES / name, tmp_path / "examples" / name)
    shutil.copytree(REPO_ROOT / "conf" / "entries", tmp_path / "conf" / "entries")
    embedded = start_embedded(tmp_path / "examples" / "embed.tac", tmp_path, upstream)
    try:
        added = tmp_path / "conf" / "entries" / "added.yaml"
        added.write_text(entry("added.internal", "198.51.100.7"))
        wait_for(
            lambda: addresses(embedded.query("added.internal")) == ["198.51.100.7"],
            "the added entry to be served",
        )
        added.write_text(entry("added.internal", "198.51.100.8"))
        wait_for(
            lambda: addresses(embedded.query("added.internal")) == ["198.51.100.8"],
            "the edited entry to be served",
        )
        # The rest of the chain is untouched by the reloads.
        assert addresses(embedded.query("address.internal")) == ["198.51.100.1"]
        assert addresses(embedded.query("www.example.test")) == ["192.0.2.10"]
        assert addresses(embedded.query("x.upstream.test")) == ["127.0.0.10"]
        assert embedded.log().count("Reloaded:") >= 2
        assert "Traceback" not in embedded.log()
    finally:
        stop_process(embedded.process)
