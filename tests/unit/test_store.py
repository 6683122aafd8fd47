"""Stores behind store_data/get_data: embedded SQLite across processes, and real Redis."""

from __future__ import annotations

import logging
import multiprocessing
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
import redis

from tykworker.config import Settings
from tykworker.store import STORE_FILENAME, RedisStore, SQLiteStore
from tykworker.worker.plugins import load_runtime
from tykworker.worker.tyk import gateway as gateway_api
from tykworker.worker.tyk.gateway import TykGateway


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "run" / STORE_FILENAME


@pytest.fixture
def bound_sqlite(tmp_path: Path) -> Iterator[SQLiteStore]:
    """The gateway API bound to an embedded store, as inside a worker."""
    store = SQLiteStore(tmp_path / STORE_FILENAME)
    gateway_api.bind(store, None)
    yield store
    gateway_api.bind(None, None)
    store.close()


# --- embedded store ----------------------------------------------------------------


def test_set_get_overwrite_and_missing(store_path: Path) -> None:
    store = SQLiteStore(store_path)
    assert store.get("k") is None
    store.set("k", b"one", 0)
    store.set("k", b"two", 0)
    assert store.get("k") == b"two"
    assert store_path.is_file()  # runtime dir created on first use
    store.close()


def test_ttl_expiry_with_controllable_clock(store_path: Path) -> None:
    clock = FakeClock()
    store = SQLiteStore(store_path, clock=clock)
    store.set("short", b"v", 10)
    store.set("forever", b"v", 0)
    store.set("negative", b"v", -5)
    clock.now += 9.9
    assert store.get("short") == b"v"
    clock.now += 0.2
    assert store.get("short") is None
    clock.now += 10**9
    assert (store.get("forever"), store.get("negative")) == (b"v", b"v")
    store.close()


def test_expired_rows_are_purged(store_path: Path) -> None:
    clock = FakeClock()
    store = SQLiteStore(store_path, clock=clock)
    store.set("old", b"v", 1)
    clock.now += 5
    for i in range(256):
        store.set(f"k{i}", b"v", 0)
    with closing(sqlite3.connect(store_path)) as conn:
        rows = conn.execute("SELECT count(*) FROM coprocess_data WHERE key = 'old'").fetchone()
    assert rows == (0,)
    store.close()


def test_data_survives_a_new_store_instance(store_path: Path) -> None:
    first = SQLiteStore(store_path)
    first.set("kept", b"value", 0)
    first.close()
    with closing(SQLiteStore(store_path)) as second:
        assert second.get("kept") == b"value"


def test_store_uses_wal_journal(store_path: Path) -> None:
    with closing(SQLiteStore(store_path)) as store:
        store.set("k", b"v", 0)
    with closing(sqlite3.connect(store_path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


_CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from tykworker.store import SQLiteStore
    store = SQLiteStore(Path(sys.argv[1]))
    prefix = sys.argv[2]
    if prefix == "read":
        print(store.get("from-parent").decode())
        store.set("from-child", b"child-value", 0)
    else:
        for i in range(int(sys.argv[3])):
            store.set(f"{prefix}-{i}", str(i).encode(), 0)
    store.close()
    """
)


def _child(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, *args], stdout=subprocess.PIPE, text=True
    )


def test_shared_between_processes(store_path: Path) -> None:
    store = SQLiteStore(store_path)
    store.set("from-parent", b"parent-value", 0)
    child = _child(str(store_path), "read")
    out, _ = child.communicate(timeout=30)
    assert child.returncode == 0
    assert out.strip() == "parent-value"
    assert store.get("from-child") == b"child-value"
    store.close()


def test_concurrent_writers_in_two_processes_lose_nothing(store_path: Path) -> None:
    first = SQLiteStore(store_path)
    first.set("init", b"", 0)  # create the file before the race
    first.close()
    writers = [_child(str(store_path), name, "150") for name in ("a", "b")]
    for writer in writers:
        writer.communicate(timeout=30)
        assert writer.returncode == 0
    store = SQLiteStore(store_path)
    assert all(store.get(f"{p}-{i}") == str(i).encode() for p in "ab" for i in range(150))
    store.close()


def _write_in_forked_child(store: SQLiteStore) -> None:
    store.set("from-fork", b"forked", 0)
    store.close()


def test_store_opened_before_fork_reconnects_in_the_child(store_path: Path) -> None:
    store = SQLiteStore(store_path)
    store.set("before", b"fork", 0)  # connection now open in the parent
    process = multiprocessing.get_context("fork").Process(
        target=_write_in_forked_child, args=(store,)
    )
    process.start()
    process.join(timeout=30)
    assert process.exitcode == 0
    assert store.get("from-fork") == b"forked"
    store.close()


# --- gateway API over the store ------------------------------------------------------


def test_gateway_api_prefixes_keys_and_returns_bytes(bound_sqlite: SQLiteStore) -> None:
    TykGateway.store_data("user-key", "välue", 0)
    assert TykGateway.get_data("user-key") == "välue".encode()
    assert TykGateway.get_data("absent") == b""
    assert bound_sqlite.get("coprocess-data:user-key") == "välue".encode()
    assert bound_sqlite.get("user-key") is None


def test_gateway_api_rejects_non_string_values(bound_sqlite: SQLiteStore) -> None:
    with pytest.raises(TypeError, match="must be str or bytes"):
        TykGateway.store_data("k", 12, 0)  # type: ignore[arg-type]


class BrokenStore:
    def set(self, key: str, value: bytes, ttl: int) -> None:
        raise ConnectionError("store down")

    def get(self, key: str) -> bytes | None:
        raise ConnectionError("store down")

    def close(self) -> None:
        pass


def test_store_failures_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    gateway_api.bind(BrokenStore(), None)
    try:
        with caplog.at_level(logging.ERROR, logger="tykworker.plugins"):
            TykGateway.store_data("k", "v", 1)
            assert TykGateway.get_data("k") == b""
    finally:
        gateway_api.bind(None, None)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "store_data('k') failed: store down",
        "get_data('k') failed: store down",
    ]


def test_runtime_store_lives_in_runtime_dir(tmp_path: Path) -> None:
    empty = str(tmp_path / "none")
    settings = Settings(middleware=empty, event_handlers=empty, runtime_dir=str(tmp_path / "rt"))
    runtime = load_runtime(settings)
    TykGateway.store_data("shared", "1", 0)
    runtime.close()
    with closing(SQLiteStore(tmp_path / "rt" / STORE_FILENAME)) as store:
        assert store.get("coprocess-data:shared") == b"1"


# --- Redis ---------------------------------------------------------------------------


def test_redis_store_set_get_with_expiry(redis_client: redis.Redis, redis_url: str) -> None:
    store = RedisStore(redis_url)
    key = f"test-{uuid.uuid4()}"
    store.set(key, b"with-ttl", 30)
    store.set(key + "-forever", b"no-ttl", 0)
    assert store.get(key) == b"with-ttl"
    assert 0 < redis_client.ttl(key) <= 30
    assert redis_client.ttl(key + "-forever") == -1
    assert store.get(key + "-absent") is None
    store.close()
    redis_client.delete(key, key + "-forever")


def test_redis_ttl_expires(redis_client: redis.Redis, redis_url: str) -> None:
    store = RedisStore(redis_url)
    key = f"test-{uuid.uuid4()}"
    store.set(key, b"v", 1)
    # Wait for the condition (key gone), bounded, rather than for a fixed time.
    deadline = time.monotonic() + 5
    while store.get(key) is not None:
        assert time.monotonic() < deadline, "key did not expire"
        time.sleep(0.02)
    store.close()


def test_two_workers_share_data_through_redis(redis_client: redis.Redis, redis_url: str) -> None:
    key = f"shared-{uuid.uuid4()}"
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from tykworker.store import RedisStore;"
            "RedisStore(sys.argv[1]).set('coprocess-data:' + sys.argv[2], b'from-worker-2', 60)",
            redis_url,
            key,
        ],
        timeout=30,
        check=True,
    )
    assert child.returncode == 0
    gateway_api.bind(RedisStore(redis_url), None)
    try:
        assert TykGateway.get_data(key) == b"from-worker-2"
        TykGateway.store_data(key, "from-worker-1", 60)
    finally:
        gateway_api.bind(None, None)
    assert redis_client.get("coprocess-data:" + key) == b"from-worker-1"
    assert 0 < redis_client.ttl("coprocess-data:" + key) <= 60
    redis_client.delete("coprocess-data:" + key)


def test_first_opens_racing_after_initialise_never_fail(tmp_path: Path) -> None:
    """Regression: workers opening a fresh store at once got 'database is locked' (the WAL
    switch and CREATE TABLE do not wait on the busy handler). The supervisor initialises
    the file before forking; after that, simultaneous first opens must all succeed."""
    for round_ in range(3):
        path = tmp_path / f"round{round_}.sqlite3"
        SQLiteStore(path).initialise()
        writers = [_child(str(path), name, "5") for name in ("a", "b", "c", "d")]
        for writer in writers:
            writer.communicate(timeout=30)
            assert writer.returncode == 0
        store = SQLiteStore(path)
        assert all(store.get(f"{p}-{i}") == str(i).encode() for p in "abcd" for i in range(5))
        store.close()


def test_a_file_renamed_over_the_store_is_reopened(
    store_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SQLiteStore(store_path)
    store.set("k", b"old", 0)
    replacement = SQLiteStore(store_path.with_name("new.sqlite3"))
    replacement.set("k", b"new", 0)
    replacement.close()
    Path(store_path.with_name("new.sqlite3")).replace(store_path)
    with caplog.at_level(logging.ERROR, logger="tykworker.store"):
        assert store.get("k") == b"new"
    assert "was deleted or replaced while open" in caplog.text
    caplog.clear()
    assert store.get("k") == b"new"  # reported once per replacement
    assert not caplog.text
    store.close()


@pytest.mark.timeout(10)
def test_a_locked_store_fails_a_write_within_the_store_timeout(store_path: Path) -> None:
    store = SQLiteStore(store_path)
    store.initialise()
    with closing(sqlite3.connect(store_path, isolation_level=None)) as locker:
        locker.execute("BEGIN EXCLUSIVE")
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            store.set("k", b"v", 0)
        assert store.get("k") is None  # WAL: readers are not blocked
        locker.execute("ROLLBACK")
    store.set("k", b"v", 0)
    assert store.get("k") == b"v"
    store.close()


def _first_open_and_write(path: str, start: float) -> None:
    """In a fresh process: wait for ``start`` (all processes at once), open the store at
    ``path`` for the first time and write (SQLiteStore raises if that fails)."""
    while time.time() < start:
        pass
    store = SQLiteStore(Path(path))
    store.set("k", b"v", 0)
    store.close()


def test_workers_creating_the_file_at_once_all_get_a_store(tmp_path: Path) -> None:
    """A deleted store file is created again by whichever worker comes first; others open
    it at the same moment. The WAL switch and the table creation take locks SQLite does not
    wait for, so without the directory lock some opens failed with "database is locked"."""
    ctx = multiprocessing.get_context("fork")
    for attempt in range(15):
        path = tmp_path / f"round{attempt}" / STORE_FILENAME
        path.parent.mkdir()
        start = time.time() + 0.2
        procs = [
            ctx.Process(target=_first_open_and_write, args=(str(path), start)) for _ in range(4)
        ]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(30)
        assert [proc.exitcode for proc in procs] == [0] * 4, f"round {attempt}"
