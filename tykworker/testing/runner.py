"""``HookRunner``: run plugin hooks in the test process, the way a worker runs them.

The plugins are loaded by ``worker.plugins.load_runtime`` and every call goes through
``Runtime.dispatch`` / ``Runtime.dispatch_event`` as bytes, exactly as in a worker: the same
calling conventions, ``tyk.*`` and ``gateway`` imports, import isolation per folder and
bundle, and the same answers when a hook raises, returns a wrong shape or does not exist
(the original Object plus ``X-Tykworker-Error`` in ``return_overrides.headers``, or in
``response.headers`` for Response hooks; see docs/plugins.md). ``store_data`` and
``get_data`` use a throw-away embedded store in a temporary folder, removed by ``close()``.

Differences from a real server, by design: no deadline (a hook that hangs hangs the test),
one process (module globals are shared by all calls, as in one worker), and the ``tyk``,
``gateway`` and ``coprocess_*_pb2`` shims are installed in the test process's
``sys.modules``. For timeouts, crashes or several workers, use the ``tykworker_server``
fixture. Runs in the test process only.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import Any

from tykworker import logs
from tykworker._proto import coprocess_object_pb2 as object_pb2
from tykworker.config import Settings
from tykworker.worker.plugins import Runtime, load_runtime

StrPath = str | PathLike[str]


class HookRunner:
    """Plugins of ``middleware`` (and ``event_handlers``, ``bundles``) loaded in-process.

    Loading raises ``tykworker.errors.PluginLoadError`` (file, line, traceback) when a
    plugin does not import, as a worker refuses to start. A folder that does not exist has
    no handlers. Use as a context manager, or call ``close()``.
    """

    def __init__(
        self,
        middleware: StrPath | None = None,
        event_handlers: StrPath | None = None,
        bundles: StrPath | None = None,
    ) -> None:
        self._tmp = Path(tempfile.mkdtemp(prefix="tykworker-test-"))
        missing = self._tmp / "none"  # a folder that never exists: no handlers
        settings = Settings(
            middleware=str(middleware if middleware is not None else missing),
            event_handlers=str(event_handlers if event_handlers is not None else missing),
            bundles=None if bundles is None else str(bundles),
            runtime_dir=str(self._tmp / "runtime"),
        )
        try:
            self.runtime: Runtime = load_runtime(settings)
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise
        #: Why tykworker answered the last call for the hook (``"no_hook"``,
        #: ``"hook_error"``, ``"bad_request"``), ``""`` when the hook answered itself.
        self.last_failure = ""

    @property
    def hooks(self) -> list[str]:
        """Names of the middleware folder's hooks."""
        return sorted(self.runtime.middleware.hooks)

    @property
    def event_handlers(self) -> list[str]:
        """Names of the ``@Event`` handlers of the event handler and middleware folders."""
        events = {*self.runtime.event_handlers.events, *self.runtime.middleware.events}
        return sorted(events)

    def call(self, hook_name: str, obj: object_pb2.Object) -> object_pb2.Object:
        """Call hook ``hook_name`` with (a copy of) ``obj``; return the reply Object.

        ``obj`` is left unchanged. The reply is what the gateway would get back."""
        sent = object_pb2.Object()
        sent.CopyFrom(obj)
        sent.hook_name = hook_name
        return object_pb2.Object.FromString(self.call_raw(sent.SerializeToString(), hook_name))

    def call_raw(self, payload: bytes, hook_name: str = "") -> bytes:
        """``Dispatch`` with encoded Object bytes, as a worker receives them."""
        self.runtime.activate()
        logs.begin_call(1, hook_name)
        try:
            return self.runtime.dispatch(payload)
        finally:
            self.last_failure = logs.active_call.failure
            logs.end_call()

    def event(self, handler_name: str, event: Mapping[str, Any]) -> str:
        """Deliver an event to the ``@Event`` handler ``handler_name``, as ``DispatchEvent``.

        ``event`` is the event message (``{"Type": "AuthFailure", "Meta": {...}}``) or a
        whole payload (with ``"message"``, and optionally ``"spec"``). Returns
        ``last_failure``: ``""`` when the handler ran without raising, ``"no_hook"`` when
        there is no such handler, ``"hook_error"`` when it raised (logged, as in a worker).
        """
        payload: dict[str, Any] = dict(event) if "message" in event else {"message": dict(event)}
        payload["handler_name"] = handler_name
        payload.setdefault("spec", {"APIID": "api-1", "OrgID": "org-1"})
        message = object_pb2.Event(payload=json.dumps(payload))
        self.runtime.activate()
        logs.begin_call(1, handler_name)
        try:
            self.runtime.dispatch_event(message.SerializeToString())
        finally:
            self.last_failure = logs.active_call.failure
            logs.end_call()
        return self.last_failure

    def get_data(self, key: str) -> bytes:
        """What ``TykGateway.get_data(key)`` returns now (``b""`` when missing)."""
        from tykworker.worker.tyk.gateway import TykGateway

        self.runtime.activate()
        return TykGateway.get_data(key)

    def store_data(self, key: str, value: str | bytes, ttl: int = 0) -> None:
        """``TykGateway.store_data``: seed the store before a call."""
        from tykworker.worker.tyk.gateway import TykGateway

        self.runtime.activate()
        TykGateway.store_data(key, value, ttl)

    def close(self) -> None:
        """Close the store and remove the temporary folder (idempotent)."""
        if self._tmp.exists():
            self.runtime.close()
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> HookRunner:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
