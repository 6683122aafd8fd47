"""``tyk.object``: ``TykCoProcessObject``, the view of one Dispatch call Tyk's dispatcher
built. Offered for plugins that construct it in their own tests; tykworker's dispatch
works on the protobuf ``Object`` directly.

Invariant: every attribute is a live part of the wrapped ``Object``; ``dump()`` serialises
that same message.
"""

from __future__ import annotations

from typing import Final

from tykworker._proto import coprocess_common_pb2 as common_pb2
from tykworker._proto import coprocess_object_pb2 as object_pb2
from tykworker.worker.tyk.request import TykCoProcessRequest

__all__ = ["TykCoProcessObject"]

HOOK_TYPE_NAMES: Final = {
    common_pb2.Pre: "pre",
    common_pb2.Post: "post",
    common_pb2.PostKeyAuth: "postkeyauth",
    common_pb2.CustomKeyCheck: "customkeycheck",
    common_pb2.Response: "response",
}


class TykCoProcessObject:
    """``request`` (wrapper), ``session``, ``spec``, ``metadata``, ``response``,
    ``hook_name`` and ``hook_type`` (``''``, ``'pre'``, ``'post'``, ``'postkeyauth'``,
    ``'customkeycheck'`` or ``'response'``)."""

    def __init__(self, message: bytes | object_pb2.Object) -> None:
        if isinstance(message, bytes):
            message = object_pb2.Object.FromString(message)
        self.object = message
        self.request = TykCoProcessRequest(message.request)
        self.session = message.session
        self.spec = message.spec
        self.metadata = message.metadata
        self.response = message.response
        self.hook_name = message.hook_name
        self.hook_type = HOOK_TYPE_NAMES.get(message.hook_type, "")

    def dump(self) -> bytes:
        return self.object.SerializeToString()
