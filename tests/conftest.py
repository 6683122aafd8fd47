"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tykworker import compiled


def pytest_report_header() -> str:
    return f"tykworker: {compiled.describe()}"


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to test sources that do not run: a module compiled by ``scripts/compile``
    and edited since is imported as its old extension."""
    stale = compiled.stale()
    if stale:
        raise pytest.UsageError(
            f"compiled modules older than their sources: {', '.join(stale)}; "
            "rebuild them (scripts/compile) or remove them (scripts/compile --clean)"
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_ping(url: str, process: subprocess.Popen[bytes], deadline: float) -> None:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.2)
    try:
        while True:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise
            time.sleep(0.02)
    finally:
        client.close()


@contextlib.contextmanager
def private_redis(workdir: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A ``redis-server`` of its own on a free port (no persistence): ``(url, process)``."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not on PATH")
    port = _free_port()
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        _wait_for_ping(url, process, time.monotonic() + 10)
        yield url, process
    finally:
        process.send_signal(signal.SIGCONT)  # in case a test stopped it
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A reachable Redis: ``TYKWORKER_TEST_REDIS_URL`` if set, else a private
    ``redis-server`` on a free port (no persistence) for the whole session."""
    configured = os.environ.get("TYKWORKER_TEST_REDIS_URL")
    if configured:
        yield configured
        return
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not on PATH and TYKWORKER_TEST_REDIS_URL not set")
    with private_redis(tmp_path_factory.mktemp("redis")) as (url, _):
        yield url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client on ``redis_url``. The server may be shared (``TYKWORKER_TEST_REDIS_URL``):
    tests use unique keys and delete nothing else."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()
