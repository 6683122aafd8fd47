"""Store faults: a stalled Redis, a locked or deleted SQLite file. Store calls give up
well inside the hook deadline (the hook gets its error, logged, and answers normally:
no 504, no killed worker), and a replaced SQLite file is reopened by every worker."""

from __future__ import annotations

import signal
import sqlite3
import threading
from pathlib import Path

import pytest

from tests.conftest import private_redis

from .conftest import Server, busy_with, wait_for

pytestmark = pytest.mark.integration


def store_path(server: Server) -> Path:
    return server.workdir / ".tyk.sock.tykworker" / "coprocess-data.sqlite3"


def assert_hook_answered(reply, pid: str | None = None) -> None:
    """The hook's own reply, not an answer tykworker made for it (timeout, crash)."""
    assert reply.request.return_overrides.response_code in (0, -1)
    assert "X-Tykworker-Error" not in reply.request.return_overrides.headers
    if pid is not None:
        assert reply.request.set_headers["X-Worker-Pid"] == pid


@pytest.mark.redis
def test_stalled_redis_fails_store_calls_in_time_and_keeps_the_worker(start_server, workdir):
    with private_redis(workdir) as (url, redis_server):
        server = start_server("--workers", "1", "--redis-url", url)
        (pid,) = server.worker_pids()
        put = server.dispatch("Store", method="PUT", headers={"Key": "k"}, body=b"v1")
        assert put.request.set_headers["X-Value"] == "v1"
        redis_server.send_signal(signal.SIGSTOP)  # connections still complete, no reply
        try:
            for _ in range(2):
                reply = server.dispatch("Store", headers={"Key": "k"})
                assert_hook_answered(reply, str(pid))
                assert reply.request.set_headers["X-Value"] == ""  # get_data's error value
        finally:
            redis_server.send_signal(signal.SIGCONT)
        # redis-py says "Timeout reading from socket" or, in newer releases, the address
        assert "get_data('k') failed: Timeout reading from " in server.log()
        assert server.worker_pids() == {pid}
        reply = server.dispatch("Store", headers={"Key": "k"})
        assert reply.request.set_headers["X-Value"] == "v1"  # Redis is back: so is the data


def test_locked_sqlite_store_fails_writes_in_time_and_keeps_the_workers(start_server):
    server = start_server("--workers", "2")
    pids = server.worker_pids()
    locker = sqlite3.connect(store_path(server), isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        for n in range(2):
            reply = server.dispatch("Store", method="PUT", headers={"Key": f"k{n}"}, body=b"v")
            assert_hook_answered(reply)
            assert reply.request.set_headers["X-Value"] == ""  # the write failed
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert "store_data('k0') failed: database is locked" in server.log()
    assert server.worker_pids() == pids
    reply = server.dispatch("Store", method="PUT", headers={"Key": "k0"}, body=b"v")
    assert reply.request.set_headers["X-Value"] == "v"


def test_deleted_sqlite_store_is_reopened_by_every_worker(start_server, workdir):
    server = start_server("--workers", "2")

    def put_and_hold(value: bytes, gate: Path) -> tuple[threading.Thread, dict[str, str]]:
        """A PUT that keeps its worker busy until ``gate`` exists: the next call goes
        to the other worker."""
        out: dict[str, str] = {}

        def run() -> None:
            reply = server.dispatch(
                "Store", method="PUT", headers={"Key": "k", "Gate": str(gate)}, body=value
            )
            out.update(reply.request.set_headers)

        thread = threading.Thread(target=run)
        thread.start()
        wait_for(lambda: busy_with(server, "Store"), what="a worker held in Store")
        return thread, out

    def read_from_the_other_worker(value: bytes) -> dict[str, str]:
        """Read ``k`` on the worker not held until it shows ``value`` (the held one
        wrote it as its call began)."""

        def read() -> dict[str, str] | None:
            headers = dict(server.dispatch("Store", headers={"Key": "k"}).request.set_headers)
            return headers if headers["X-Value"] == value.decode() else None

        try:
            found: dict[str, str] = wait_for(read, what=f"{value!r} seen by the other worker")
        except AssertionError as exc:
            last = dict(server.dispatch("Store", headers={"Key": "k"}).request.set_headers)
            raise AssertionError(f"{exc}; last read {last}; log:\n{server.log()}") from None
        return found

    # Both workers have the store open.
    thread, held = put_and_hold(b"v1", workdir / "gate1")
    other = read_from_the_other_worker(b"v1")
    (workdir / "gate1").touch()
    thread.join(30)
    assert held["X-Worker-Pid"] != other["X-Worker-Pid"]

    path = store_path(server)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)  # e.g. a cleanup of the runtime dir
    # A new worker opens the file at the path; the old one must not keep the deleted one.
    before = server.worker_pids()
    server.dispatch("Exit")
    wait_for(
        lambda: (
            len(server.worker_pids() - before) == 1 == len(before - server.worker_pids())
            and len(server.worker_pids()) == 2
        ),
        what="one worker replaced",
    )

    thread, held = put_and_hold(b"v2", workdir / "gate2")
    # The other worker reads the new file, not its old one (which keeps "v1" for good).
    other = read_from_the_other_worker(b"v2")
    (workdir / "gate2").touch()
    thread.join(30)
    assert held["X-Value"] == "v2"
    assert other["X-Value"] == "v2"
    assert held["X-Worker-Pid"] != other["X-Worker-Pid"]
    assert path.exists()
    assert "was deleted or replaced while open: reopening it" in server.log()
