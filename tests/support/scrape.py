"""
Reading what meshdns reports: its admin endpoint over HTTP (L{scrape}) or
rendered in memory (L{get}), and a Prometheus text exposition as samples
(L{parse}, L{value}).
"""

from __future__ import annotations

import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from twisted.web.resource import getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from meshdns_plugin.ops.admin import AdminService, admin_resource
from meshdns_plugin.service import MeshService

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, by (name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; an absent labelled counter is 0."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    """GET C{path} from the admin endpoint on loopback: (status, body)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def admin_of(mesh: MeshService) -> AdminService:
    (admin,) = [child for child in mesh if isinstance(child, AdminService)]
    return admin


def get(mesh: MeshService, path: str, method: bytes = b"GET") -> tuple[int, str, bytes]:
    """(status, content type, body) of a GET (or C{method}) of C{path}."""
    request = DummyRequest(path.lstrip("/").encode().split(b"/"))
    request.method = method
    admin = admin_of(mesh)
    resource = getChildForRequest(admin_resource(admin.reported, admin.registry), request)
    body = resource.render(request)
    (content_type,) = request.responseHeaders.getRawHeaders(b"content-type") or [b""]
    return request.responseCode or 200, content_type.decode(), body
