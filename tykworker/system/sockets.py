"""Unix socket paths: claiming a path safely and binding a listener with its final mode.

``claim_unix_path`` refuses a path that holds anything but a socket, refuses a socket
something is listening on, and removes a stale one. ``bind_unix_listener`` creates a socket
with its final mode from the start (umask around ``bind``), then gives it its group: it is
never more open than asked, even briefly.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from pathlib import Path

from tykworker.errors import ConfigError


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


def path_identity(path: str) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of what is at ``path`` now (None: nothing)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


def unlink_if_same(path: str, identity: tuple[int, int] | None) -> None:
    """Remove ``path`` if it is still the file ``identity`` named: a socket a new server
    has bound at the same path since (after ours stopped listening) is left alone."""
    if identity is not None and path_identity(path) == identity:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
