"""tykworker's own answers as the gateway renders them, and a tykworker restart under a
running gateway."""

from __future__ import annotations

import json
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.gateway.harness import api

pytestmark = pytest.mark.gateway


@pytest.fixture(scope="module")
def failing(stack):
    target = stack.upstream.url + "/fail/"
    stack.gateway.put_apis(
        api(
            "slow",
            "/slow/",
            target,
            custom_middleware={"driver": "grpc", "pre": [{"name": "GwSleep"}]},
        ),
        api(
            "crash",
            "/crash/",
            target,
            custom_middleware={"driver": "grpc", "pre": [{"name": "GwCrash"}]},
        ),
        api(
            "gate",
            "/gate/",
            target,
            custom_middleware={"driver": "grpc", "pre": [{"name": "GwGate"}]},
        ),
        api(
            "plain",
            "/plain/",
            target,
            custom_middleware={"driver": "grpc", "pre": [{"name": "GwEcho"}]},
        ),
    )
    return stack


def test_timeout_is_504(failing):
    answer = failing.get("/slow/x", headers={"X-Sleep": "10"})
    assert answer.status == 504
    assert json.loads(answer.body) == {"error": "Plugin timeout"}
    assert answer.headers.get("X-Tykworker-Error") == "timeout"


def test_crash_is_502(failing):
    answer = failing.get("/crash/x")
    assert answer.status == 502
    assert json.loads(answer.body) == {"error": "Plugin crashed"}
    assert answer.headers.get("X-Tykworker-Error") == "crash"


def test_overload_is_503(failing):
    """Both workers held and no queue: the next call gets tykworker's overload answer, as
    the gateway renders it; the held calls are served once released."""
    from tests.integration.conftest import busy_with, wait_for

    gate = failing.folder / "gate-open"
    held_args = list(failing.server_args)
    failing.server_args += ["--queue-size", "0"]
    failing.restart_server()
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            held = [
                pool.submit(failing.get, "/gate/x", headers={"X-Gate": str(gate)}) for _ in range(2)
            ]
            wait_for(lambda: len(busy_with(failing.server, "GwGate")) == 2, what="both held")
            answer = failing.get("/plain/x")
            gate.touch()
            assert [f.result(timeout=30).status for f in held] == [200, 200]
        assert answer.status == 503
        assert json.loads(answer.body) == {"error": "Plugin overloaded"}
        assert answer.headers.get("X-Tykworker-Error") == "overload"
    finally:
        failing.server_args = held_args
        failing.restart_server()


def test_gateway_reconnects_after_a_tykworker_restart(failing):
    assert failing.get("/plain/x").status == 200
    failing.restart_server()
    assert failing.get("/plain/x").status == 200


def test_sighup_under_load_gives_no_non_2xx(failing):
    statuses: list[int] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            statuses.append(failing.get("/plain/x").status)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    from tests.integration.conftest import wait_for

    def flowing() -> None:  # calls keep going through: each reload happens under load
        seen = len(statuses)
        wait_for(lambda: len(statuses) >= seen + 8, what="calls flowing")

    try:
        for _ in range(3):
            flowing()
            failing.server.signal(signal.SIGHUP)
            failing.server.wait_notify("READY=1")
        flowing()
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert [s for s in statuses if not 200 <= s < 300] == []
