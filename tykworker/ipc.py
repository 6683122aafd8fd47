"""Sockets and control messages between tykworker processes.

* The **status pipe**: one pipe whose read end the supervisor watches; the front and every
  worker write CONTROL frames (msgpack maps with ``op`` and ``pid``) to it. Each message is
  written with a single ``os.write`` of less than ``PIPE_BUF`` bytes, so writes from many
  processes never interleave.
* **Unix socket paths**: ``claim_unix_path`` refuses a path that holds anything but a
  socket, refuses a socket something is listening on, and removes a stale one.
  ``bind_unix_listener`` creates a socket with its final mode from the start (umask around
  ``bind``), then gives it its group: it is never more open than asked, even briefly.
* **Worker credentials**: ``drop_privileges`` (setgroups, setgid, setuid, in that order,
  then re-arms the parent-death signal the kernel clears on a credential change).
"""

from __future__ import annotations

import ctypes
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
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


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


def bind_unix_listener(
    path: Path, mode: int, backlog: int = 512, group: int | None = None
) -> socket.socket:
    """A listening Unix stream socket at ``path`` created with ``mode`` (no window during
    which it has wider permissions: the umask is set around ``bind``), owned by ``group``
    when given."""
    claim_unix_path(str(path))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o777 & ~mode)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, mode)
    set_group(str(path), group)
    sock.listen(backlog)
    return sock


def set_group(path: str, gid: int | None) -> None:
    """Give ``path`` the group ``gid`` (None: leave it). Raises ConfigError if not allowed
    (a non-root owner must be a member of the group)."""
    if gid is None:
        return
    try:
        os.chown(path, -1, gid, follow_symlinks=False)
    except PermissionError as exc:
        raise ConfigError(f"cannot give {path} the group {gid}: {exc.strerror}") from exc


def prctl(option: int, value: int) -> bool:
    """Linux ``prctl(option, value)``; False where unavailable."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) == 0  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return False


def drop_privileges(uid: int, gid: int, groups: tuple[int, ...], death_signal: int) -> None:
    """Become ``uid``/``gid`` with exactly ``groups`` as supplementary groups, for good
    (real, effective and saved ids). Raises PermissionError unless running as root (or
    already those ids)."""
    if (os.getuid(), os.getgid()) == (uid, gid) and set(os.getgroups()) == set(groups):
        return
    os.setgroups(list(groups))
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    # The kernel clears PR_SET_PDEATHSIG when credentials change: arm it again.
    prctl(PR_SET_PDEATHSIG, death_signal)
