# -*- python -*-
# An application of its own that serves meshdns too:
#
#   twistd -ny examples/embed.tac
#
# One DNS port (UDP and TCP, 127.0.0.1:10053) answers from one resolver chain:
#   1. meshdns's mesh names: the Istio guide's entries in ../conf/entries,
#      reloaded when their files change (or on SIGHUP);
#   2. the application's own zone example.test. (example.zone, read by
#      Twisted's BindAuthority);
#   3. everything else: meshdns's caching forwarder.
# The mesh goes first because meshdns's wire fast path answers mesh names
# only when the mesh is the first resolver (and cache hits only when the
# forwarder is the last); the zone can go second because it serves no mesh
# name. Beside the DNS port, a web page of the application's own
# (http://127.0.0.1:10080/) shows meshdns living next to unrelated services.
#
#   dig @127.0.0.1 -p 10053 www.example.test    # the zone: 192.0.2.10
#   dig @127.0.0.1 -p 10053 address.internal    # the mesh: 198.51.100.1
#   dig @127.0.0.1 -p 10053 example.com         # forwarded and cached
#   curl http://127.0.0.1:10080/
#
# Environment (all optional): EMBED_DNS_PORT (10053), EMBED_WEB_PORT (10080),
# EMBED_UPSTREAM: the one upstream server, IP:PORT or [IPv6]:PORT (default:
# the nameservers of /etc/resolv.conf, as meshdns uses).

import dataclasses
import os

from twisted.application import service, strports
from twisted.names.authority import BindAuthority
from twisted.web import resource, server, static

from meshdns_plugin import loadConfig, meshService

HERE = os.path.dirname(os.path.abspath(__file__))
DNS_PORT = int(os.environ.get("EMBED_DNS_PORT", "10053"))
WEB_PORT = int(os.environ.get("EMBED_WEB_PORT", "10080"))

config = loadConfig(os.path.join(HERE, "embed.yaml"))
if os.environ.get("EMBED_UPSTREAM"):
    host, port = os.environ["EMBED_UPSTREAM"].rsplit(":", 1)
    upstream = dataclasses.replace(config.upstream, servers=((host.strip("[]"), int(port)),))
    config = dataclasses.replace(config, upstream=upstream)

application = service.Application("embed")

zone = BindAuthority(os.path.join(HERE, "example.zone"))
mesh = meshService(config, port=DNS_PORT, interface="127.0.0.1", authorities=[zone])
mesh.setServiceParent(application)

root = resource.Resource()
root.putChild(b"", static.Data(b"Hello from an application that embeds meshdns.\n", "text/plain"))
web = strports.service(f"tcp:{WEB_PORT}:interface=127.0.0.1", server.Site(root))
web.setServiceParent(application)
