# -*- test-case-name: tests.unit.test_config -*-
"""
The value types of C{meshdns.yaml}: each checker turns one YAML value into
the typed value a L{meshdns_plugin.config.Config} field holds, or raises
L{Invalid} with a message that says what was expected.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from meshdns_plugin.mesh.clients import ClientNetwork
from meshdns_plugin.mesh.documents import is_k8s_label


class Invalid(ValueError):
    """A value is unusable; the message says why, without the key path."""


def integer(low: int, high: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"expected an integer, got {value!r}")
        if not low <= value <= high:
            raise Invalid(f"{value} is out of range {low}..{high}")
        return value

    return check


def seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid(f"expected a number of seconds, got {value!r}")
    if not 0 < value <= 3600:
        raise Invalid(f"{value} is out of range (0, 3600]")
    return float(value)


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"expected true or false, got {value!r}")
    return value


def string(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise Invalid(f"expected a non-empty string, got {value!r}")
    return value


def optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else check(value)


def list_of(check: Callable[[Any], Any]) -> Callable[[Any], tuple[Any, ...]]:
    def each(value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise Invalid(f"expected a list, got {value!r}")
        return tuple(check(item) for item in value)

    return each


def ip(value: Any) -> str:
    try:
        return str(ipaddress.ip_address(string(value)))
    except ValueError:
        raise Invalid(f"{value!r} is not an IP address") from None


def listen_addresses(value: Any) -> tuple[str, ...]:
    """
    C{listen.address} (and C{twistd meshdns --interface}, given once or
    more): one IP, or a non-empty list of distinct IPs -> their normal
    forms, in the order given.

    A wildcard listens on more than itself, so it cannot be listed with an
    address it covers, whose bind would fail (address in use): C{0.0.0.0}
    covers every IPv4 address, and C{::} every address, IPv4 too (an IPv6
    wildcard socket takes IPv4 as well: Linux's default, which Twisted keeps).

    @raise ValueError: one line saying why, without the key.
    """
    if isinstance(value, list | tuple):
        if not value:
            raise Invalid("expected an IP address or a non-empty list of them, got []")
        addresses = tuple(ip(item) for item in value)
    else:
        addresses = (ip(value),)
    for index, address in enumerate(addresses):
        if address in addresses[:index]:
            raise Invalid(f"{address} is listed twice")
    for address in addresses:
        wildcard = ipaddress.ip_address(address)
        if not wildcard.is_unspecified:
            continue
        for other in addresses:
            if other != address and (
                wildcard.version == 6 or ipaddress.ip_address(other).version == 4
            ):
                every = "IPv4 address" if wildcard.version == 4 else "address, IPv4 too"
                raise Invalid(
                    f"{address} already listens on every {every}, {other} included: "
                    "list one or the other"
                )
    return addresses


def ip_network(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(string(value), strict=False)
    except ValueError:
        raise Invalid(f"{value!r} is not a CIDR network") from None


def address_range(version: int) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        network = ip_network(value)
        if network.version != version:
            raise Invalid(f"{value!r} is not an IPv{version} network")
        if network.num_addresses < 4:
            raise Invalid(f"{value!r} is too small to allocate from")
        return network

    return check


def server(value: Any) -> tuple[str, int]:
    """
    C{IP}, C{IPv4:PORT}, C{[IPv6]} or C{[IPv6]:PORT} -> C{(ip, port)}; the
    port is 53 unless given.

    Brackets are for IPv6 only (as in URLs): C{[1.2.3.4]:53} is refused.
    An IPv6 address without brackets is the whole text, never an address
    and a port: C{::1:53} is the address C{::1:53} (port 53), as
    C{2001:db8::53} is; write C{[::1]:53} for port 53 of C{::1}.
    """
    text = string(value)
    host, port = text, 53
    bracketed = text.startswith("[")
    if bracketed:
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise Invalid(f"{text!r} is not IP, IP:PORT or [IPv6]:PORT")
        if rest:
            port = port_text(rest[1:], text)
    elif text.count(":") == 1:
        host, _, rest = text.partition(":")
        port = port_text(rest, text)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise Invalid(f"{text!r} is not IP, IP:PORT or [IPv6]:PORT") from None
    if bracketed and ip.version == 4:
        raise Invalid(f"{text!r}: brackets are for IPv6 only; write {ip}:{port}")
    return str(ip), port


def port_text(text: str, whole: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise Invalid(f"{whole!r} has an invalid port")
    return int(text)


def namespace(value: Any) -> str:
    text = string(value)
    if not is_k8s_label(text):
        raise Invalid(
            f"{text!r} is not a Kubernetes namespace name (lowercase letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63 characters)"
        )
    return text


def domain(value: Any) -> str:
    name = string(value).strip().rstrip(".").lower()
    if not name or any(not label or len(label) > 63 for label in name.split(".")):
        raise Invalid(f"{value!r} is not a domain name")
    return name


def client_network(value: Any) -> ClientNetwork:
    """One C{mesh.client_namespaces} item: C{{cidr: ..., namespace: ...}}."""
    if not isinstance(value, dict) or set(value) != {"cidr", "namespace"}:
        raise Invalid(f"expected a mapping with cidr and namespace, got {value!r}")
    return ClientNetwork(ip_network(value["cidr"]), namespace(value["namespace"]))
