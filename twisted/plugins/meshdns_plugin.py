"""twistd plugin: makes `twistd meshdns` available (the tap lives in meshdns_plugin.tap)."""

from twisted.application.service import ServiceMaker

meshdns = ServiceMaker(
    "meshdns",
    "meshdns_plugin.tap",
    "A mesh-aware DNS proxy: answers ServiceEntry and Kubernetes names, forwards the rest",
    "meshdns",
)
