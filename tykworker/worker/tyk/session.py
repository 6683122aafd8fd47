"""``tyk.session``: the protobuf session classes under the names Tyk exported."""

from __future__ import annotations

from tykworker._proto.coprocess_session_state_pb2 import (
    AccessDefinition,
    AccessSpec,
    BasicAuthData,
    JWTData,
    Monitor,
    SessionState,
)

TykSession = SessionState

__all__ = [
    "AccessDefinition",
    "AccessSpec",
    "BasicAuthData",
    "JWTData",
    "Monitor",
    "SessionState",
    "TykSession",
]
