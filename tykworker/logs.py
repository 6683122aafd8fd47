"""Logging set-up: one handler on stderr, text or JSON lines, configured once in cli/commands.py.

Every process (supervisor, front, workers) inherits the configuration through ``fork``.
Call-path lines carry ``call_id``, ``hook``, ``api_id``, ``worker_pid`` and ``generation``;
both formats print them. Sensitive header values are never passed to loggers.

How the fields get there without every call site passing them:

* ``bind_process(worker_pid=..., generation=...)``: fields of the process, added to every
  record it logs (a worker binds them right after ``fork``).
* ``active_call``: the sync call this process is serving. A worker serves one sync call at
  a time, so one mutable record is enough: the worker loop fills it
  (``begin_call``/``end_call``) and ``dispatch`` adds the API id once it has parsed the
  Object. An async call (many run at once on the worker's event loop) has a record of its
  own, in ``task_call`` (a context variable: each asyncio task sees its own);
  ``current_call()`` is the one that applies. The handler's ``ContextFilter`` copies it
  into every record logged during the call, plugin log lines included. Fields a call site
  passes in ``extra`` win.
* ``SlowCallLog``: a daemon thread in the worker that, when the active call has run past
  the threshold, logs one record naming the call (id, hook, API, elapsed) whose text is
  the Python stack of the thread running the hook. The worker is not interrupted.

Invariants: ``begin_call``/``end_call`` are a few attribute writes (they run on every
call); the slow-call thread costs nothing per call (it reads ``active_call``, it is never
notified) and reports each call at most once.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

_STANDARD: Final = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
#: Seconds the slow-call thread sleeps while no call runs, at least.
_IDLE_FLOOR: Final = 0.05
#: Innermost frames shown in a slow-call record (faulthandler's limit too).
_MAX_FRAMES: Final = 100

slow_log = logging.getLogger("tykworker.slow")


@dataclass(slots=True)
class ActiveCall:
    """The call this process is serving; ``call_id == 0``: none."""

    call_id: int = 0
    hook: str = ""
    api_id: str = ""
    started: float = 0.0  # time.monotonic()
    failure: str = ""  # reasons.Reason.code when tykworker answered for the hook
    #: Called once with this record when the call ends (its trace span, worker/tracing.py);
    #: an async call's record takes it over from the active call.
    on_end: Callable[[ActiveCall], None] | None = None


active_call: Final = ActiveCall()
#: The record of the async call whose task is running (unset outside async calls).
task_call: Final[contextvars.ContextVar[ActiveCall | None]] = contextvars.ContextVar(
    "tykworker_task_call", default=None
)
_process_fields: dict[str, object] = {}


def bind_process(**fields: object) -> None:
    """Add ``fields`` to every record this process logs from now on."""
    _process_fields.update(fields)


def begin_call(call_id: int, hook: str) -> None:
    call = active_call
    call.hook, call.api_id, call.failure = hook, "", ""
    call.started = time.monotonic()
    call.call_id = call_id  # last: the slow-call thread keys on it


def end_call() -> None:
    active_call.call_id = 0


def current_call() -> ActiveCall:
    """The record of the call being served here: an async call's own inside its task,
    else ``active_call``."""
    return task_call.get() or active_call


class ContextFilter(logging.Filter):
    """Adds the process fields and the active call's fields to records lacking them."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = record.__dict__
        for key, value in _process_fields.items():
            fields.setdefault(key, value)
        call = task_call.get() or active_call
        if call.call_id:
            fields.setdefault("call_id", call.call_id)
            fields.setdefault("hook", call.hook)
            if call.api_id:
                fields.setdefault("api_id", call.api_id)
        return True


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items() if v is not None)
        line = (
            f"{stamp}.{int(record.msecs):03d} {record.levelname:<7} [{record.process}] "
            f"{record.name}: {record.getMessage()}"
        )
        if extras:
            line += f" ({extras})"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "pid": record.process,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(_extras(record))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def configure(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    os.environ.setdefault("PYTHONFAULTHANDLER", "1")


class SlowCallLog:
    """Logs the stack of calls that run longer than ``threshold`` seconds (see module doc).

    The thread sleeps until the active call's deadline (or ``max(threshold, 50 ms)`` while
    idle), then samples the stack of ``thread_id`` (default: the thread that created it)
    with ``sys._current_frames``. A hook stuck in C code that holds the GIL cannot be
    sampled here; the hook timeout's SIGABRT dump covers that case.
    """

    def __init__(
        self, threshold: float, call: ActiveCall = active_call, thread_id: int | None = None
    ) -> None:
        self.threshold = threshold
        self.call = call
        self.thread_id = threading.get_ident() if thread_id is None else thread_id
        self.reported = 0
        self._stopped = threading.Event()
        # not ``_thread``: mypyc would name its C field ``__thread``, a C keyword
        self._sampler = threading.Thread(target=self._run, name="tykworker-slow-calls", daemon=True)

    def start(self) -> SlowCallLog:
        self._sampler.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._sampler.join()

    def _run(self) -> None:
        while not self._stopped.wait(self.check(time.monotonic())):
            pass

    def check(self, now: float) -> float:
        """Report the active call if it is past the threshold; return how long to sleep."""
        call = self.call
        call_id, started = call.call_id, call.started
        if not call_id or call_id == self.reported or call.call_id != call_id:
            return max(self.threshold, _IDLE_FLOOR)
        remaining = started + self.threshold - now
        if remaining > 0:
            return remaining
        self.reported = call_id
        frame = sys._current_frames().get(self.thread_id)
        stack = "".join(traceback.format_stack(frame, _MAX_FRAMES)) if frame else "(no frame)"
        if call.call_id == call_id:  # still the same call: the stack is its stack
            self._report(call, now - started, stack)
        return max(self.threshold, _IDLE_FLOOR)

    def _report(self, call: ActiveCall, elapsed: float, stack: str) -> None:
        slow_log.warning(
            "slow call %d: hook %r (API %s) running for %.3fs; Python stack:\n%s",
            call.call_id,
            call.hook,
            call.api_id or "?",
            elapsed,
            stack.rstrip(),
            extra={
                "call_id": call.call_id,
                "hook": call.hook,
                "api_id": call.api_id,
                "elapsed": round(elapsed, 6),
            },
        )
