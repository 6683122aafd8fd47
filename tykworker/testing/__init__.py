"""Test kit for Tyk plugins served by tykworker (see docs/testing.md).

* ``make_object(hook_type, hook_name="", ...)``: the ``coprocess.Object`` the gateway sends
  for one request, built by the same code as ``tykworker call``; ``load_object(path)``
  reads a call captured by ``tykworker serve --capture``;
* ``HookRunner(middleware=..., event_handlers=None, bundles=None)``: plugins loaded in the
  test process and called through a worker's own code path (``.call(hook_name, obj)``,
  ``.event(handler_name, event)``);
* ``TykworkerServer``: a real server on a temporary socket;
* the pytest plugin (``tykworker.testing.pytest_plugin``, loaded by the ``pytest11`` entry
  point): fixtures ``tyk_hooks`` and ``tykworker_server``.

Runs in the test process only: never imported by the server's processes.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from tykworker.testing.answers import answered_by_tykworker
    from tykworker.testing.objects import load_object, make_object
    from tykworker.testing.runner import HookRunner
    from tykworker.testing.server import ServerError, TykworkerServer

__all__ = [
    "HookRunner",
    "ServerError",
    "TykworkerServer",
    "answered_by_tykworker",
    "load_object",
    "make_object",
]

#: Where each name lives. Imported on first use: the pytest plugin imports this package in
#: every pytest run of every project where tykworker is installed, and the worker code
#: (redis, protobuf) or grpc (the server helper) should cost only the tests that use them.
_HOMES: Final = {
    "HookRunner": "runner",
    "ServerError": "server",
    "TykworkerServer": "server",
    "answered_by_tykworker": "answers",
    "load_object": "objects",
    "make_object": "objects",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
