"""``gateway.TykGateway``: the gateway API Tyk plugins call (``from gateway import
TykGateway as tyk``), plus the per-call context the runtime sets for it.

Semantics kept from Tyk's embedded Python (the gateway's ``coprocess/python/tyk/gateway.py``
and its Go side, ``gateway/coprocess_api.go``):
* ``store_data(key, value, ttl)`` stores under ``"coprocess-data:" + key``, ``ttl`` in
  seconds (``<= 0``: no expiry); ``get_data(key)`` returns ``bytes``, ``b""`` when missing
  or on error. Store errors are logged, never raised into the plugin.
* ``await store_data_async(...)``/``await get_data_async(key)`` (tykworker's, for async
  hooks): the same, without blocking the worker's event loop (``store.StoreThreads``;
  without them, in a test runtime, the store is called directly).
* ``log(message, level)``: ``debug``/``error``/``warning`` or info, to the
  ``tykworker.plugins`` logger with the current hook name in ``extra``.
* ``trigger_event(name, payload)``: there is no call back into the gateway, so it runs the
  local ``@Event`` handlers named ``name`` (see ``plugins.Runtime``), synchronously.

Invariants:
* Values of the current request's ``Authorization``/``Cookie`` headers never reach a log
  line written through this module (they are replaced by ``[redacted]``).
* The runtime binds a store and an event trigger before any plugin code runs
  (``bind``); calls before that are logged and ignored.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

from tykworker.store import Store, StoreThreads

__all__ = ["TykGateway"]

KEY_PREFIX: Final = "coprocess-data:"
#: Request headers whose values are secrets and must never be logged.
SECRET_HEADERS: Final = ("Authorization", "Cookie", "Proxy-Authorization")
REDACTED: Final = "[redacted]"

plugin_log = logging.getLogger("tykworker.plugins")

_LEVELS: Final = {
    "debug": logging.DEBUG,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
}

EventTrigger = Callable[[str, str], int]


class CallContext:
    """What the gateway API knows about the call being served.

    ``headers``: the request's headers, whose secret values (``SECRET_HEADERS``) are read
    at once (a plugin may remove them before it logs) and split into what ``redact``
    replaces (``secrets``) only when something is redacted: most calls log nothing, and
    the split cost ~2 µs per call with a bearer token."""

    __slots__ = ("_raw", "_secrets", "api_id", "hook", "spec")

    def __init__(
        self,
        hook: str = "",
        api_id: str = "",
        spec: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.hook = hook
        self.api_id = api_id
        self.spec: Mapping[str, str] = {} if spec is None else spec
        self._raw: tuple[str | None, ...] = (
            ()
            if headers is None
            else (
                headers.get("Authorization"),  # SECRET_HEADERS, one map lookup each
                headers.get("Cookie"),
                headers.get("Proxy-Authorization"),
            )
        )
        self._secrets: tuple[str, ...] | None = None if self._raw else ()

    @property
    def secrets(self) -> tuple[str, ...]:
        """The values ``redact`` replaces (``secrets_of`` the request's headers)."""
        if self._secrets is None:
            self._secrets = secrets_of(
                {n: v for n, v in zip(SECRET_HEADERS, self._raw, strict=True) if v}
            )
        return self._secrets

    def log_extra(self) -> dict[str, Any]:
        return {"hook": self.hook, "api_id": self.api_id}

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text


_current: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar(
    "tykworker_call", default=None
)
_NO_CALL: Final = CallContext()


@dataclass
class _Binding:
    store: Store | None = None
    trigger: EventTrigger | None = None
    threads: StoreThreads | None = None


_binding = _Binding()


def bind(
    store: Store | None, trigger: EventTrigger | None, threads: StoreThreads | None = None
) -> None:
    """Point the gateway API at a runtime's store, event trigger and store threads."""
    _binding.store = store
    _binding.trigger = trigger
    _binding.threads = threads


def current() -> CallContext:
    """The call being served (an empty context outside calls, e.g. at import time)."""
    return _current.get() or _NO_CALL


def enter_call(context: CallContext) -> contextvars.Token[CallContext | None]:
    """Make ``context`` the current call; ``leave_call`` with the token undoes it (the
    per-call path's form of ``call_context``: no generator per call)."""
    return _current.set(context)


def leave_call(token: contextvars.Token[CallContext | None]) -> None:
    _current.reset(token)


@contextmanager
def call_context(context: CallContext) -> Iterator[CallContext]:
    """Make ``context`` the current call for the gateway API inside the block."""
    token = enter_call(context)
    try:
        yield context
    finally:
        leave_call(token)


def secrets_of(headers: Mapping[str, str]) -> tuple[str, ...]:
    """Secret header values of a request, with their parts (a bearer token without its
    scheme, each cookie value), longest first so that overlapping secrets redact fully."""
    values: set[str] = set()
    for name in SECRET_HEADERS:
        value = headers.get(name)  # one map lookup: this runs on every call
        if not value or not (value := value.strip()):
            continue
        values.add(value)
        if name == "Cookie":
            values.update(part.partition("=")[2].strip() for part in value.split(";"))
        else:
            values.add(value.split(None, 1)[-1])
    if not values:
        return ()
    # Very short fragments would blank out unrelated text; they reveal little anyway.
    return tuple(sorted((v for v in values if len(v) >= 4), key=len, reverse=True))


def data_key(key: str) -> str:
    return KEY_PREFIX + key


def _as_bytes(value: object) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"store_data value must be str or bytes, not {type(value).__name__}")


def _log_store_error(operation: str, key: object, exc: Exception | None) -> None:
    ctx = current()
    reason = ctx.redact(str(exc)) if exc is not None else "no store configured"
    plugin_log.error("%s(%r) failed: %s", operation, key, reason, extra=ctx.log_extra())


class TykGateway:
    """Gateway functions, called on the class (``tyk.log(...)``)."""

    @staticmethod
    def log(message: object, level: str = "info") -> None:
        ctx = current()
        plugin_log.log(
            _LEVELS.get(str(level).lower(), logging.INFO),
            "%s",
            ctx.redact(str(message)),
            extra=ctx.log_extra(),
        )

    @staticmethod
    def log_error(*args: object) -> None:
        TykGateway.log(" ".join(str(a) for a in args), "error")

    @staticmethod
    def store_data(key: str, value: str | bytes, ttl: int = 0) -> None:
        data = _as_bytes(value)
        store = _binding.store
        if store is None:
            _log_store_error("store_data", key, None)
            return
        try:
            store.set(data_key(str(key)), data, int(ttl))
        except Exception as exc:
            _log_store_error("store_data", key, exc)

    @staticmethod
    def get_data(key: str) -> bytes:
        store = _binding.store
        if store is None:
            _log_store_error("get_data", key, None)
            return b""
        try:
            value = store.get(data_key(str(key)))
        except Exception as exc:
            _log_store_error("get_data", key, exc)
            return b""
        return b"" if value is None else value

    @staticmethod
    async def store_data_async(key: str, value: str | bytes, ttl: int = 0) -> None:
        """``store_data`` for async hooks: awaits the store without blocking the loop."""
        data = _as_bytes(value)
        threads = _binding.threads
        if threads is None:
            TykGateway.store_data(key, data, ttl)
            return
        try:
            await threads.set(data_key(str(key)), data, int(ttl))
        except Exception as exc:
            _log_store_error("store_data_async", key, exc)

    @staticmethod
    async def get_data_async(key: str) -> bytes:
        """``get_data`` for async hooks: awaits the store without blocking the loop."""
        threads = _binding.threads
        if threads is None:
            return TykGateway.get_data(key)
        try:
            value = await threads.get(data_key(str(key)))
        except Exception as exc:
            _log_store_error("get_data_async", key, exc)
            return b""
        return b"" if value is None else value

    @staticmethod
    def trigger_event(name: str, payload: str) -> None:
        trigger = _binding.trigger
        if trigger is None or trigger(str(name), str(payload)) == 0:
            plugin_log.debug(
                "trigger_event: no local @Event handler named %r", name, extra=current().log_extra()
            )
