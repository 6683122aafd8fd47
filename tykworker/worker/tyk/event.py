"""``tyk.event``: the event object handed to ``@Event`` handlers.

``TykEvent(json_text)`` exposes the top-level keys of the DispatchEvent payload
(``CoProcessEventWrapper`` in the gateway's ``gateway/coprocess_events.go``) as
attributes: ``message`` (dict with ``Type``, ``Meta``, ``TimeStamp``), ``handler_name``
and ``spec`` (dict with ``APIID``, ``OrgID``). Nested values stay plain
dicts, as in Tyk. Missing keys read as ``None``/empty rather than raising.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["TykEvent"]


class TykEvent:
    """Attribute access over a decoded event payload."""

    message: dict[str, Any]
    handler_name: str
    spec: dict[str, Any]

    def __init__(self, event_json: str | bytes | dict[str, Any]) -> None:
        data = json.loads(event_json) if isinstance(event_json, (str, bytes)) else event_json
        if not isinstance(data, dict):
            raise ValueError("event payload is not a JSON object")
        self.message = {}
        self.handler_name = ""
        self.spec = {}
        self.__dict__.update(data)

    def __repr__(self) -> str:
        kind = self.message.get("Type") if isinstance(self.message, dict) else None
        return f"<TykEvent {kind!r} handler={self.handler_name!r}>"
