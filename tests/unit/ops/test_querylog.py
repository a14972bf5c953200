"""
Tests for L{meshdns_plugin.ops.querylog}: one log line per reply, on both the
fast and the full path, and the switch in the config.
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.names import dns

from meshdns_plugin.config import parse_config
from meshdns_plugin.dns.authority import MeshAuthority
from meshdns_plugin.dns.forwarder import CachingForwarder
from meshdns_plugin.dns.server import MeshDNSServerFactory
from meshdns_plugin.ops.querylog import QueryLoggingFactory, describe_reply
from meshdns_plugin.service import MeshService
from tests.support.samples import make_table
from tests.support.servers import CLIENT, RecordingProtocol


def query(name: str, rtype: int = dns.A, cls: int = dns.IN) -> bytes:
    message = dns.Message(id=9, recDes=True)
    message.queries = [dns.Query(name, rtype, cls)]
    return message.toStr()


def logging_factory() -> QueryLoggingFactory:
    forwarder = CachingForwarder([("127.0.0.1", 1)], reactor=MemoryReactorClock())
    return QueryLoggingFactory(authorities=[MeshAuthority(make_table())], clients=[forwarder])


def test_fast_path_reply_is_sent_and_logged() -> None:
    factory = logging_factory()
    proto = RecordingProtocol()
    with capturedLogs() as events:
        factory.packetReceived(query("www.google.com"), proto, CLIENT)
    assert len(proto.sent) == 1
    (event,) = [e for e in events if e["log_format"].startswith("Query from")]
    assert (event["client"], event["transport"]) == ("127.0.0.1:40000", "udp")
    assert (event["question"], event["outcome"]) == ("www.google.com. A", "NOERROR 192.0.2.7")


def test_full_path_reply_is_logged_too() -> None:
    factory = logging_factory()
    with capturedLogs() as events:
        factory.packetReceived(query("x.example", cls=dns.CH), RecordingProtocol(), CLIENT)
    (event,) = [e for e in events if e["log_format"].startswith("Query from")]
    assert event["outcome"] == "REFUSED"


def test_describe_reply_shows_cnames_and_junk() -> None:
    factory = MeshDNSServerFactory(authorities=[MeshAuthority(make_table())])
    proto = RecordingProtocol()
    factory.packetReceived(query("www.google.com.ns1.svc.cluster.local"), proto, CLIENT)
    question, outcome = describe_reply(proto.sent[0])
    assert question == "www.google.com.ns1.svc.cluster.local. A"
    alias = "www.google.com.ns1.svc.cluster.local."
    assert outcome == f"NOERROR {alias} CNAME www.google.com. 192.0.2.7"
    assert describe_reply(b"\x00")[0] == "?"


def test_config_switch(tmp_path: Path) -> None:
    def factory_of(queries: bool) -> type:
        config = parse_config(
            {
                "log": {"queries": queries},
                "upstream": {"servers": ["127.0.0.1:1"]},
                "mesh": {"search": []},
            },
            "meshdns.yaml",
            str(tmp_path),
        )
        return type(MeshService(config, reactor=MemoryReactorClock()).factory)

    assert factory_of(False) is MeshDNSServerFactory
    assert factory_of(True) is QueryLoggingFactory
