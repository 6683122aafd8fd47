"""Answers given to the gateway when a hook cannot produce its own reply.

Pure: no I/O. Used by the front (timeout, crash, overload, draining) and by the worker's
dispatch step (hook raised, unknown hook, bad payload).

How an answer is built without parsing the request: protobuf merges concatenated
encodings, so ``original_object_bytes + fragment`` decodes as the original Object with the
fragment's fields set on top (scalars replaced, map entries added or replaced). The
fragment is a pre-encoded ``Object`` holding only ``request.return_overrides`` (request
hooks) or only ``response.status_code``/``raw_body``/``headers`` (Response hooks, whose
``return_overrides`` the gateway ignores). Everything else the gateway reads back
(``raw_body``, ``url``, ``method``...) is therefore echoed unchanged, as it must be.

Per hook type and reason (fail *closed*, the default):

============  =========================================  ==================================
reason        Pre / Post / PostKeyAuth / auth            Response
============  =========================================  ==================================
timeout       return_overrides 504 "Plugin timeout"      response 504 + JSON error body
crash         return_overrides 502 "Plugin crashed"      response 502 + JSON error body
overload      return_overrides 503 "Plugin overloaded"   response 503 + JSON error body
unavailable   return_overrides 503 "Plugin unavailable"  response 503 + JSON error body
============  =========================================  ==================================

Fail *open* (opt-in per hook type, never for auth): the original bytes unchanged, i.e. the
request or response continues as if the hook had done nothing. Events get an
``EventReply`` whatever happened (the gateway ignores it): empty when the handler ran, else
carrying the reason code in field ``EVENT_ANSWER_FIELD``, which ``EventReply`` does not
declare (the gateway's decoder skips an unknown field; ``tykworker call --event`` reads it
with ``event_answer``), as the ``X-Tykworker-Error`` header marks a Dispatch answer.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Final

from tykworker._proto import coprocess_common_pb2 as common_pb2
from tykworker._proto import coprocess_mini_request_object_pb2 as request_pb2
from tykworker._proto import coprocess_object_pb2 as object_pb2
from tykworker._proto import coprocess_response_object_pb2 as response_pb2
from tykworker._proto import coprocess_return_overrides_pb2 as overrides_pb2
from tykworker.wire.reasons import Reason

RESPONSE_HOOK: Final = common_pb2.Response
#: Header added to every answer tykworker makes on a hook's behalf.
ANSWER_HEADER: Final = "X-Tykworker-Error"


def override_fragment(hook_type: int, status: int, message: str, code: str) -> bytes:
    """Encoded Object fragment that, appended to a request, sets the error answer."""
    headers = {ANSWER_HEADER: code}
    if hook_type == RESPONSE_HOOK:
        body = json.dumps({"error": message}).encode()
        fragment = object_pb2.Object(
            response=response_pb2.ResponseObject(
                status_code=status,
                raw_body=body,
                headers={**headers, "Content-Type": "application/json"},
            )
        )
    else:
        fragment = object_pb2.Object(
            request=request_pb2.MiniRequestObject(
                return_overrides=overrides_pb2.ReturnOverrides(
                    response_code=status, response_error=message, headers=headers
                )
            )
        )
    return fragment.SerializeToString()


@cache
def _cached_fragment(hook_type: int, reason: Reason) -> bytes:
    return override_fragment(hook_type, reason.status, reason.message, reason.code)


def failure_reply(
    original: bytes | bytearray, hook_type: int, reason: Reason, fail_open: bool
) -> bytes:
    """Reply bytes for a Dispatch call that the hook did not answer.

    ``original`` is the request exactly as the gateway sent it. Auth hooks never fail open
    (the caller's settings forbid it), since the gateway would then answer 403 anyway.
    """
    if fail_open:
        return bytes(original)  # no copy when it is bytes already
    return bytes(original + _cached_fragment(hook_type, reason))


#: Undeclared ``EventReply`` field (length-delimited) holding the reason code of an event
#: call tykworker answered for its handler (``no_hook``, ``hook_error``, ``timeout``...).
EVENT_ANSWER_FIELD: Final = 15
_EVENT_ANSWER_TAG: Final = bytes([EVENT_ANSWER_FIELD << 3 | 2])


@cache
def event_reply(code: str = "") -> bytes:
    """The ``EventReply`` of a DispatchEvent: empty when its handler ran, else carrying
    ``code`` (a ``Reason.code``, always shorter than 128 bytes) in ``EVENT_ANSWER_FIELD``."""
    if not code:
        return b""
    data = code.encode()
    return _EVENT_ANSWER_TAG + bytes([len(data)]) + data


def event_answer(reply: bytes) -> str:
    """The reason code an ``event_reply`` carries, ``""`` for an empty (or foreign) one."""
    if len(reply) < 2 or reply[:1] != _EVENT_ANSWER_TAG or len(reply) != 2 + reply[1]:
        return ""
    return reply[2:].decode("utf-8", "replace")
