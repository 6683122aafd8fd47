"""One call: ``coprocess.Object`` bytes -> handler -> reply bytes (and events).

Calling conventions (Tyk's own: ``TykMiddleware.process`` in the gateway's
``coprocess/python/tyk/middleware.py``), chosen by the handler's ``arg_count`` only:

====  ==================================================  ==============================
args  call                                                must return
====  ==================================================  ==============================
3     ``f(request, session, spec)``                       ``(request, session)``
4     ``f(request, session, metadata, spec)``             ``(request, session, metadata)``
5     ``f(request, response, session, metadata, spec)``   anything (``response``)
====  ==================================================  ==============================

``request`` wraps the live ``MiniRequestObject``; ``session``, ``response``, ``spec`` and
``metadata`` (= ``session.metadata``, as in Tyk) are live parts of the received Object.
The reply is that same Object, serialised after the hook mutated it, so every field the
gateway reads back is echoed. Improvements over Tyk, none of which changes a working
plugin: a returned *new* ``SessionState``/``ResponseObject``/``MiniRequestObject`` is copied
into the reply (Tyk silently dropped it) and returned metadata may be a plain ``dict``.

Errors (the answer table; see docs/plugins.md). Whatever happens, the reply is a valid
Object: on any failure it is the *original* request bytes plus an ``answers`` fragment,
so half-done mutations of a failed hook never reach the gateway:

* payload is not an Object          -> ``Reason.BAD_REQUEST`` (400) fragment alone
* auth call with an empty hook name -> 403 ``Plugin auth hook not named`` (``no_hook``),
                                       as the gateway's own drivers refuse it; no lookup
* no handler for the name           -> ``Reason.NO_HOOK`` (500)
* handler raised, returned a wrong
  shape, has an unusable argument
  count, or its bundle cannot load  -> ``Reason.HOOK_ERROR`` (500)
* reply over ``max_message_mb``     -> ``Reason.HOOK_ERROR`` (500), see ``oversized_reply``

Each failure is also noted in ``logs.active_call.failure`` (the reason's code; events:
``no_hook``/``hook_error``), which the worker loop reports to the front for its metrics,
and the API id in ``logs.active_call.api_id`` for log lines.

Async hooks (``async def``): ``start_dispatch``/``start_event`` (what the worker loop
calls) parse and resolve the call at once, as for any hook, and return a coroutine
(``Pending``) instead of the reply; ``dispatch``/``dispatch_event`` run that to its end on
a loop of their own (tests, the plugin test kit); awaiting
it runs the hook (its scope active during each step, ``scope.scoped``) and returns the
reply, with the same answer table. Its failure is noted in the call's own record
(``logs.current_call()``, the worker's task sets it): many async calls run at once.

Invariant: ``dispatch`` and ``dispatch_event`` never raise (``KeyboardInterrupt`` aside);
a ``Pending`` never raises but ``CancelledError`` (the front cancelled the call).
"""

from __future__ import annotations

import asyncio
import json
import logging
import traceback
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Final

from google.protobuf.message import DecodeError

from tykworker._proto import coprocess_common_pb2 as common_pb2
from tykworker._proto import coprocess_mini_request_object_pb2 as request_pb2
from tykworker._proto import coprocess_object_pb2 as object_pb2
from tykworker._proto import coprocess_response_object_pb2 as response_pb2
from tykworker._proto import coprocess_session_state_pb2 as session_pb2
from tykworker.errors import HookError, HookNotFound, PluginLoadError
from tykworker.logs import active_call, current_call
from tykworker.wire import answers
from tykworker.wire.frames import peek_object_header
from tykworker.wire.reasons import Reason
from tykworker.worker.scope import Scope, scoped
from tykworker.worker.tyk.decorators import HandlerDecorator
from tykworker.worker.tyk.event import TykEvent
from tykworker.worker.tyk.gateway import (
    CallContext,
    call_context,
    current,
    enter_call,
    leave_call,
)
from tykworker.worker.tyk.request import TykCoProcessRequest

calls_log = logging.getLogger("tykworker.calls")


#: A handler and the scope its code must run in (``None``: no import isolation needed).
Target = tuple[HandlerDecorator, Scope | None]
#: Finds the handler of an Object; raises ``HookNotFound`` (no such hook) or
#: ``PluginLoadError`` (its bundle cannot be imported).
Resolver = Callable[[object_pb2.Object], Target]
#: Finds an ``@Event`` handler by (name, APIID); ``None`` when there is none.
EventResolver = Callable[[str, str], Target | None]

SUPPORTED_ARG_COUNTS: Final = (3, 4, 5)
#: The reply of an async call, once awaited (see the module docstring).
Pending = Coroutine[Any, Any, bytes]


def dispatch(payload: bytes | bytearray, resolve: Resolver) -> bytes:
    """Run the hook named by the Object in ``payload``; return the reply Object bytes."""
    reply = start_dispatch(payload, resolve)
    return reply if type(reply) is bytes else asyncio.run(reply)  # type: ignore[arg-type]


def start_dispatch(payload: bytes | bytearray, resolve: Resolver) -> bytes | Pending:
    """``dispatch``, but an async hook's reply is ``Pending`` (its hook not started)."""
    try:
        # upb parses any buffer (a large call arrives as the bytearray it was received in)
        obj = object_pb2.Object.FromString(payload)  # type: ignore[arg-type]
    except DecodeError as exc:
        calls_log.warning("undecodable Dispatch payload (%d bytes): %s", len(payload), exc)
        active_call.failure = Reason.BAD_REQUEST.code
        return answers.failure_reply(b"", common_pb2.Unknown, Reason.BAD_REQUEST, False)
    context = CallContext(
        hook=obj.hook_name,
        api_id=obj.spec.get("APIID", ""),
        spec=obj.spec,
        headers=obj.request.headers,
    )
    active_call.api_id = context.api_id
    token = enter_call(context)  # ``call_context``, without a generator per call
    try:
        return _run_dispatch(payload, obj, context, resolve)
    finally:
        leave_call(token)


def _run_dispatch(
    payload: bytes | bytearray, obj: object_pb2.Object, context: CallContext, resolve: Resolver
) -> bytes | Pending:
    """``start_dispatch`` once the Object is parsed, inside its call context."""
    if obj.hook_type == common_pb2.CustomKeyCheck and not obj.hook_name:
        calls_log.warning(
            "auth call with an empty hook name (API %s has no auth_check.name): refused",
            context.api_id,
            extra=context.log_extra(),
        )
        active_call.failure = Reason.NO_HOOK.code
        return bytes(payload + _UNNAMED_AUTH)
    try:
        handler, scope = resolve(obj)
    except HookNotFound as exc:
        calls_log.warning("%s", context.redact(str(exc)), extra=context.log_extra())
        return _failure(payload, obj, Reason.NO_HOOK)
    except Exception as exc:
        _log_failure(context, obj, exc)
        return _failure(payload, obj, Reason.HOOK_ERROR)
    if handler.is_async:
        return _dispatch_async(payload, obj, context, handler, scope)
    try:
        if scope is None:
            call_hook(handler, obj)
        else:
            saved = scope.enter()  # ``scope.active()``, without a generator per call
            try:
                call_hook(handler, obj)
            finally:
                scope.leave(saved)
        drop_ignored_copies(obj)
        return obj.SerializeToString()
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        _log_failure(context, obj, exc)
        return _failure(payload, obj, Reason.HOOK_ERROR)


async def _dispatch_async(
    payload: bytes | bytearray,
    obj: object_pb2.Object,
    context: CallContext,
    handler: HandlerDecorator,
    scope: Scope | None,
) -> bytes:
    """``dispatch``'s second half for an async hook (same answers)."""
    with call_context(context):
        try:
            if scope is None:
                await call_hook_async(handler, obj)
            else:
                await scoped(call_hook_async(handler, obj), scope)
            drop_ignored_copies(obj)
            return obj.SerializeToString()
        except (KeyboardInterrupt, asyncio.CancelledError):
            raise
        except BaseException as exc:
            _log_failure(context, obj, exc)
            current_call().failure = Reason.HOOK_ERROR.code
            return answers.failure_reply(payload, obj.hook_type, Reason.HOOK_ERROR, False)


def oversized_reply(payload: bytes | bytearray, size: int, limit: int) -> bytes:
    """The answer to a call whose hook built a reply of ``size`` bytes, over ``limit``
    (``max_message_mb``): no channel after the worker may carry it (the front's bridge
    decoder and the gRPC peer refuse it), so it gets the ``HOOK_ERROR`` answer instead,
    logged, and the worker keeps serving.

    Invariant: the result is at most ``limit`` bytes for a ``payload`` of at most
    ``limit`` bytes (what the worker's decoder accepts): the original request plus the
    fragment when that fits, else the fragment alone (an Object with only the override,
    like the ``BAD_REQUEST`` answer), the one case where nothing is echoed.
    """
    hook_type, hook = peek_object_header(payload)
    calls_log.error(
        "hook %s built a reply of %d bytes, over max_message_mb (%d bytes): answered %d %r",
        hook or '""',
        size,
        limit,
        Reason.HOOK_ERROR.status,
        Reason.HOOK_ERROR.message,
    )
    current_call().failure = Reason.HOOK_ERROR.code
    reply = answers.failure_reply(payload, hook_type, Reason.HOOK_ERROR, False)
    if len(reply) <= limit:
        return reply
    return answers.failure_reply(b"", hook_type, Reason.HOOK_ERROR, False)


def drop_ignored_copies(obj: object_pb2.Object) -> None:
    """Clear what the gateway never reads back: the text copies ``request.body`` and
    ``response.body`` of a body it also sends (and reads back) as ``raw_body``. Only
    ``raw_body`` becomes the upstream request or the client's response
    (``ObjectPostProcess`` and the Response hook handling in the gateway's
    ``gateway/coprocess.go``), so echoing the copy would only double a UTF-8 body's bytes
    on the way back (serialising, the bridge, the front and the gateway's decoder)."""
    obj.request.ClearField("body")
    if obj.HasField("response"):
        obj.response.ClearField("body")


#: The answer to an auth call without a hook name: 403, the gateway's own drivers' status.
_UNNAMED_AUTH: Final = answers.override_fragment(
    common_pb2.CustomKeyCheck, 403, "Plugin auth hook not named", Reason.NO_HOOK.code
)


def _failure(payload: bytes | bytearray, obj: object_pb2.Object, reason: Reason) -> bytes:
    active_call.failure = reason.code  # the worker loop reports it to the front (metrics)
    return answers.failure_reply(payload, obj.hook_type, reason, False)


def _log_failure(context: CallContext, obj: object_pb2.Object, exc: BaseException) -> None:
    what = "bundle failed to load" if isinstance(exc, PluginLoadError) else "hook failed"
    calls_log.error(
        "%s: %s %s (API %s): %s",
        what,
        common_pb2.HookType.Name(obj.hook_type) if obj.hook_type in HOOK_TYPE_NUMBERS else "?",
        obj.hook_name or '""',
        context.api_id,
        context.redact("".join(traceback.format_exception(exc)).rstrip()),
        extra=context.log_extra(),
    )


HOOK_TYPE_NUMBERS: Final = frozenset(common_pb2.HookType.values())


def call_hook(handler: HandlerDecorator, obj: object_pb2.Object) -> None:
    """Call ``handler`` on ``obj`` with its convention; mutate ``obj`` with the result.

    Raises ``HookError`` for an unsupported argument count or a return value of the wrong
    shape, and whatever the handler raises.
    """
    request = TykCoProcessRequest(obj.request)
    session = obj.session
    if handler.arg_count == 3:
        result = _unpack(handler, handler(request, session, obj.spec), 2)
        _adopt(obj, request, session, result[0], result[1], None)
    elif handler.arg_count == 4:
        result = _unpack(handler, handler(request, session, session.metadata, obj.spec), 3)
        _adopt(obj, request, session, result[0], result[1], result[2])
    elif handler.arg_count == 5:
        response = obj.response
        returned = handler(request, response, session, session.metadata, obj.spec)
        if isinstance(returned, response_pb2.ResponseObject) and returned is not response:
            response.CopyFrom(returned)
    else:
        raise HookError(
            f"hook {handler.name} ({handler.filename}:{handler.lineno}) takes "
            f"{handler.arg_count} positional arguments; hooks take 3, 4 or 5"
        )


async def call_hook_async(handler: HandlerDecorator, obj: object_pb2.Object) -> None:
    """``call_hook`` for an async handler: awaits what it returns."""
    request = TykCoProcessRequest(obj.request)
    session = obj.session
    if handler.arg_count == 3:
        result = _unpack(handler, await handler(request, session, obj.spec), 2)
        _adopt(obj, request, session, result[0], result[1], None)
    elif handler.arg_count == 4:
        returned = await handler(request, session, session.metadata, obj.spec)
        result = _unpack(handler, returned, 3)
        _adopt(obj, request, session, result[0], result[1], result[2])
    elif handler.arg_count == 5:
        response = obj.response
        returned = await handler(request, response, session, session.metadata, obj.spec)
        if isinstance(returned, response_pb2.ResponseObject) and returned is not response:
            response.CopyFrom(returned)
    else:
        raise HookError(
            f"hook {handler.name} ({handler.filename}:{handler.lineno}) takes "
            f"{handler.arg_count} positional arguments; hooks take 3, 4 or 5"
        )


def _unpack(handler: HandlerDecorator, result: object, size: int) -> tuple[Any, ...]:
    if not isinstance(result, (tuple, list)) or len(result) != size:
        expected = ("(request, session)", "(request, session, metadata)")[size - 2]
        raise HookError(
            f"hook {handler.name} returned {type(result).__name__}"
            f"{f' of length {len(result)}' if isinstance(result, (tuple, list)) else ''}; "
            f"expected {expected}"
        )
    return tuple(result)


def _adopt(
    obj: object_pb2.Object,
    request: TykCoProcessRequest,
    session: session_pb2.SessionState,
    new_request: object,
    new_session: object,
    metadata: object,
) -> None:
    """Fold returned values that are not the objects passed in back into ``obj``."""
    if isinstance(new_request, TykCoProcessRequest):
        new_request = new_request.object
    if isinstance(new_request, request_pb2.MiniRequestObject) and new_request is not request.object:
        obj.request.CopyFrom(new_request)
    if metadata is not None and not isinstance(metadata, Mapping):
        raise HookError(f"hook returned metadata of type {type(metadata).__name__}, not a map")
    entries = dict(metadata) if metadata is not None else {}
    if isinstance(new_session, session_pb2.SessionState) and new_session is not session:
        session.CopyFrom(new_session)
    for key, value in entries.items():
        session.metadata[key] = value


def dispatch_event(payload: bytes | bytearray, resolve: EventResolver) -> bytes:
    """``start_event`` run to its end (an async handler on a loop of its own)."""
    reply = start_event(payload, resolve)
    return reply if type(reply) is bytes else asyncio.run(reply)  # type: ignore[arg-type]


def start_event(payload: bytes | bytearray, resolve: EventResolver) -> bytes | Pending:
    """Run the ``@Event`` handler named in a ``coprocess.Event``. The reply is the empty
    ``EventReply`` when it ran, else one carrying the reason (``answers.event_reply``:
    ``bad_request``, ``no_hook``, ``hook_error``), also noted in ``active_call.failure``.
    ``active_call.hook`` is set to the handler name (the worker loop tells the front).
    An async handler: the ``Pending`` reply (its failure goes to ``current_call()``)."""
    active_call.hook = active_call.failure = ""
    try:
        data = json.loads(object_pb2.Event.FromString(payload).payload)  # type: ignore[arg-type]
        event = TykEvent(data)
    except (DecodeError, ValueError) as exc:
        calls_log.warning("undecodable DispatchEvent payload: %s", exc)
        active_call.failure = Reason.BAD_REQUEST.code
        return answers.event_reply(active_call.failure)
    spec = event.spec if isinstance(event.spec, dict) else {}
    name, api_id = str(event.handler_name or ""), str(spec.get("APIID", ""))
    context = CallContext(hook=name, api_id=api_id, spec=spec)
    active_call.hook, active_call.api_id = name, api_id
    with call_context(context):
        target = resolve(name, api_id)
        if target is None:
            active_call.failure = Reason.NO_HOOK.code
            calls_log.warning(
                "no @Event handler %r for API %s", name, api_id, extra=context.log_extra()
            )
        elif target[0].is_async:
            return _event_async(target, event, context)
        else:
            run_event(target, event)
    return answers.event_reply(active_call.failure)


async def _event_async(target: Target, event: TykEvent, context: CallContext) -> bytes:
    with call_context(context):
        await run_event_async(target, event)
    return answers.event_reply(current_call().failure)


async def run_event_async(target: Target, event: TykEvent) -> None:
    """``run_event`` for an async handler."""
    handler, scope = target
    try:
        if scope is None:
            await handler(event, event.spec)
        else:
            await scoped(handler(event, event.spec), scope)
    except (KeyboardInterrupt, asyncio.CancelledError):
        raise
    except BaseException as exc:
        _event_failed(handler, exc)


def run_event(target: Target, event: TykEvent) -> None:
    """Call an ``@Event`` handler as ``f(event, spec)``; log (never raise) its failure."""
    handler, scope = target
    try:
        if scope is None:
            handler(event, event.spec)
        else:
            with scope.active():
                handler(event, event.spec)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        _event_failed(handler, exc)


def _event_failed(handler: HandlerDecorator, exc: BaseException) -> None:
    current_call().failure = Reason.HOOK_ERROR.code
    context = current()
    calls_log.error(
        "event handler %s failed: %s",
        handler.name,
        context.redact("".join(traceback.format_exception(exc)).rstrip()),
        extra={**context.log_extra(), "hook": handler.name},
    )
