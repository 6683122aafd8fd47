"""Plugin decorators: ``Hook``, ``Pre``, ``Post``, ``PostKeyAuth``, ``CustomKeyCheck``,
``Response`` and ``Event`` (importable in plugins as ``tyk.decorators``).

A decorator wraps a plain function in a handler object that remembers the function's name
(the hook name the gateway sends) and its calling convention, given as ``arg_count``:

* ``Hook`` keeps Tyk's rule: ``arg_count`` is the number of positional parameters of the
  function (3, 4 or 5 select the conventions of ``worker/dispatch.py``; anything else
  cannot be called as a hook and is answered as a plugin error).
* The typed decorators fix the convention, as their names promised in Tyk (where they never
  worked): ``Pre``/``Post``/``PostKeyAuth`` -> 3 arguments, ``CustomKeyCheck`` -> 4,
  ``Response`` -> 5. A function that cannot take that many positional arguments is rejected
  at decoration time (``TypeError``, so the plugin fails to import with file and line).
* ``Event`` handlers take ``(event, spec)``.
* Any of them may decorate an ``async def`` (``is_async``): the worker awaits it on its
  own event loop, many calls at once (worker/loop.py); the calling convention is the same.
* ``OnStart``/``OnStop`` (lifecycle hooks, sync or async) take no arguments: each worker
  calls every ``OnStart`` once after importing the plugins and before its first call
  (open a connection pool, an HTTP client), and every ``OnStop`` once when it leaves
  after its last call (close them). They are never Dispatch or event handlers.

Invariants:
* Calling a handler calls the function with the same arguments and returns its result; the
  decorator itself adds no behaviour (users' own unit tests call hooks directly).
* While plugin code is being loaded (``collecting()``), every handler created is recorded in
  creation order together with the file and line of its definition; the loader builds the
  per-scope hook table from that record, which is how duplicate names are detected.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from inspect import getfullargspec, iscoroutinefunction
from typing import Any, ClassVar

from tykworker._proto import coprocess_common_pb2 as common_pb2

__all__ = [
    "CustomKeyCheck",
    "Event",
    "HandlerDecorator",
    "Hook",
    "OnStart",
    "OnStop",
    "Post",
    "PostKeyAuth",
    "Pre",
    "Response",
    "getfullargspec",
]

# Stack of lists receiving handlers created while plugin code loads (innermost last).
_collectors: list[list[HandlerDecorator]] = []


class HandlerDecorator:
    """Base of every handler. ``name`` is the hook name, ``arg_count`` the convention."""

    #: The ``coprocess.HookType`` a typed decorator declares (``None``: any hook type).
    hook_type: ClassVar[int | None] = None
    #: Fixed convention of a typed decorator (``None``: counted from the signature).
    convention: ClassVar[int | None] = None

    def __init__(self, f: Callable[..., Any]) -> None:
        if not callable(f):
            raise TypeError(f"@{type(self).__name__} must decorate a function, got {f!r}")
        self.f = f
        self.name: str = getattr(f, "__name__", repr(f))
        self.arg_count: int = self._arg_count(f)
        #: An ``async def``: calling the handler returns a coroutine to await.
        self.is_async: bool = iscoroutinefunction(f)
        functools.update_wrapper(self, f)
        code = getattr(f, "__code__", None)
        self.filename: str = code.co_filename if code else "<unknown>"
        self.lineno: int = code.co_firstlineno if code else 0
        if _collectors:
            _collectors[-1].append(self)

    def _arg_count(self, f: Callable[..., Any]) -> int:
        spec = getfullargspec(f)
        if self.convention is None:
            return len(spec.args)
        required = len(spec.args) - len(spec.defaults or ())
        if required > self.convention or (len(spec.args) < self.convention and not spec.varargs):
            raise TypeError(
                f"@{type(self).__name__} {self.name_of(f)} must accept exactly "
                f"{self.convention} positional arguments ({self.signature_hint()})"
            )
        return self.convention

    @staticmethod
    def name_of(f: Callable[..., Any]) -> str:
        return getattr(f, "__name__", repr(f))

    def signature_hint(self) -> str:
        return {
            3: "request, session, spec",
            4: "request, session, metadata, spec",
            5: "request, response, session, metadata, spec",
            2: "event, spec",
            0: "no arguments",
        }.get(self.convention or 0, "")

    @property
    def is_event(self) -> bool:
        return False

    @property
    def is_lifecycle(self) -> bool:
        """``OnStart``/``OnStop``: called by the worker itself, never by a call."""
        return False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.f(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} at {self.filename}:{self.lineno}>"


class Hook(HandlerDecorator):
    """Tyk's generic hook: the convention is the function's positional-argument count."""


class Pre(HandlerDecorator):
    """Pre hook, called as ``f(request, session, spec)``; returns ``(request, session)``."""

    hook_type = common_pb2.Pre
    convention = 3


class Post(HandlerDecorator):
    """Post hook, called as ``f(request, session, spec)``; returns ``(request, session)``."""

    hook_type = common_pb2.Post
    convention = 3


class PostKeyAuth(HandlerDecorator):
    """Post-auth hook, called as ``f(request, session, spec)``."""

    hook_type = common_pb2.PostKeyAuth
    convention = 3


class CustomKeyCheck(HandlerDecorator):
    """Auth hook, called as ``f(request, session, metadata, spec)``; returns
    ``(request, session, metadata)``. Set ``metadata["token"]`` to authenticate."""

    hook_type = common_pb2.CustomKeyCheck
    convention = 4


class Response(HandlerDecorator):
    """Response hook, called as ``f(request, response, session, metadata, spec)``;
    returns ``response``."""

    hook_type = common_pb2.Response
    convention = 5


class Event(HandlerDecorator):
    """Event handler, called as ``f(event, spec)``; the return value is ignored."""

    convention = 2

    @property
    def is_event(self) -> bool:
        return True


class OnStart(HandlerDecorator):
    """Called once per worker, without arguments, before its first call (sync or async);
    an exception stops the worker from serving (reported like a plugin import error)."""

    convention = 0

    @property
    def is_lifecycle(self) -> bool:
        return True


class OnStop(HandlerDecorator):
    """Called once per worker, without arguments, after its last call (drain, recycling,
    reload, stop); an exception is logged."""

    convention = 0

    @property
    def is_lifecycle(self) -> bool:
        return True


@contextmanager
def collecting() -> Iterator[list[HandlerDecorator]]:
    """Record every handler created inside the block, in creation order."""
    found: list[HandlerDecorator] = []
    _collectors.append(found)
    try:
        yield found
    finally:
        # A stack: blocks nest and never interleave (loading is single-threaded).
        del _collectors[next(i for i, c in enumerate(_collectors) if c is found)]
