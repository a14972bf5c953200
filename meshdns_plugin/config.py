# -*- test-case-name: tests.unit.test_config -*-
"""
meshdns.yaml -> a frozen L{Config}.

Every key is optional; the defaults are those documented in C{conf/meshdns.yaml}.
Validation happens here and only here: an unknown key, a wrong type or an
invalid value raises L{ConfigError} with one line naming the file and the key,
so that C{twistd meshdns} and C{meshdns check} report exactly the same thing and
nothing downstream has to re-validate.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import yaml

from meshdns_plugin.configvalues import (
    Invalid,
    address_range,
    boolean,
    client_network,
    domain,
    integer,
    ip,
    ip_network,
    list_of,
    listen_addresses,
    namespace,
    optional,
    seconds,
    server,
    string,
)
from meshdns_plugin.mesh import yamltext
from meshdns_plugin.mesh.clients import ClientNetwork
from meshdns_plugin.resolvconf import read_resolv_conf


def default_config_path() -> str:
    """
    The embedded default config: inside the package when installed from a
    wheel (which carries C{conf/} as C{meshdns_plugin/conf/}), else the
    source tree's C{conf/} (editable installs and checkouts).
    """
    here = os.path.dirname(os.path.abspath(__file__))
    installed = os.path.join(here, "conf", "meshdns.yaml")
    if os.path.exists(installed):
        return installed
    return os.path.normpath(os.path.join(here, os.pardir, "conf", "meshdns.yaml"))



class ConfigError(Exception):
    """
    The configuration cannot be used; C{str()} is one line naming file and key.
    """


@dataclass(frozen=True)
class ListenConfig:
    """
    Where meshdns serves DNS: UDP and TCP on each address, all on one port.

    @ivar addresses: the IPs to listen on (the YAML key C{listen.address},
        one IP or a list); never empty, no duplicates, no overlap.
    @ivar allow: networks whose clients may query; empty means loopback only.
    @ivar tcp_idle_timeout: seconds a TCP connection may stay silent.
    @ivar tcp_max_connections: concurrent TCP connections; more are closed.
    @ivar tcp_max_queries: queries per TCP connection before it is closed.
    """

    addresses: tuple[str, ...] = ("127.0.0.1",)
    port: int = 15053
    allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    tcp_idle_timeout: float = 10.0
    tcp_max_connections: int = 256
    tcp_max_queries: int = 100


@dataclass(frozen=True)
class UpstreamConfig:
    """
    Where names the mesh does not know are forwarded.

    @ivar servers: C{(ip, port)} pairs that replace resolv.conf's nameservers.
    @ivar timeout: seconds that bound a whole forward, failover included.
    @ivar max_concurrent: distinct questions forwarded at once; beyond it,
        SERVFAIL at once instead of queueing without bound.
    @ivar probe_max_interval: the most seconds between two health probes of
        a server that is down (the probes back off from 0.25 s to this).
    """

    resolv_conf: str = "/etc/resolv.conf"
    servers: tuple[tuple[str, int], ...] = ()
    timeout: float = 5.0
    max_concurrent: int = 1000
    # Upstream health.
    probe_max_interval: float = 10.0


@dataclass(frozen=True)
class MeshConfig:
    """
    How mesh names are expanded and answered.

    @ivar search: the search list; L{None} means resolv.conf's C{search} line.
    @ivar state_file: where VIP assignments persist across restarts, or L{None}.
    @ivar per_client_views: answer each query with the view of the client's
        own namespace (node-local mode), not always C{namespace}'s.
    @ivar client_namespaces: static client networks for per-client views.
    @ivar autopath: do each client's search for it: a query for a name
        under its first search domain that does not exist is answered with
        the first further candidate that has records (L{meshdns_plugin.dns.autopath}).
    """

    namespace: str = "default"
    cluster_domain: str = "cluster.local"
    search: tuple[str, ...] | None = None
    ttl: int = 30
    auto_allocate: bool = True
    ipv4_range: ipaddress.IPv4Network = ipaddress.IPv4Network("240.240.0.0/16")
    ipv6_range: ipaddress.IPv6Network = ipaddress.IPv6Network("2001:2::/48")
    state_file: str | None = None
    per_client_views: bool = False
    client_namespaces: tuple[ClientNetwork, ...] = ()
    autopath: bool = False


@dataclass(frozen=True)
class CacheConfig:
    """
    The forwarder's cache.

    @ivar max_entries: the LRU bound, in cached questions.
    @ivar serve_stale: seconds past expiry an answer may still be served
        (with TTL 30, RFC 8767) when no upstream answered within 1.8 s or
        every upstream failed; 0 = never.
    @ivar prefetch: refresh an entry asked in the last tenth of its TTL.
    """

    max_entries: int = 100000
    serve_stale: int = 0
    # Prefetch.
    prefetch: bool = True


@dataclass(frozen=True)
class AdminConfig:
    """
    The admin HTTP endpoint (C{/healthz}, C{/readyz}, C{/metrics},
    C{/debug/table}); loopback by default, since the table dump shows every
    mesh name.

    @ivar port: TCP port; 0 disables the endpoint.
    """

    address: str = "127.0.0.1"
    port: int = 15020


@dataclass(frozen=True)
class ReloadConfig:
    """
    How changes to the entry files are noticed (inotify, then this polling).

    @ivar poll_interval: seconds between checks of the files' fingerprint, the
        fallback for file systems that send no inotify events (NFS, FUSE).
    @ivar debounce: seconds to wait after a file event before reloading, so
        that a burst of events (an editor's save, a ConfigMap swap) costs one
        reload.
    """

    poll_interval: float = 2.0
    debounce: float = 0.2


@dataclass(frozen=True)
class LogConfig:
    """
    What is logged besides start-up, reloads and problems.

    @ivar queries: one line per query; off by default, since formatting a
        line costs more than answering from the table.
    """

    queries: bool = False


@dataclass(frozen=True)
class VipListenersConfig:
    """
    Per-VIP TCP listeners (L{meshdns_plugin.ops.listeners}): connections to a
    ServiceEntry's VIP or address and TCP port are forwarded to the real
    service, as Envoy does in Istio's guide. Off by default: it binds
    sockets on every VIP, which needs the VIP ranges routed to this host.

    @ivar connect_timeout: seconds a TCP connect to the real service may
        take before the client's connection is closed.
    """

    enabled: bool = False
    connect_timeout: float = 10.0


@dataclass(frozen=True)
class LimitsConfig:
    """
    Bounds on what one entry file may cost to read (see
    L{meshdns_plugin.mesh.yamltext}); a file over one is an error for that file.

    @ivar max_file_size: bytes; a larger file is refused before it is read.
    """

    max_file_size: int = yamltext.MAX_FILE_SIZE


@dataclass(frozen=True)
class KubernetesConfig:
    """
    The Kubernetes API source (L{meshdns_plugin.sources.kubernetes}): list
    and watch Services, EndpointSlices, ServiceEntries, Sidecars (and Pods,
    for per-client views) beside the entry files.

    @ivar kubeconfig: a kubeconfig file; L{None}: the pod's service account
        (C{KUBERNETES_SERVICE_HOST}, its token and CA).
    @ivar context: the kubeconfig context to use; L{None}: its current one.
    @ivar namespaces: the namespaces to watch; empty: all of them.
    @ivar page_size: objects per page of a list (C{limit}).
    """

    enabled: bool = False
    kubeconfig: str | None = None
    context: str | None = None
    namespaces: tuple[str, ...] = ()
    page_size: int = 500


@dataclass(frozen=True)
class Config:
    """
    The whole, validated configuration.

    @ivar entries: absolute paths of entry files or folders.
    @ivar source: the file this came from (for messages), or C{"<defaults>"}.
    """

    listen: ListenConfig = field(default_factory=ListenConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    entries: tuple[str, ...] = ()
    cache: CacheConfig = field(default_factory=CacheConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    reload: ReloadConfig = field(default_factory=ReloadConfig)
    log: LogConfig = field(default_factory=LogConfig)
    vip_listeners: VipListenersConfig = field(default_factory=VipListenersConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    kubernetes: KubernetesConfig = field(default_factory=KubernetesConfig)
    source: str = "<defaults>"


_CHECKS: Mapping[type, Mapping[str, Callable[[Any], Any]]] = {
    ListenConfig: {
        "address": listen_addresses,
        "port": integer(0, 65535),
        "allow": list_of(ip_network),
        "tcp_idle_timeout": seconds,
        "tcp_max_connections": integer(1, 1_000_000),
        "tcp_max_queries": integer(1, 1_000_000),
    },
    UpstreamConfig: {
        "resolv_conf": string,
        "servers": list_of(server),
        "timeout": seconds,
        "max_concurrent": integer(1, 1_000_000),
        # Upstream health.
        "probe_max_interval": seconds,
    },
    MeshConfig: {
        "namespace": namespace,
        "cluster_domain": domain,
        "search": optional(list_of(domain)),
        "ttl": integer(0, 2**31 - 1),
        "auto_allocate": boolean,
        "ipv4_range": address_range(4),
        "ipv6_range": address_range(6),
        "state_file": optional(string),
        "per_client_views": boolean,
        "client_namespaces": list_of(client_network),
        "autopath": boolean,
    },
    CacheConfig: {
        "max_entries": integer(1, 100_000_000),
        "serve_stale": integer(0, 7 * 86400),
        # Prefetch.
        "prefetch": boolean,
    },
    AdminConfig: {
        "address": ip,
        "port": integer(0, 65535),
    },
    ReloadConfig: {
        "poll_interval": seconds,
        "debounce": seconds,
    },
    LogConfig: {
        "queries": boolean,
    },
    VipListenersConfig: {
        "enabled": boolean,
        "connect_timeout": seconds,
    },
    LimitsConfig: {
        "max_file_size": integer(1, 2**40),
    },
    KubernetesConfig: {
        "enabled": boolean,
        "kubeconfig": optional(string),
        "context": optional(string),
        "namespaces": list_of(namespace),
        "page_size": integer(1, 10_000),
    },
}

#: YAML keys whose field has another name: C{listen.address} may be one IP
#: or a list, and the field holds them all.
_FIELDS: Mapping[tuple[type, str], str] = {(ListenConfig, "address"): "addresses"}

_Section = TypeVar("_Section")


def _section(cls: type[_Section], raw: Any, path: str) -> _Section:
    """Build one frozen section from its mapping, checking every key."""
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping, got {raw!r}")
    checks = _CHECKS[cls]
    unknown = sorted(set(raw) - set(checks), key=str)
    if unknown:
        known = ", ".join(checks)
        raise ConfigError(f"{path}.{unknown[0]}: unknown key (known keys: {known})")
    values = {}
    for key, value in raw.items():
        try:
            values[_FIELDS.get((cls, key), key)] = checks[key](value)
        except Invalid as e:
            raise ConfigError(f"{path}.{key}: {e}") from None
    return cls(**values)


def parse_config(raw: Any, source: str, base_dir: str) -> Config:
    """
    Validate the parsed YAML of a config file.

    @param raw: the YAML document (L{None} for an empty file).
    @param source: the file name, used as the prefix of every error.
    @param base_dir: the folder that relative paths (C{entries},
        C{upstream.resolv_conf}, C{mesh.state_file}) are taken from.
    @raise ConfigError: on the first problem found.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    sections: dict[str, type] = {
        "listen": ListenConfig,
        "upstream": UpstreamConfig,
        "mesh": MeshConfig,
        "cache": CacheConfig,
        "admin": AdminConfig,
        "reload": ReloadConfig,
        "log": LogConfig,
        "vip_listeners": VipListenersConfig,
        "limits": LimitsConfig,
        "kubernetes": KubernetesConfig,
    }
    unknown = sorted(set(raw) - set(sections) - {"entries"}, key=str)
    if unknown:
        known = ", ".join([*sections, "entries"])
        raise ConfigError(f"{source}: {unknown[0]}: unknown key (known keys: {known})")
    built = {
        name: _section(cls, raw.get(name), f"{source}: {name}") for name, cls in sections.items()
    }
    try:
        listed = raw.get("entries")
        entries = () if listed is None else list_of(string)(listed)
    except Invalid as e:
        raise ConfigError(f"{source}: entries: {e}") from None
    upstream, mesh = built["upstream"], built["mesh"]
    built["upstream"] = replace(upstream, resolv_conf=_path_from(base_dir, upstream.resolv_conf))
    if mesh.state_file is not None:
        built["mesh"] = replace(mesh, state_file=_path_from(base_dir, mesh.state_file))
    kubernetes = built["kubernetes"]
    if kubernetes.kubeconfig is not None:
        built["kubernetes"] = replace(
            kubernetes, kubeconfig=_path_from(base_dir, kubernetes.kubeconfig)
        )
    absolute = tuple(_path_from(base_dir, p) for p in entries)
    config = Config(entries=absolute, source=source, **built)
    check_listen(config)
    return config


def _path_from(base_dir: str, path: str) -> str:
    """
    A path of the config file, taken from the file's folder when relative,
    so that the same file means the same files whatever the working
    directory of the process that reads it.
    """
    return os.path.normpath(os.path.join(base_dir, path))


def check_listen(config: Config) -> None:
    """
    Refuse listen settings that cannot work together:
      - serving beyond loopback with no C{listen.allow} list: a DNS
        forwarder open to the network is an open resolver and a reflector;
      - C{listen.port} 0 (any free port) with several addresses: each
        listener would get a port of its own, and nothing says which.

    @raise ConfigError: naming the file and the key to change.
    """
    listen = config.listen
    exposed = [a for a in listen.addresses if not ipaddress.ip_address(a).is_loopback]
    if exposed and not listen.allow:
        raise ConfigError(
            f"{config.source}: listen.allow: required when listening on {exposed[0]}, "
            "which is not loopback (list the client networks, e.g. [10.0.0.0/8])"
        )
    if listen.port == 0 and len(listen.addresses) > 1:
        raise ConfigError(
            f"{config.source}: listen.port: 0 (any free port) needs a single listen address, "
            f"not {len(listen.addresses)}: each would get a different port"
        )


def load_config(path: str | None) -> Config:
    """
    Read and validate a config file; L{None} reads the embedded default.

    @raise ConfigError: if the file cannot be read, parsed or validated.
    """
    if path is None:
        path = default_config_path()
    try:
        text = yamltext.read_text(path)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except ValueError as e:
        raise ConfigError(f"{path}: {e}") from None
    try:
        raw = yamltext.load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: {yamltext.describe(e, text)}") from None
    return parse_config(raw, path, os.path.dirname(os.path.abspath(path)))


def search_domains(config: Config) -> tuple[str, ...]:
    """The search list: configured, or else resolv.conf's C{search} line."""
    if config.mesh.search is not None:
        return config.mesh.search
    return read_resolv_conf(config.upstream.resolv_conf).search


def upstream_servers(config: Config) -> tuple[tuple[str, int], ...]:
    """Configured servers, or else resolv.conf's nameservers."""
    if config.upstream.servers:
        return config.upstream.servers
    return read_resolv_conf(config.upstream.resolv_conf).nameservers


def override_listen(
    config: Config, *, port: int | None = None, interface: str | Sequence[str] | None = None
) -> Config:
    """
    C{config} with its listen port and addresses replaced where given: the
    one place where C{twistd meshdns --port/--interface} and
    L{meshdns_plugin.meshService} override the file.

    @param interface: one IP, or several, to listen on instead of the
        config's C{listen.address}.
    @raise ConfigError: if C{interface} is not one IP or a list of distinct
        ones, or the result would serve beyond loopback with no
        C{listen.allow} (an open resolver), or on port 0 with several
        addresses.
    """
    listen = config.listen
    if port is not None:
        listen = replace(listen, port=port)
    if interface is not None:
        given = interface if isinstance(interface, str) else list(interface)
        try:
            listen = replace(listen, addresses=listen_addresses(given))
        except ValueError as e:
            raise ConfigError(f"interface: {e}") from None
    config = replace(config, listen=listen)
    check_listen(config)
    return config
