"""Control messages on the status pipe: what the front and workers tell the supervisor.

One pipe whose read end the supervisor watches; the front and every worker write CONTROL
frames (msgpack maps with ``op`` and ``pid``) to it. Each message is written with a single
``os.write`` of less than ``PIPE_BUF`` bytes, so writes from many processes never
interleave.
"""

from __future__ import annotations

import errno
import os
import select
from typing import Any

import msgpack

from tykworker.wire.frames import FrameKind, encode_frame

PIPE_BUF = select.PIPE_BUF


def encode_control(op: str, **fields: Any) -> bytes:
    return encode_frame(FrameKind.CONTROL, 0, msgpack.packb({"op": op, **fields}))


def decode_control(payload: bytes) -> dict[str, Any]:
    message = msgpack.unpackb(payload)
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        raise ValueError("control message without op")
    return message


def report(fd: int, op: str, **fields: Any) -> None:
    """Send one control message to the supervisor through the status pipe."""
    frame = encode_control(op, pid=os.getpid(), **fields)
    if len(frame) >= PIPE_BUF:
        raise ValueError("control message too large for an atomic pipe write")
    try:
        os.write(fd, frame)
    except OSError as exc:  # supervisor gone: nothing to report to
        if exc.errno not in (errno.EPIPE, errno.EBADF):
            raise
