"""``answered_by_tykworker``: tell a hook's own reply from an answer tykworker made for it."""

from __future__ import annotations

from tykworker._proto import coprocess_object_pb2 as object_pb2
from tykworker.wire.answers import ANSWER_HEADER


def answered_by_tykworker(reply: object_pb2.Object) -> str:
    """Why tykworker answered instead of the hook (``"no_hook"``, ``"hook_error"``,
    ``"timeout"``, ``"crash"``...: the ``X-Tykworker-Error`` header of the answer, in
    ``return_overrides.headers`` or, for Response hooks, ``response.headers``); ``""`` when
    the hook answered itself."""
    request_side = reply.request.return_overrides.headers.get(ANSWER_HEADER, "")
    return str(request_side or reply.response.headers.get(ANSWER_HEADER, ""))
