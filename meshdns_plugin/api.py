# -*- test-case-name: tests.unit.test_api -*-
"""
meshdns's public API (re-exported by the package: C{meshdns_plugin.meshService}).

Besides C{twistd meshdns}, meshdns is a library for Twisted applications that
already serve DNS, or anything else. Its pieces are what Twisted Names is made
of, so they compose the Twisted way:

  - L{meshAuthority}: the mesh names as an L{IResolver}, for your own
    L{ResolverChain} or C{DNSServerFactory(authorities=[...])}, next to your
    own authorities;
  - L{cachingForwarder}: meshdns's upstream forwarder and cache, as an
    L{IResolver}: a client resolver on its own, or the last of a chain;
  - L{meshService}: all of C{twistd meshdns} as one L{IService} (DNS over UDP
    and TCP, the reload watcher, the admin endpoint) for your
    L{Application} or L{MultiService}, serving your own authorities too if
    you like;
  - L{loadConfig}: a C{meshdns.yaml} read and validated exactly as
    C{twistd meshdns} reads it.

The builders take a L{Config} or the path of a config file. They raise
L{ConfigError} for a config that cannot be used; invalid documents in the
entry files are logged, one line each, and left out, as C{twistd meshdns}
does. (L{EntriesError} is what the strict
L{meshdns_plugin.sources.files.parse_entries} raises.) Nothing here imports the
reactor: each builder takes one, and uses the global reactor only when given
none, when it is called.

C{twistd meshdns} itself (L{meshdns_plugin.tap}) is built on these functions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from twisted.internet.interfaces import IResolver

from meshdns_plugin.config import Config, load_config, override_listen
from meshdns_plugin.dns.authority import MeshAuthority
from meshdns_plugin.dns.forwarder import CachingForwarder
from meshdns_plugin.mesh.loader import TableLoader
from meshdns_plugin.service import MeshService
from meshdns_plugin.sources.files import load_entries


def loadConfig(path: str | os.PathLike[str] | None = None) -> Config:
    """
    Read and validate a meshdns config file.

    @param path: the C{meshdns.yaml} to read; L{None} reads the embedded
        default (C{conf/meshdns.yaml}). Relative C{entries} paths in it are
        taken from the file's folder, not from the working directory, so an
        application finds its entries wherever it is started from.
    @raise ConfigError: if the file cannot be read, parsed or validated.
    """
    return load_config(None if path is None else os.fspath(path))


def _asConfig(config: Config | str | os.PathLike[str]) -> Config:
    """A L{Config} as given, or read from the path given."""
    if isinstance(config, Config):
        return config
    return loadConfig(config)


def meshAuthority(
    config: Config | str | os.PathLike[str], chase: IResolver | None = None
) -> MeshAuthority:
    """
    The mesh names of C{config}'s entry files, as a resolver.

    It answers A and AAAA queries for ServiceEntry hosts and Kubernetes
    Services (and PTR queries for their addresses and VIPs), authoritatively.
    Any other name or query type fails with L{DomainError}, so a
    L{ResolverChain} goes on to its next resolver: put your own authorities
    and the L{cachingForwarder} after it.

    The names of a Service of type C{ExternalName} answer A and AAAA (and
    CNAME) queries with a CNAME to its C{externalName}, followed by the
    target's addresses: the mesh's own when the target is a mesh name, else
    what C{chase} answers for it (typically the L{cachingForwarder} of the
    same chain). Without C{chase}, or when it fails, the CNAME comes alone
    and the client's resolver follows it.

    The entry files are read once, now: following their changes takes a
    watcher running in the reactor, which is part of L{meshService}. An
    application that wants live reloads should use C{meshService(...,
    authorities=[...])}, or C{meshService(...).authority}, whose table is
    replaced at every reload.

    @param config: a L{Config}, or the path of a config file.
    @param chase: the resolver that looks up the targets of ExternalName
        Services outside the mesh, or L{None}.
    @raise ConfigError: if C{config} is a path to an unusable file.
    Invalid documents are logged and left out; every valid one is served.
    """
    return MeshAuthority(TableLoader(_asConfig(config), load_entries).load(), chase=chase)


def cachingForwarder(
    config: Config | str | os.PathLike[str], reactor: Any = None
) -> CachingForwarder:
    """
    meshdns's forwarder, as a resolver: questions go to the configured
    upstream servers (or else the nameservers of the configured resolv.conf)
    with failover, within the configured timeout, and the answers are cached
    with their own TTLs, negative answers included (RFC 2308).

    It answers every name, or fails with the upstream's error, and never
    passes a question on: in a L{ResolverChain} it belongs last. Call its
    C{close()} to release its sockets when your application stops using it
    (L{meshService} does that for its own).

    @param config: a L{Config}, or the path of a config file.
    @param reactor: the reactor to send and time out on; the global one if
        L{None}.
    @raise ConfigError: if C{config} is a path to an unusable file.
    """
    return CachingForwarder.fromConfig(_asConfig(config), reactor)


def meshService(
    config: Config | str | os.PathLike[str],
    *,
    port: int | None = None,
    interface: str | Sequence[str] | None = None,
    authorities: Sequence[IResolver] = (),
    reactor: Any = None,
) -> MeshService:
    """
    meshdns as a service to add to your L{Application} or L{MultiService}:
    DNS over UDP and TCP on each listen address, all on one port, answered
    by the mesh, then C{authorities}, then the caching forwarder; the
    watcher that reloads the entries when their files change (and on
    SIGHUP); the admin endpoint when the config enables it.

    The mesh is asked first so that its names take the wire fast path, which
    needs the mesh first and the forwarder last in the chain (see
    L{meshdns_plugin.dns.server.MeshDNSServerFactory}). Your authorities are
    therefore asked for every name the mesh does not answer, including other
    query types (MX, TXT, ...) of mesh names; give them zones that the mesh
    does not serve.

    The service's C{authority} and C{forwarder} attributes are its resolvers
    (the authority's table is the one that reloads replace), and its
    C{reload()} rebuilds the table at once.

    @param config: a L{Config}, or the path of a config file.
    @param port: the DNS port, instead of the config's C{listen.port}.
    @param interface: the IP address to listen on, or a list of them,
        instead of the config's C{listen.address}.
    @param authorities: your own resolvers (for instance a
        L{twisted.names.authority.BindAuthority} zone) to serve beside the
        mesh.
    @param reactor: the reactor to use; the global one if L{None}.
    @raise ConfigError: if C{config} is a path to an unusable file, if
        C{interface} is not one IP or a list of distinct ones, or if the
        listen settings cannot be used (an address beyond loopback without
        a C{listen.allow} list, port 0 with several addresses).
    Invalid documents are logged and left out; every valid one is served.
    """
    config = override_listen(_asConfig(config), port=port, interface=interface)
    return MeshService(config, reactor, authorities)
