"""Why tykworker answered a call instead of the hook: status, message and code name.

Apart from answers.py (which builds the protobuf fragments) so that the pure router
imports no generated protobuf module.
"""

from __future__ import annotations

import enum


class Reason(enum.Enum):
    """Why tykworker answered instead of the hook. Value = (status, message)."""

    TIMEOUT = (504, "Plugin timeout")
    CRASH = (502, "Plugin crashed")
    OVERLOAD = (503, "Plugin overloaded")
    UNAVAILABLE = (503, "Plugin unavailable")
    HOOK_ERROR = (500, "Plugin error")
    NO_HOOK = (500, "Plugin hook not found")
    BAD_REQUEST = (400, "Malformed plugin call")

    @property
    def status(self) -> int:
        return self.value[0]

    @property
    def message(self) -> str:
        return self.value[1]

    @property
    def code(self) -> str:
        """Short machine name, used in the X-Tykworker-Error header and in metrics."""
        return self.name.lower()
