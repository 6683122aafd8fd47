"""What a child process receives from the supervisor when it is forked.

The supervisor fills one of these in before ``fork``; the child reads it after. They carry
descriptors and paths, never live objects of the supervisor, so the role packages share
them without importing one another (``supervisor/`` never imports ``front/`` or
``worker/``: it is handed their entry points, see ``Children``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import socket

    from tykworker.config import Settings


@dataclass(frozen=True, slots=True)
class FrontSpec:
    """What the supervisor hands the front it forks."""

    bridge_sock: socket.socket
    # Its own channel to the supervisor (wire/control.py): status out, live settings in.
    channel_fd: int
    scoreboard_path: Path
    # The public Unix listeners the supervisor bound (and keeps, so that they outlive a
    # front); None: the front binds its own (grpcio front, TCP address, no raw socket).
    grpc_sock: socket.socket | None = None
    raw_sock: socket.socket | None = None


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What the supervisor hands a worker it forks."""

    generation: int
    seat: int  # the pool seat it fills (pool.py), 0..workers-1
    index: int  # its scoreboard slot (scoreboard.py)
    bridge_path: Path
    channel_fd: int  # its own channel to the supervisor, for WorkerReady only
    scoreboard_path: Path
    # (uid, gid, groups) to switch to before importing plugins; None: keep the parent's
    identity: tuple[int, int, tuple[int, ...]] | None = None


@dataclass(frozen=True, slots=True)
class Children:
    """The entry points of the processes the supervisor forks; each runs in the child only
    and returns its exit code. The command line wires them in, so that importing the
    supervisor never imports the front (grpc) or the worker (plugin code)."""

    front: Callable[[Settings, FrontSpec], int]
    worker: Callable[[Settings, WorkerSpec], int]
