# -*- test-case-name: tests.unit.mesh.test_entries -*-
"""
Reading the fields of one YAML document, as the API server and Istio's
validation read them: typed access that names the field path of whatever is
wrong (L{Invalid}), and the formats of names, hosts, addresses and ports.
Error messages quote at most L{QUOTE_LIMIT} characters of a bad value.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterator, Mapping
from sys import intern
from typing import Any

from meshdns_plugin.mesh.addresses import family as address_family
from meshdns_plugin.mesh.model import Origin, Port

_HOST_LABEL = re.compile(r"[a-z0-9_-]+")
_K8S_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
#: The first label of a partial wildcard host (C{*x.example.com},
#: C{*-x.example.com}), which Istio's C{ValidateWildcardDomain} accepts
#: (C{pkg/config/labels}: C{(\*|\*-)?} before a DNS-1123 label).
_PARTIAL_WILDCARD = re.compile(r"\*-?[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_K8S_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def is_k8s_label(text: str) -> bool:
    """
    Whether C{text} is a Kubernetes namespace or Service name, which become
    DNS labels: an RFC 1123 label (lowercase letters, digits and C{-},
    starting and ending with a letter or digit, at most 63 characters), as
    the API server enforces.
    """
    return len(text) <= 63 and _K8S_LABEL.fullmatch(text) is not None


#: How much of a bad value a message quotes: enough to recognise it, never a
#: whole pasted certificate or a megabyte of garbage in one log line.
QUOTE_LIMIT = 60


def quote(value: Any) -> str:
    """C{value} as C{repr} writes it, cut to L{QUOTE_LIMIT} characters."""
    text = repr(value)
    return text if len(text) <= QUOTE_LIMIT else text[: QUOTE_LIMIT - 3] + "..."


def check_metadata(origin: Origin) -> None:
    """
    The API server's rules for any object's name and namespace: a
    namespace is a DNS label, a name a DNS subdomain (at most 253
    characters), and a Service's name a DNS-1035 label (it starts with a
    letter), since it becomes a DNS name of its own.
    """
    if not is_k8s_label(origin.namespace):
        raise Invalid("metadata.namespace", f"{quote(origin.namespace)} is not a namespace name")
    name = origin.name
    if len(name) > 253 or not _K8S_SUBDOMAIN.fullmatch(name):
        raise Invalid("metadata.name", f"{quote(name)} is not a valid {origin.kind} name")
    if origin.kind == "Service" and not (is_k8s_label(name) and name[0].isalpha()):
        raise Invalid("metadata.name", f"{quote(name)} is not a valid Service name")


class Invalid(Exception):
    """A field is wrong: C{args} are (field path, message)."""


class Document:
    """
    Typed access to one YAML document, raising L{Invalid} with the field path.
    """

    def __init__(self, raw: Mapping[str, Any], prefix: str = "") -> None:
        self.raw = raw
        self.prefix = prefix

    def _path(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def mapping(self, key: str) -> Document:
        value = self.raw.get(key)
        if value is None:
            return Document({}, self._path(key) + ".")
        if not isinstance(value, dict):
            raise Invalid(self._path(key), f"expected a mapping, got {quote(value)}")
        return Document(value, self._path(key) + ".")

    def text(self, key: str, default: str = "") -> str:
        value = self.raw.get(key, default)
        if value is None:
            return default
        if not isinstance(value, str):
            raise Invalid(self._path(key), f"expected a string, got {quote(value)}")
        return value

    def items(self, key: str) -> Iterator[tuple[str, Any]]:
        """(path, item) for each item of the list at C{key} (absent = empty)."""
        value = self.raw.get(key)
        if value is None:
            return
        if not isinstance(value, list):
            raise Invalid(self._path(key), f"expected a list, got {quote(value)}")
        for index, item in enumerate(value):
            yield f"{self._path(key)}[{index}]", item

    def texts(self, key: str) -> tuple[str, ...]:
        result = []
        for path, item in self.items(key):
            if not isinstance(item, str):
                raise Invalid(path, f"expected a string, got {quote(item)}")
            result.append(item)
        return tuple(result)

    def string_map(self, key: str) -> dict[str, str]:
        section = self.mapping(key)
        result = {}
        for name, value in section.raw.items():
            if not isinstance(value, str | int | float | bool):
                raise Invalid(section._path(str(name)), f"expected a string, got {quote(value)}")
            # Label and annotation keys repeat in every document: one copy each.
            key = intern(str(name))
            result[key] = str(value).lower() if isinstance(value, bool) else str(value)
        return result


def read_ip(path: str, value: Any) -> str:
    """
    C{value} as an IP address in canonical form (as C{ipaddress} writes it).

    Addresses already in that form, nearly all of them, are recognised by a
    round trip through C{inet_pton} and C{inet_ntop}, twenty times faster
    than C{ipaddress} for IPv6 (a tenth of the build time of 100k entries);
    IPv6 with an embedded IPv4 part is left to C{ipaddress}, which writes
    it differently.
    """
    if isinstance(value, str):
        family = address_family(value)
        if family == socket.AF_INET or "." not in value:
            try:
                if socket.inet_ntop(family, socket.inet_pton(family, value)) == value:
                    return value
            except (OSError, ValueError):
                pass
    try:
        return str(ipaddress.ip_address(value if isinstance(value, str) else ""))
    except ValueError:
        raise Invalid(path, f"{quote(value)} is not an IP address") from None


def is_ip(value: str) -> bool:
    """Whether C{value} is an IP address (an endpoint may also be a host name)."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def port_number(path: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise Invalid(path, f"{quote(value)} is not a port number (1-65535)")
    return value


def is_partial_wildcard(host: str) -> bool:
    """
    Whether C{host} starts with a partial wildcard label (C{*x.example.com}):
    Istio accepts it with a warning, and its DNS proxy, which looks a name
    up as itself and as C{*.} before each of its suffixes, never answers it.
    """
    return host.startswith("*") and not host.startswith("*.")


def read_host(path: str, value: Any) -> str:
    """
    A ServiceEntry host: a DNS name whose first label may be C{*} or, as
    Istio's C{ValidateWildcardDomain} allows, C{*} or C{*-} before a label
    (L{is_partial_wildcard}); C{*} anywhere else is refused.
    """
    if not isinstance(value, str) or not value.strip():
        raise Invalid(path, "empty host")
    host = value.strip().rstrip(".").lower()
    labels = host.split(".")
    first_ok = (labels[0] == "*" and len(labels) > 1) or _PARTIAL_WILDCARD.fullmatch(labels[0])
    if "*" in host and (not first_ok or "*" in ".".join(labels[1:])):
        raise Invalid(
            path,
            f"{quote(value)}: a wildcard must be the first label's start, as in *.example.com",
        )
    if len(host) > 253 or any(
        len(label) > 63 or not ("*" in label or _HOST_LABEL.fullmatch(label)) for label in labels
    ):
        raise Invalid(path, f"{quote(value)} is not a valid host name")
    return host


def exact_host(path: str, value: Any, what: str) -> str:
    """A host name that is not a wildcard (C{what} says what it is, for the message)."""
    host = read_host(path, value)
    if host.startswith("*"):
        raise Invalid(path, f"{quote(host)}: {what} cannot be a wildcard")
    return host


def read_ports(doc: Document) -> tuple[Port, ...]:
    ports = []
    for path, raw in doc.items("ports"):
        if not isinstance(raw, dict):
            raise Invalid(path, f"expected a mapping, got {quote(raw)}")
        port = Document(raw, path + ".")
        number = port_number(path + ".number", raw.get("number", raw.get("port")))
        target = raw.get("targetPort")
        ports.append(
            Port(
                number=number,
                name=intern(port.text("name")),
                protocol=intern(port.text("protocol", "TCP").upper() or "TCP"),
                target_port=(
                    port_number(path + ".targetPort", target) if isinstance(target, int) else None
                ),
            )
        )
    return tuple(ports)


def check_export_to(path: str, values: tuple[str, ...], namespace: str | None = None) -> None:
    """
    Istio's C{exportTo} rules: C{.}, C{*}, C{~} or namespace names, no
    repeats.

    @param namespace: the document's namespace, which C{.} stands for when
        Istio's webhook looks for repeats (C{validateExportTo}: C{.} beside
        the namespace's own name is a duplicate); L{None} where no webhook
        sees the list (a Service's annotation), so only literal repeats count.
    """
    seen: set[str] = set()
    for index, value in enumerate(values):
        if value not in (".", "*", "~") and not is_k8s_label(value):
            raise Invalid(f"{path}[{index}]", f"{quote(value)} is not ., *, ~ or a namespace")
        key = namespace if value == "." and namespace is not None else value
        if key in seen:
            also = f" (. is the document's namespace, {namespace})" if key == namespace else ""
            raise Invalid(f"{path}[{index}]", f"{quote(value)} is repeated{also}")
        seen.add(key)
    if len(values) > 1 and ("~" in values or "*" in values):
        raise Invalid(path, "~ and * cannot be combined with other values")

