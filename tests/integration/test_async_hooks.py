"""Async hooks (``async def``) against the real server (issue 15): many calls in flight on
one worker, every decorator kind and ``@Event``, cancellation at the deadline with the
worker kept, a hook that blocks the event loop handled like a stuck worker, drain and
reload with async calls in flight, ``@OnStart``/``@OnStop``, the async store, and the
in-flight counts of ``tykworker status`` and the metrics."""

from __future__ import annotations

import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.parse
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from tykworker._proto import coprocess_object_pb2 as object_pb2
from tykworker.wire.reasons import Reason

from .conftest import HERE, ROOT, Server, make_object, wait_for
from .test_observability import scrape_unix, value

pytestmark = pytest.mark.integration

PLUGINS = HERE / "async_plugins" / "middleware"
EVENTS = HERE / "async_plugins" / "events"


def _start(start_server, *args: str, **kw) -> Server:
    return start_server(*args, plugins=PLUGINS, events=EVENTS, **kw)  # type: ignore[no-any-return]


def _status(server: Server) -> dict:  # type: ignore[type-arg]
    done = subprocess.run(
        [sys.executable, "-m", "tykworker", "status", "--json", "--socket", server.socket],
        capture_output=True, text=True, timeout=30, cwd=server.workdir,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def _in_flight(server: Server) -> int:
    return sum(w["in_flight"] for w in _status(server)["workers"])


def _held(server: Server, pool: ThreadPoolExecutor, gate: Path, n: int) -> list[Future]:  # type: ignore[type-arg]
    """``n`` AsyncGate calls, each held until the gate opens."""
    return [
        pool.submit(server.dispatch, "AsyncGate", headers={"Gate": str(gate), "X-Id": str(i)})
        for i in range(n)
    ]


def test_one_worker_runs_many_async_calls_at_once(start_server, gate: Path):
    server = _start(start_server, "--workers", "1", "--async-concurrency", "64")
    with ThreadPoolExecutor(max_workers=40) as pool:
        held = _held(server, pool, gate, 40)
        # All 40 run at once on the one worker: a sync pool of one would hold one.
        wait_for(lambda: _in_flight(server) == 40, what="40 async calls in flight")
        (worker,) = _status(server)["workers"]
        assert worker["state"] == "busy" and worker["hook"] == "AsyncGate"
        assert not any(f.done() for f in held)
        # A sync hook is still served meanwhile, on the same worker.
        assert server.dispatch("SyncEcho").request.set_headers["X-Worker-Pid"] == str(worker["pid"])
        gate.touch()
        replies = [f.result(timeout=30) for f in held]
    assert [r.request.set_headers["X-Id"] for r in replies] == [str(i) for i in range(40)]
    assert {r.request.set_headers["X-Worker-Pid"] for r in replies} == {str(worker["pid"])}


def test_async_concurrency_bounds_the_calls_a_worker_runs(start_server, gate: Path):
    server = _start(start_server, "--workers", "1", "--async-concurrency", "4")
    with ThreadPoolExecutor(max_workers=10) as pool:
        held = _held(server, pool, gate, 10)
        wait_for(lambda: _in_flight(server) == 4, what="4 async calls in flight")
        wait_for(lambda: _status(server)["server"]["queue_depth"] == 6, what="6 queued")
        assert _in_flight(server) == 4
        gate.touch()
        assert len([f.result(timeout=30) for f in held]) == 10


def test_async_hooks_of_every_kind(start_server, redis_url):
    server = _start(start_server, "--workers", "2")
    for hook, kind in [
        ("AsyncPre", "pre"),
        ("AsyncPost", "post"),
        ("AsyncPostKeyAuth", "post_key_auth"),
    ]:
        assert server.dispatch(hook, kind).request.set_headers["X-Kind"] == kind
    good = server.dispatch("AsyncAuth", "auth", headers={"Authorization": "good"})
    assert good.session.metadata["token"] == "good" and good.session.rate == 1000.0
    bad = server.dispatch("AsyncAuth", "auth", headers={"Authorization": "bad"})
    assert bad.request.return_overrides.response_code == 403
    response = server.dispatch("AsyncResponse", "response")
    assert response.response.headers["X-Kind"] == "response"
    failed = server.dispatch("AsyncRaise")
    assert failed.request.return_overrides.response_code == 500
    assert "async plugin failure on purpose" in server.log()
    payload = (
        '{"message": {"Type": "AuthFailure", "Meta": {}, "TimeStamp": "t"},'
        ' "handler_name": "AsyncRecordEvent", "spec": {"APIID": "api1"}}'
    )
    assert server.event(payload) == b""
    stored = wait_for(
        lambda: _store_get(server, "async-event:AuthFailure"),
        what="async event handler side effect",
    )
    assert stored == "seen"


def _store_get(server: Server, key: str) -> str:
    """``key``'s value, read through the async store."""
    reply = server.dispatch("AsyncRead", headers={"Key": key})
    return reply.request.set_headers["X-Stored"]


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_async_store_in_both_stores(start_server, store: str, request):
    args = ["--workers", "2"]
    if store == "redis":
        args += ["--redis-url", request.getfixturevalue("redis_url")]
    server = _start(start_server, *args)
    reply = server.dispatch("AsyncStore", headers={"Key": f"k-{store}", "Value": "v1"})
    assert reply.request.set_headers["X-Stored"] == "v1"


def test_async_call_past_its_deadline_is_cancelled_and_its_worker_kept(
    start_server, gate: Path, workdir: Path
):
    # Post hooks time out after 1 s, the held (pre) calls get 30 s.
    server = _start(start_server, "--workers", "1", "--hook-timeout-for", "post=1")
    (pid,) = server.worker_pids()
    mark = workdir / "cancelled"
    with ThreadPoolExecutor(max_workers=4) as pool:
        held = _held(server, pool, gate, 2)  # other calls on the same worker go on
        wait_for(lambda: _in_flight(server) == 2, what="2 calls held")
        forever = server.dispatch("AsyncForever", "post", headers={"Mark": str(mark)})
        assert forever.request.return_overrides.response_code == 504
        # write_text creates the file before it writes: wait for the text, not the file.
        wait_for(
            lambda: mark.exists() and mark.read_text() == "cancelled",
            what="the hook saw CancelledError",
        )
        gate.touch()
        pids = {f.result(timeout=30).request.set_headers["X-Worker-Pid"] for f in held}
        assert pids == {str(pid)}
    assert server.worker_pids() == {pid}
    assert _status(server)["server"]["restarts"] == 0


def test_a_hook_blocking_the_event_loop_is_handled_like_a_stuck_worker(start_server, gate: Path):
    server = _start(start_server, "--workers", "1", "--hook-timeout-for", "post=1")
    (pid,) = server.worker_pids()
    with ThreadPoolExecutor(max_workers=4) as pool:
        held = _held(server, pool, gate, 2)
        wait_for(lambda: _in_flight(server) == 2, what="2 calls held")
        blocked = server.dispatch("AsyncBlock", "post", headers={"Sleep": "60"})
        assert blocked.request.return_overrides.response_code == 504
        # The calls it held got their defined answer: the crash answer when the worker
        # was killed, long before their own deadline (30 s).
        for future in held:
            answer = future.result(timeout=30)
            assert answer.request.return_overrides.response_code == Reason.CRASH.status
            assert "X-Id" not in answer.request.set_headers
    new = wait_for(lambda: server.worker_pids() - {pid}, what="a replacement worker")
    assert server.dispatch("SyncEcho").request.set_headers["X-Worker-Pid"] in {str(p) for p in new}
    log = wait_for(lambda: "AsyncBlock" in server.log() and server.log(), what="stack dump")
    # Detected at the call's deadline: the loop's heartbeats had stopped since.
    assert "has an event loop blocked for over" in log
    assert "stacks of all its threads" in log and "async_hooks.py" in log


def test_reload_waits_for_async_calls_in_flight(start_server, gate: Path):
    server = _start(start_server, "--workers", "2")
    old = server.worker_pids()
    with ThreadPoolExecutor(max_workers=20) as pool:
        held = _held(server, pool, gate, 20)
        wait_for(lambda: _in_flight(server) == 20, what="20 calls held")
        server.signal(signal.SIGHUP)
        wait_for(lambda: len(server.worker_pids(generation=2)) == 2, what="generation 2")
        wait_for(
            lambda: (
                {w["generation"] for w in _status(server)["workers"] if w["state"] == "idle"} == {2}
            ),
            what="generation 2 idle",
        )
        # The old workers still run their calls (none failed, none answered yet).
        assert not any(f.done() for f in held)
        assert old <= server.worker_pids()
        gate.touch()
        replies = [f.result(timeout=30) for f in held]
    # Every call was served by its hook (none answered by tykworker).
    ids = [r.request.set_headers["X-Id"] for r in replies]
    assert ids == [str(i) for i in range(len(replies))], server.log()
    assert {r.request.set_headers["X-Worker-Pid"] for r in replies} <= {str(p) for p in old}
    wait_for(lambda: not (server.worker_pids() & old), what="old generation gone")


def test_drain_waits_for_async_calls_in_flight(start_server, gate: Path):
    server = _start(start_server, "--workers", "1")
    with ThreadPoolExecutor(max_workers=10) as pool:
        held = _held(server, pool, gate, 10)
        wait_for(lambda: _in_flight(server) == 10, what="10 calls held")
        server.signal(signal.SIGTERM)
        wait_for(lambda: "draining" in server.log(), what="drain started")
        assert server.proc.poll() is None
        gate.touch()
        replies = [f.result(timeout=30) for f in held]
    # Every call was served by its hook (none answered by tykworker).
    ids = [r.request.set_headers["X-Id"] for r in replies]
    assert ids == [str(i) for i in range(len(replies))], server.log()
    assert server.proc.wait(timeout=30) == 0


def test_a_worker_leaving_waits_for_its_async_calls(start_server, gate: Path):
    """SIGTERM to a worker (as recycling and reloads do): it says DRAIN, runs its async
    calls to their end, then exits and is replaced."""
    server = _start(start_server, "--workers", "1")
    (pid,) = server.worker_pids()
    with ThreadPoolExecutor(max_workers=10) as pool:
        held = _held(server, pool, gate, 10)
        wait_for(lambda: _in_flight(server) == 10, what="10 calls held")
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: "leaving: SIGTERM" in server.log(), what="the worker drains")
        assert pid in server.worker_pids()
        gate.touch()
        replies = [f.result(timeout=30) for f in held]
    assert [r.request.set_headers["X-Id"] for r in replies] == [str(i) for i in range(10)]
    assert {r.request.set_headers["X-Worker-Pid"] for r in replies} == {str(pid)}
    wait_for(lambda: server.worker_pids() - {pid}, what="a replacement")


def test_lifecycle_hooks_run_once_per_worker(start_server, workdir: Path):
    mark = workdir / "stopped"
    server = _start(start_server, "--workers", "2", env={"TYKWORKER_TEST_STOP_MARK": str(mark)})
    pids = server.worker_pids()
    replies = [server.dispatch("AsyncLifecycle") for _ in range(10)]
    assert {r.request.set_headers["X-Started"] for r in replies} == {"1"}
    assert {r.request.set_headers["X-Client"] for r in replies} == {"open"}
    assert server.stop() == 0
    assert {int(line) for line in mark.read_text().split()} == pids


def test_a_failing_on_start_hook_keeps_the_worker_from_serving(start_server, workdir: Path):
    plugins = workdir / "plugins"
    plugins.mkdir()
    (plugins / "bad.py").write_text(
        "from tyk.decorators import *\n"
        "@OnStart\n"
        "async def boom():\n"
        "    raise RuntimeError('no connection pool today')\n"
    )
    server = start_server("--workers", "1", plugins=plugins, ready=False)
    assert server.proc.wait(timeout=60) == 3
    assert "@OnStart boom failed" in server.log()
    assert "no connection pool today" in server.log()


def test_metrics_show_calls_in_flight_per_worker(start_server, gate: Path, workdir: Path):
    path = workdir / "metrics.sock"
    server = _start(start_server, "--workers", "1", "--metrics", str(path))
    with ThreadPoolExecutor(max_workers=8) as pool:
        held = _held(server, pool, gate, 8)
        wait_for(
            lambda: value(scrape_unix(path), "tykworker_worker_calls_in_flight", slot="0") == 8,
            what="8 in flight in the metrics",
        )
        gate.touch()
        [f.result(timeout=30) for f in held]
    status = subprocess.run(
        [sys.executable, "-m", "tykworker", "status", "--socket", server.socket],
        capture_output=True, text=True, timeout=30, cwd=server.workdir,
    )  # fmt: skip
    assert "IN FLIGHT" in status.stdout


def test_grpc_deadline_of_the_client_cancels_the_async_call(start_server, workdir: Path):
    server = _start(start_server, "--workers", "1")
    mark = workdir / "cancelled"
    payload = make_object("AsyncForever", headers={"Mark": str(mark)}).SerializeToString()
    try:
        reply = object_pb2.Object.FromString(server.dispatch_raw(payload, timeout=0.5))
        assert reply.request.return_overrides.response_code == 504
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_for(lambda: mark.exists(), what="cancelled at the client's deadline")


class _Introspection(http.server.BaseHTTPRequestHandler):
    """An OAuth2 introspection endpoint: the token ``good`` is active."""

    tokens: list[str] = []

    def do_POST(self) -> None:
        form = urllib.parse.parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
        token = form.get("token", [""])[0]
        self.tokens.append(token)
        body = json.dumps({"active": token == "good"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_the_readme_http_client_example_serves_with_one_session_per_worker(
    start_server, workdir: Path
):
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"```python\n(# middleware/introspect\.py.*?)```", readme, re.S)
    assert match, "the README's lifecycle example"
    plugins = workdir / "plugins"
    plugins.mkdir()
    (plugins / "introspect.py").write_text(match.group(1))
    endpoint = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Introspection)
    threading.Thread(target=endpoint.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{endpoint.server_address[1]}/introspect"
        server = start_server("--workers", "2", plugins=plugins, env={"INTROSPECT_URL": url})
        good = server.dispatch("Introspect", "auth", headers={"Authorization": "good"})
        assert good.session.metadata["token"] == "good"
        bad = server.dispatch("Introspect", "auth", headers={"Authorization": "bad"})
        assert bad.request.return_overrides.response_code == 403
        assert _Introspection.tokens == ["good", "bad"]
        assert server.stop() == 0
        assert "Unclosed client session" not in server.log()
        assert "OnStop" not in server.log()  # close_http ran without an error
    finally:
        endpoint.shutdown()
        endpoint.server_close()
