"""Sockets and control messages between tykworker processes.

* The **status pipe**: one pipe whose read end the supervisor watches; the front and every
  worker write CONTROL frames (msgpack maps with ``op`` and ``pid``) to it. Each message is
  written with a single ``os.write`` of less than ``PIPE_BUF`` bytes, so writes from many
  processes never interleave.
* **Unix socket paths**: ``claim_unix_path`` refuses a path that holds anything but a
  socket, refuses a socket something is listening on, and removes a stale one.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import stat
from pathlib import Path
from typing import Any

import msgpack

from .errors import ConfigError
from .protocol import FrameKind, encode_frame

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


def claim_unix_path(path: str) -> None:
    """Make ``path`` free for a new listening socket, safely.

    Raises ConfigError if it exists and is not a socket, or if a server answers on it.
    A stale socket (nothing listening) is removed.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # stale: nobody listens
        return
    finally:
        probe.close()
    raise ConfigError(f"another server is already listening on {path}")


def bind_unix_listener(path: Path, mode: int, backlog: int = 512) -> socket.socket:
    """A listening Unix stream socket at ``path`` created with ``mode`` (no window during
    which it has wider permissions: the umask is set around ``bind``)."""
    claim_unix_path(str(path))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o777 & ~mode)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, mode)
    sock.listen(backlog)
    return sock
