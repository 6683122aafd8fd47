"""The ``tykworker`` command: serve, status, reload, call; and the one gateway-shaped Object
builder (``objects``) that ``call`` and the tests share."""

from tykworker.cli.commands import main

__all__ = ["main"]
