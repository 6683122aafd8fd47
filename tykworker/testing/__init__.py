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

from typing import TYPE_CHECKING, Any

from tykworker._proto import coprocess_object_pb2 as object_pb2
from tykworker.testing.objects import load_object, make_object
from tykworker.testing.runner import HookRunner

if TYPE_CHECKING:
    from tykworker.testing.server import ServerError, TykworkerServer

__all__ = [
    "HookRunner",
    "ServerError",
    "TykworkerServer",
    "answered_by_tykworker",
    "load_object",
    "make_object",
]


def answered_by_tykworker(reply: object_pb2.Object) -> str:
    """Why tykworker answered instead of the hook (``"no_hook"``, ``"hook_error"``,
    ``"timeout"``...; the ``X-Tykworker-Error`` header of the answer), ``""`` when the hook
    answered itself."""
    from tykworker.wire.answers import ANSWER_HEADER

    request_side = reply.request.return_overrides.headers.get(ANSWER_HEADER, "")
    return str(request_side or reply.response.headers.get(ANSWER_HEADER, ""))


def __getattr__(name: str) -> Any:
    # The server helper imports grpc: only when asked for.
    if name in ("TykworkerServer", "ServerError"):
        from tykworker.testing import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
