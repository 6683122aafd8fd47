"""Fixtures of the end-to-end suite: real Redis, recording upstream, real ``tykworker serve``
and a real Tyk gateway in front of it (module-scoped: one stack per test file).

The gateway comes from ``$TYKWORKER_TEST_GATEWAY`` or ``../shared/tyk-gateway/unpack``;
without either the whole suite is skipped. ``TYKWORKER_TEST_FRONT=grpcio`` switches the
front, as in the integration suite.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.gateway.harness import (
    Gateway,
    Response,
    Upstream,
    find_gateway,
    gateway_conf,
    http,
    start_upstream,
)
from tests.integration.conftest import Server

HERE = Path(__file__).parent

pytestmark = pytest.mark.gateway


@pytest.fixture(scope="session")
def gateway_binary() -> str:
    binary = find_gateway()
    if binary is None:
        pytest.skip(
            "no Tyk gateway: set TYKWORKER_TEST_GATEWAY=/path/to/tyk or put the shared "
            "gateway at ../shared/tyk-gateway/unpack (next to the repository)"
        )
    return binary


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tw-gw-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = start_upstream()
    yield server
    server.stop()


class Stack:
    """tykworker + gateway sharing one folder; ``restart_server`` keeps the gateway."""

    def __init__(self, folder: Path, binary: str, redis_url: str, upstream: Upstream) -> None:
        self.folder = folder
        self.upstream = upstream
        self.events_file = folder / "events.jsonl"
        self.events_file.touch()
        for name in ("plugins", "events"):
            shutil.copytree(HERE / name, folder / name)
        self.server_args: list[str] = [
            "--middleware",
            str(folder / "plugins"),
            "--event-handlers",
            str(folder / "events"),
            "--bundles",
            str(folder / "gw" / "middleware" / "bundles"),
            "--workers",
            "2",
            "--hook-timeout-for",
            "pre=2",
        ]
        self.server = self.start_server()
        (folder / "gw").mkdir(exist_ok=True)
        conf = gateway_conf(
            folder / "gw", self.server.socket, redis_url, upstream.url + "/bundles/"
        )
        self.gateway = Gateway(binary, folder / "gw", conf).wait_up()

    def start_server(self) -> Server:
        return Server(
            self.folder, self.server_args, {"GW_EVENTS_FILE": str(self.events_file)}
        ).wait_ready()

    def restart_server(self) -> None:
        code = self.server.stop()
        assert code == 0, self.server.log()
        Path(self.server.notify_path).unlink()  # the next Server binds it again
        self.server = self.start_server()

    def get(self, path: str, **kw: Any) -> Response:
        return http(self.gateway.url + path, **kw)

    def stop(self) -> None:
        self.gateway.stop()
        self.server.stop()


@pytest.fixture(scope="module")
def stack(folder: Path, gateway_binary: str, redis_url: str, upstream: Upstream) -> Iterator[Stack]:
    built = Stack(folder, gateway_binary, redis_url, upstream)
    yield built
    built.stop()
