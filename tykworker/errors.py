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
    """Bytes and a protocol disagree (bridge/raw framing, control messages, HTTP/2). Catch
    this to handle both sides; raise one of the two subclasses."""


class LocalProtocolError(ProtocolError):
    """We were asked to send something the protocol cannot express (e.g. a frame length or
    call id out of range): a bug on our side, nothing the peer did."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that violate the protocol; the channel is unusable (a decoder
    that raised it stays broken and raises again)."""


class H2ConnectionError(RemoteProtocolError):
    """An HTTP/2 connection error: the connection ends with GOAWAY carrying ``code`` (an
    RFC 9113 error code, ``front.h2.frames.ErrorCode``)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class PluginLoadError(TykWorkerError):
    """Plugin code could not be imported or registered (file and line in the message)."""


class HookError(TykWorkerError):
    """A hook raised or returned something unusable."""


class HookNotFound(TykWorkerError):
    """No handler answers to the Object's hook name (in its bundle or registry)."""


class ExitCode(enum.IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2
    PLUGIN_LOAD_ERROR = 3
    STARTUP_ERROR = 4
    #: ``tykworker call``: the server answered on the hook's behalf (no such hook or event
    #: handler, the hook raised, timeout, crash, overload...), not the hook itself.
    ANSWERED = 5
