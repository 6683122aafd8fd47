"""Exception hierarchy and process exit codes.

Every error tykworker raises on purpose derives from ``TykWorkerError``. Exit codes are a
contract with systemd and operators: ``PLUGIN_LOAD_ERROR`` at first start means "fix the
plugins", and systemd must not crash-loop on it (``RestartPreventExitStatus=3``).
"""

from __future__ import annotations

import enum


class TykWorkerError(Exception):
    """Base of all tykworker errors."""


class ConfigError(TykWorkerError):
    """A setting is invalid; the message names its source and key."""


class ProtocolError(TykWorkerError):
    """A frame violates the bridge/raw framing. The decoder that raised stays broken."""


class ChannelClosed(TykWorkerError):
    """The peer of a bridge/control channel went away (EOF or OSError)."""


class PluginLoadError(TykWorkerError):
    """Plugin code could not be imported or registered (file and line in the message)."""


class HookError(TykWorkerError):
    """A hook raised or returned something unusable."""


class ExitCode(enum.IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2
    PLUGIN_LOAD_ERROR = 3
    STARTUP_ERROR = 4
