"""``tyk.request``: the request wrapper handed to hooks as their ``request`` argument.

Invariant: ``TykCoProcessRequest.object`` is the live ``coprocess.MiniRequestObject`` of the
call being served (not a copy), so every helper below and every direct edit of
``request.object`` lands in the reply. Protobuf maps read missing keys as ``""``.
"""

from __future__ import annotations

from tykworker._proto import coprocess_mini_request_object_pb2 as request_pb2

__all__ = ["TykCoProcessRequest"]


class TykCoProcessRequest:
    """Helpers over ``MiniRequestObject`` with the names Tyk's embedded Python used."""

    __slots__ = ("object",)

    def __init__(self, obj: request_pb2.MiniRequestObject) -> None:
        self.object = obj

    def add_header(self, key: str, value: str) -> None:
        """Set (replace) request header ``key`` before the request goes upstream."""
        self.object.set_headers[key] = value

    def delete_header(self, key: str) -> None:
        """Remove request header ``key`` before the request goes upstream."""
        self.object.delete_headers.append(key)

    def add_param(self, key: str, value: str) -> None:
        """Set (replace) query parameter ``key``."""
        self.object.add_params[key] = value

    def delete_param(self, key: str) -> None:
        """Remove query parameter ``key``."""
        self.object.delete_params.append(key)

    def get_header(self, key: str) -> str | None:
        """Inbound header ``key`` (exact, Go-canonical name such as ``Authorization``),
        or ``None`` when the request has no such header."""
        if key in self.object.headers:
            return self.object.headers[key]
        return None

    def __repr__(self) -> str:
        return f"<TykCoProcessRequest {self.object.method} {self.object.url}>"
