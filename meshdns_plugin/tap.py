# -*- test-case-name: tests.unit.test_tap -*-
"""
twistd glue: C{twistd meshdns} options -> the meshdns service tree, through
the public API (L{meshdns_plugin.loadConfig}, L{meshdns_plugin.meshService}),
so that the command and an embedding application build the same thing.

Every start-up fault ends the process with one line on stderr (the option,
the file and key, or the address and port) and exit code 1: no twistd usage
text, no traceback.

Nothing here imports the reactor at module level: twistd chooses and installs
the reactor after it has imported plugins.
"""

from __future__ import annotations

import gc
import sys
from typing import NoReturn

from twisted.application import service
from twisted.logger import Logger
from twisted.python import usage

from meshdns_plugin import Config, ConfigError, EntriesError, loadConfig, meshService
from meshdns_plugin.config import listen_addresses, override_listen
from meshdns_plugin.ops.capture import RECORD_PATH
from meshdns_plugin.ops.captureguard import CaptureGuard, CaptureLoopError
from meshdns_plugin.service import ListenError

_log = Logger()


def _exit(line: str) -> NoReturn:
    """
    End start-up with C{line} on the process's own stderr and exit code 1.

    Once twistd has started logging, C{sys.stderr} is redirected into the
    log, where a message passed to L{SystemExit} would become an error line
    of the log, not a line on stderr: the line goes to both.
    """
    _log.critical("{line}", line=line)
    print(line, file=sys.__stderr__, flush=True)
    raise SystemExit(1)


class Options(usage.Options):
    """Command-line options of C{twistd meshdns}."""

    optParameters = [
        ["config", "c", None, "meshdns.yaml to read (default: the embedded conf/meshdns.yaml)"],
        ["port", "p", None, "DNS port for UDP and TCP (overrides listen.port)"],
        ["capture-record", None, RECORD_PATH,
         "what meshdns capture install recorded, read when the rules cannot be listed"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["interface"] = []

    def opt_interface(self, address: str) -> None:
        """address to listen on; repeat for several (overrides listen.address)"""
        self["interface"].append(address)

    opt_i = opt_interface

    def parseOptions(self, options: list[str] | None = None) -> None:
        """
        Parse the options; a bad one ends start-up with one line naming it.

        twistd would print its usage text (every option of every plugin)
        before the one line that says what is wrong; C{--help} still prints
        it.
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            raise SystemExit(f"meshdns: {e}") from None

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


class TwistdRoot(service.MultiService):
    """
    The service twistd starts: the meshdns service, whose DNS listeners are
    bound here (as root, before twistd's C{--uid} drops privileges), after a
    L{CaptureGuard}. A port that cannot be bound, or DNS capture that would
    loop meshdns's upstream queries, ends start-up in one line (L{_exit}).
    """

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except ListenError as e:
            _exit(f"meshdns: {e}")

    def startService(self) -> None:
        try:
            super().startService()
        except CaptureLoopError as e:
            _exit(f"meshdns: {e}")


#: Allocations between two young-generation collections (Python's default:
#: 700). A table build makes millions of objects that all stay alive, and
#: with the default the collector scans them again and again: about a third
#: of a 20k-host build. The collector stays on (switching it off, even for a
#: build, stops it for every thread of the process).
GC_THRESHOLDS = (50_000, 10, 10)


def makeService(options: Options) -> TwistdRoot:
    """
    Build the service tree; invalid entries stop start-up with one line per
    problem (there is no previous table to keep serving yet).
    """
    gc.set_threshold(*GC_THRESHOLDS)
    config: Config = options["meshConfig"]
    try:
        mesh = meshService(config)
    except EntriesError as e:
        raise SystemExit(f"meshdns: invalid entries:\n{e}") from None
    root = TwistdRoot()
    guard = CaptureGuard(mesh.forwarder.servers, config.listen.port, options["capture-record"])
    guard.setServiceParent(root)
    mesh.setServiceParent(root)
    return root
