# -*- test-case-name: tests.test_tap -*-
"""
twistd glue: C{twistd meshdns} options -> the meshdns service tree, through
the public API (L{meshdns_plugin.loadConfig}, L{meshdns_plugin.meshService}),
so that the command and an embedding application build the same thing.

Nothing here imports the reactor at module level: twistd chooses and installs
the reactor after it has imported plugins.
"""

from __future__ import annotations

from twisted.python import usage

from meshdns_plugin import Config, ConfigError, EntriesError, loadConfig, meshService
from meshdns_plugin.config import listen_addresses
from meshdns_plugin.service import override_listen


class Options(usage.Options):
    """Command-line options of C{twistd meshdns}."""

    optParameters = [
        ["config", "c", None, "meshdns.yaml to read (default: the embedded conf/meshdns.yaml)"],
        ["port", "p", None, "DNS port for UDP and TCP (overrides listen.port)"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["interface"] = []

    def opt_interface(self, address: str) -> None:
        """address to listen on; repeat for several (overrides listen.address)"""
        self["interface"].append(address)

    opt_i = opt_interface

    def postOptions(self) -> None:
        try:
            config = loadConfig(self["config"])
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        port = interface = None
        if self["port"] is not None:
            if not self["port"].isdigit() or not 0 <= int(self["port"]) <= 65535:
                raise usage.UsageError(f"--port: {self['port']!r} is not a port number (0-65535)")
            port = int(self["port"])
        if self["interface"]:
            try:
                interface = listen_addresses(self["interface"])
            except ValueError as e:
                raise usage.UsageError(f"--interface: {e}") from None
        try:
            self["meshConfig"] = override_listen(config, port=port, interface=interface)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


def makeService(options: Options):
    """
    Build the service tree; invalid entries stop start-up with one line per
    problem (there is no previous table to keep serving yet).
    """
    config: Config = options["meshConfig"]
    try:
        return meshService(config)
    except EntriesError as e:
        raise SystemExit(f"meshdns: invalid entries:\n{e}") from None
