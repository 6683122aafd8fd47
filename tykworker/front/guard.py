"""The front's public connections (gRPC and raw): how many, for how long, how many bytes.

One ``Guard`` per front (``Guard.shared``: the native and the raw server of one event loop
share it). It owns:

* the connection cap: at most ``cap`` public connections at once. The cap is
  ``max_connections``, or (0) the descriptor limit, raised to its hard limit once, minus a
  reserve kept for the bridge (workers' links, listeners, logs, metrics):
  ``max(64 + 4 x workers, limit // 4)``. A connection over the cap evicts the oldest
  connection still in its handshake (an HTTP/2 client that has not sent its preface and
  SETTINGS: stalled or hostile); if there is none, the new connection is closed at once;
* the timer that ticks every connection every ``period`` seconds (a quarter of the
  shortest timeout, at most 1 s): preface, idle and body timeouts are checked there, not
  per call (no clock read, no syscall on the call path);
* the ``BufferPool`` every connection counts its held bytes in (``total_buffer_mb``).

Invariants:
* ``admit`` is the only way in and ``leave`` the only way out; ``len(connections)`` never
  exceeds ``cap``.
* Closing connections for a reason is logged once per tick and reason, with a count: a
  flood of hostile connections cannot flood the log.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Protocol

from tykworker.config import Settings
from tykworker.front.h2.state import BufferPool
from tykworker.system import kernel

log = logging.getLogger("tykworker.front")


class Guarded(Protocol):
    """What a public connection (native ``H2Protocol``, ``RawProtocol``) offers the guard."""

    @property
    def handshaking(self) -> bool:
        """Still in its handshake: may be evicted for a newcomer at the cap."""
        ...

    def tick(self, now: float) -> str | None:
        """Check timeouts; returns why the connection is being closed, or None."""
        ...

    def evict(self) -> None:
        """Close at once (the cap needs the slot)."""
        ...


def default_cap(limit: int, workers: int) -> int:
    """Connections allowed for a descriptor limit, keeping the bridge's reserve."""
    return max(16, limit - max(64 + 4 * workers, limit // 4))


class Guard:
    def __init__(
        self,
        cap: int,
        preface_timeout: float,
        idle_timeout: float,
        body_timeout: float,
        pool: BufferPool,
    ) -> None:
        self.cap = cap
        self.preface_timeout = preface_timeout
        self.idle_timeout = idle_timeout
        self.body_timeout = body_timeout
        self.pool = pool
        timeouts = [preface_timeout, body_timeout] + ([idle_timeout] if idle_timeout else [])
        self.period = min(1.0, max(0.01, min(timeouts) / 4))
        self.connections: dict[Guarded, None] = {}  # insertion order: oldest first
        self.refused = 0
        self.evicted = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed: collections.Counter[str] = collections.Counter()

    @classmethod
    def from_settings(cls, settings: Settings) -> Guard:
        cap = settings.max_connections
        if not cap:
            cap = default_cap(kernel.raise_nofile_limit(), settings.workers)
        pool = BufferPool(settings.total_buffer_bytes)
        return cls(
            cap, settings.preface_timeout, settings.idle_timeout, settings.body_timeout, pool
        )

    @classmethod
    def shared(cls, settings: Settings) -> Guard:
        """The guard of the running event loop's front (created by its first server)."""
        loop = asyncio.get_running_loop()
        guard = _SHARED.get(id(loop))
        if guard is None or guard.loop is not loop:
            guard = cls.from_settings(settings)
            guard.loop = loop
            _SHARED.clear()  # one front per process: a guard of a closed loop is dropped
            _SHARED[id(loop)] = guard
            log.info(
                "public connections: at most %d; buffers %d MiB per connection, %d MiB in all",
                guard.cap,
                settings.connection_buffer_bytes >> 20,
                pool_mib(guard.pool),
            )
        return guard

    # --- admission ------------------------------------------------------------------------
    def admit(self, conn: Guarded) -> bool:
        """Register a new connection; False if it must be closed (cap reached)."""
        if len(self.connections) >= self.cap and not self._evict_one():
            self.refused += 1
            self._closed[f"over the cap of {self.cap} connections (refused)"] += 1
            self._start_timer()
            return False
        self.connections[conn] = None
        self._start_timer()
        return True

    def leave(self, conn: Guarded) -> None:
        self.connections.pop(conn, None)

    def _evict_one(self) -> bool:
        for old in self.connections:
            if old.handshaking:
                del self.connections[old]
                old.evict()
                self.evicted += 1
                self._closed[f"in handshake, evicted at the cap of {self.cap}"] += 1
                return True
        return False

    # --- the timer ------------------------------------------------------------------------
    def _start_timer(self) -> None:
        if self._timer is None:
            loop = self.loop or asyncio.get_running_loop()
            self.loop = loop
            self._timer = loop.call_later(self.period, self._sweep)

    def _sweep(self) -> None:
        assert self.loop is not None
        now = self.loop.time()
        for conn in list(self.connections):
            reason = conn.tick(now)
            if reason is not None:
                self._closed[reason] += 1
        for reason, count in self._closed.items():
            log.warning("closed %d public connection(s): %s", count, reason)
        self._closed.clear()
        self._timer = self.loop.call_later(self.period, self._sweep)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def pool_mib(pool: BufferPool) -> int:
    return pool.limit >> 20


_SHARED: dict[int, Guard] = {}
