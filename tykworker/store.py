"""Key-value stores behind ``TykGateway.store_data``/``get_data``.

Two implementations of one small ``Store`` protocol:

* ``SQLiteStore`` (default): one SQLite file in the runtime directory, opened by every
  worker process. WAL journal (readers never block the writer), a busy timeout (writers of
  several processes queue instead of failing), autocommit (each ``set`` is durable once it
  returns, so data survives worker restarts and kills). Expiry is an absolute UNIX time
  from an injectable clock; expired rows are invisible at once and purged lazily. Each
  call first compares the file at the path with the one open (``st_dev``/``st_ino``, one
  ``stat``): a file deleted or replaced under the workers is logged and reopened, so every
  worker converges on the file at the path instead of keeping its own unlinked copy.
* ``RedisStore`` (``--redis-url``): redis-py; ``SET key value`` with ``EX ttl`` when
  ``ttl > 0``, exactly what Tyk's embedded Python did, so data is shared with it.

Invariants:
* Keys are stored exactly as given; the ``coprocess-data:`` prefix is added by the gateway
  API (``gateway_api.data_key``) so both stores hold the same keys.
* ``ttl <= 0`` means "no expiry" (go-redis ``Set`` semantics).
* A connection is never shared across ``fork()``: each process opens its own lazily.
* Stores raise on failure; the gateway API decides to log and carry on.
* ``StoreThreads`` serves async hooks (``TykGateway.store_data_async``/``get_data_async``):
  the same store calls, run in a small pool of threads, each with a store of its own (a
  store, and its connection, is only ever used by one thread), so the worker's event loop
  never waits for SQLite or Redis. The threads start on first use.
* A store call gives up after about ``STORE_TIMEOUT_SECONDS`` (a stalled Redis, an SQLite
  write lock held elsewhere), a tenth of the default hook deadline: the hook gets its
  error and answers in time, instead of its worker being killed at the deadline. Redis
  calls are retried once on a broken connection (a Redis restart), never on a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final, Protocol

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger("tykworker.store")

STORE_FILENAME: Final = "coprocess-data.sqlite3"
#: Connections inherited across ``fork``: the parent's, kept alive and untouched.
_INHERITED: list[sqlite3.Connection] = []
#: Longest wait of one store call: for another process's SQLite write lock, for a Redis
#: connection, for a Redis reply. Well inside the default hook deadline (5 s).
STORE_TIMEOUT_SECONDS: Final = 0.5
#: Expired rows are deleted once every this many writes.
PURGE_EVERY: Final = 256

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS coprocess_data ("
    " key TEXT PRIMARY KEY, value BLOB NOT NULL, expires_at REAL)"
)


class Store(Protocol):
    """What the gateway API needs of a store."""

    def set(self, key: str, value: bytes, ttl: int) -> None:
        """Store ``value`` under ``key``; expire after ``ttl`` seconds if ``ttl > 0``."""

    def get(self, key: str) -> bytes | None:
        """The value under ``key``, or ``None`` if missing or expired."""

    def close(self) -> None:
        """Release connections (a later call reconnects)."""


class SQLiteStore:
    """Embedded store shared by every process that opens the same file."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._files: tuple[tuple[int, int], ...] = ((0, 0),) * 3  # see ``_open``
        self._writes = 0
        # Plugins may call the gateway API from their own threads.
        self._lock = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            # After fork the inherited connection belongs to the parent: never close it
            # here, and keep it referenced so that it is never finalised (Python 3.13
            # warns about, and would close, a connection collected unclosed).
            if self._conn is not None:
                _INHERITED.append(self._conn)
            self._conn = self._open()
            self._pid = os.getpid()
        elif _identity(self.path) != self._files[0]:
            self._reopen()
        return self._conn

    def _reopen(self) -> None:
        """The file at the path is not the one open (deleted, or another renamed over
        it): under an exclusive ``flock`` of the directory (this path only, never per
        call), remove our stale side files, close ours, then open the path. The old
        file's ``-wal``/``-shm``, still at the path when only the main file was replaced,
        are removed first (by the first worker that finds them): SQLite would replay that
        journal into the new file. Workers still on the old file keep theirs open, until
        their next call."""
        log.error(
            "store file %s was deleted or replaced while open: reopening it (data "
            "written to the old file since is not in the new one)",
            self.path,
        )
        assert self._conn is not None
        with self._directory_lock():
            # Compared while our connection still holds the old files: their inode numbers
            # cannot have been reused yet. (Closing first let another worker create the
            # new file's -wal/-shm with the freed numbers, which then looked like ours and
            # were removed: the two workers ended on different WALs of one file.)
            _, wal, shm = self._files
            for suffix, mine in (("-wal", wal), ("-shm", shm)):
                side = Path(f"{self.path}{suffix}")
                if mine != (0, 0) and _identity(side) == mine:
                    side.unlink(missing_ok=True)
            self._conn.close()
            self._conn = None
            self._conn = self._open_locked()

    def _open(self) -> sqlite3.Connection:
        """Open (or create) the file under the directory's exclusive ``flock``: a worker
        creating the file and another reopening it (``_reopen``) would otherwise race on
        the WAL switch and the table creation, which take locks SQLite does not wait for
        ("database is locked" at once, and that worker's store calls fail)."""
        with self._directory_lock():
            return self._open_locked()

    @contextlib.contextmanager
    def _directory_lock(self) -> Iterator[None]:
        """An exclusive ``flock`` of the store's directory (created if missing), held for
        the ``with`` block: opens and reopens of the file, never a call's reads/writes."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        directory = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(directory, fcntl.LOCK_EX)
            yield
        finally:
            os.close(directory)  # releases the lock

    def _open_locked(self) -> sqlite3.Connection:
        """``_open``'s work; the caller holds ``_directory_lock`` (which made the folder)."""
        conn = sqlite3.connect(
            self.path,
            timeout=STORE_TIMEOUT_SECONDS,
            isolation_level=None,
            check_same_thread=False,
        )
        conn.execute(f"PRAGMA busy_timeout = {int(STORE_TIMEOUT_SECONDS * 1000)}")
        conn.execute("PRAGMA synchronous = NORMAL")
        # Switching to WAL and creating the table take locks that SQLite does not wait for
        # (no busy handler on that path), so concurrent first opens by several workers
        # fail with "database is locked". The supervisor calls initialise() before it
        # forks; here they run only when still needed (a store opened without it).
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            conn.execute("PRAGMA journal_mode = WAL")
        has_table = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'coprocess_data'"
        ).fetchall()
        if not has_table:
            conn.execute(_SCHEMA)
        # (st_dev, st_ino) of the files just opened (or created): the database, its WAL
        # and its shared-memory index, which the connection keeps open from now on.
        self._files = tuple(_identity(Path(f"{self.path}{x}")) for x in ("", "-wal", "-shm"))
        return conn

    def initialise(self) -> None:
        """Create the file, WAL mode and the table; call once before workers start."""
        with self._lock:
            self._connection()

    def set(self, key: str, value: bytes, ttl: int) -> None:
        now = self._clock()
        expires_at = now + ttl if ttl > 0 else None
        with self._lock:
            conn = self._connection()
            conn.execute(
                "INSERT OR REPLACE INTO coprocess_data (key, value, expires_at) VALUES (?, ?, ?)",
                (key, value, expires_at),
            )
            self._writes += 1
            if self._writes % PURGE_EVERY == 0:
                conn.execute("DELETE FROM coprocess_data WHERE expires_at <= ?", (now,))

    def get(self, key: str) -> bytes | None:
        with self._lock:
            row = (
                self._connection()
                .execute(
                    "SELECT value FROM coprocess_data"
                    " WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)",
                    (key, self._clock()),
                )
                .fetchone()
            )
        return None if row is None else bytes(row[0])

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None


def _identity(path: Path) -> tuple[int, int]:
    """``(st_dev, st_ino)`` of the file at ``path``; ``(0, 0)`` when there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return (0, 0)
    return (st.st_dev, st.st_ino)


class RedisStore:
    """Redis store (the keys Tyk's embedded Python used)."""

    def __init__(self, url: str, timeout: float = STORE_TIMEOUT_SECONDS) -> None:
        self.url = url
        self._timeout = timeout
        self._client: redis.Redis | None = None
        self._pid = 0

    def _redis(self) -> redis.Redis:
        if self._client is None or self._pid != os.getpid():
            self._client = redis.Redis.from_url(
                self.url,
                socket_connect_timeout=self._timeout,
                socket_timeout=self._timeout,
                # redis-py retries timeouts 10 times by default: one stalled Redis would
                # hold the call for 11 timeouts. Once, and only for a broken connection.
                retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
            )
            self._pid = os.getpid()
        return self._client

    def set(self, key: str, value: bytes, ttl: int) -> None:
        self._redis().set(key, value, ex=ttl if ttl > 0 else None)

    def get(self, key: str) -> bytes | None:
        value = self._redis().get(key)
        if value is None:
            return None
        return value.encode() if isinstance(value, str) else bytes(value)

    def close(self) -> None:
        if self._client is not None and self._pid == os.getpid():
            self._client.close()
        self._client = None


def open_store(runtime_dir: Path, redis_url: str | None) -> Store:
    """The store the settings ask for (Redis if ``redis_url`` is set). Connects lazily."""
    if redis_url:
        return RedisStore(redis_url)
    return SQLiteStore(runtime_dir / STORE_FILENAME)


class StoreThreads:
    """Store calls awaited by async hooks, run in up to ``threads`` threads (see the
    module docstring); ``factory`` makes each thread's store."""

    def __init__(self, factory: Callable[[], Store], threads: int = 4) -> None:
        self._factory = factory
        self._threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._stores: list[Store] = []
        self._lock = threading.Lock()

    def _store(self) -> Store:
        store: Store | None = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = self._factory()
            with self._lock:
                self._stores.append(store)
        return store

    def _run(self, call: Callable[[Store], bytes | None]) -> asyncio.Future[bytes | None]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="tykworker-store")
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._pool, lambda: call(self._store()))

    async def set(self, key: str, value: bytes, ttl: int) -> None:
        await self._run(lambda store: store.set(key, value, ttl))

    async def get(self, key: str) -> bytes | None:
        return await self._run(lambda store: store.get(key))

    def close(self) -> None:
        """Stop the threads (after the calls they run) and close their stores."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        with self._lock:
            stores, self._stores = self._stores, []
        for store in stores:
            store.close()
