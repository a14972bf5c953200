# -*- test-case-name: tests.test_tap -*-
"""
twistd glue: C{twistd meshdns} options -> the meshdns service tree.

Nothing here imports the reactor at module level: twistd chooses and installs
the reactor after it has imported plugins.
"""

from __future__ import annotations

import dataclasses
import ipaddress

from twisted.python import usage

from meshdns_plugin.config import Config, ConfigError, check_exposure, load_config
from meshdns_plugin.entries import EntriesError


class Options(usage.Options):
    """Command-line options of C{twistd meshdns}."""

    optParameters = [
        ["config", "c", None, "meshdns.yaml to read (default: the embedded conf/meshdns.yaml)"],
        ["port", "p", None, "DNS port for UDP and TCP (overrides listen.port)"],
        ["interface", "i", None, "address to listen on (overrides listen.address)"],
    ]

    def postOptions(self) -> None:
        try:
            config = load_config(self["config"])
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        listen = config.listen
        if self["port"] is not None:
            if not self["port"].isdigit() or not 0 <= int(self["port"]) <= 65535:
                raise usage.UsageError(f"--port: {self['port']!r} is not a port number (0-65535)")
            listen = dataclasses.replace(listen, port=int(self["port"]))
        if self["interface"] is not None:
            try:
                address = str(ipaddress.ip_address(self["interface"]))
            except ValueError:
                raise usage.UsageError(
                    f"--interface: {self['interface']!r} is not an IP address"
                ) from None
            listen = dataclasses.replace(listen, address=address)
        config = dataclasses.replace(config, listen=listen)
        try:
            check_exposure(config)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        self["meshConfig"] = config


def makeService(options: Options):
    """
    Build the service tree; invalid entries stop start-up with one line per
    problem (there is no previous table to keep serving yet).
    """
    from meshdns_plugin.service import MeshService

    config: Config = options["meshConfig"]
    try:
        return MeshService(config)
    except EntriesError as e:
        raise SystemExit(f"meshdns: invalid entries:\n{e}") from None
