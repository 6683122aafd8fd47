"""Operator tools against the real server: call, status, metrics, health, logs, slow log."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import PLUGINS, Server, wait_for

pytestmark = pytest.mark.integration

SERVING, NOT_SERVING = b"\x08\x01", b"\x08\x02"
Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


# --- helpers ------------------------------------------------------------------------
def cli(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``tykworker ARGS --socket <the server's>`` and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "tykworker", *args, "--socket", server.socket],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=server.workdir,
        check=False,
    )


def status(server: Server) -> dict[str, Any]:
    done = cli(server, "status", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def parse_samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def scrape_unix(path: Path) -> Samples:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: tykworker\r\n\r\n")
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK"), head
    return parse_samples(body.decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def check(server: Server, service: str = "") -> bytes | grpc.StatusCode:
    """Health Check: the encoded response, or the gRPC error code."""
    method = server.channel.unary_unary("/grpc.health.v1.Health/Check", None, None)
    raw = service.encode()
    try:
        return method(b"\x0a" + bytes([len(raw)]) + raw if raw else b"", timeout=10)  # type: ignore[no-any-return]
    except grpc.RpcError as exc:
        return exc.code()


class Watch:
    """A Health/Watch stream read by a thread; ``seen`` is every status received."""

    def __init__(self, server: Server) -> None:
        self.seen: list[bytes] = []
        self.ended: grpc.StatusCode | None = None
        self.done = threading.Event()
        watch = server.channel.unary_stream("/grpc.health.v1.Health/Watch", None, None)
        self.stream = watch(b"", timeout=120)
        self.thread = threading.Thread(target=self._read)
        self.thread.start()

    def _read(self) -> None:
        try:
            for message in self.stream:
                self.seen.append(message)
            self.ended = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            self.ended = exc.code()
        finally:
            self.done.set()

    def close(self) -> None:
        self.stream.cancel()
        self.thread.join(10)


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.setdefault("r", fn()))
    thread.start()
    return thread, result


def json_lines(server: Server) -> list[dict[str, Any]]:
    out = []
    for line in server.log().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


# --- tykworker call -----------------------------------------------------------------
def test_call_prints_the_reply_object(start_server, workdir):
    server = start_server("--workers", "1")
    done = cli(
        server, "call", "Echo", "--header", "x-test: 1", "--body", "hi", "--spec", "APIID=demo"
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["hook_name"] == "Echo" and doc["hook_type"] == "Pre"
    assert doc["request"]["set_headers"]["X-Version"] == "1"
    assert doc["request"]["headers"]["X-Test"] == "1"
    assert doc["request"]["raw_body"] == "hi"  # bytes shown as text
    assert doc["spec"]["APIID"] == "demo"

    failed = cli(server, "call", "Raise")
    assert failed.returncode == 5  # answered by tykworker on the hook's behalf
    overrides = json.loads(failed.stdout)["request"]["return_overrides"]
    assert overrides["response_code"] == 500
    assert "answered by tykworker: hook_error" in failed.stderr

    response = cli(server, "call", "AddResponseHeader", "--type", "response")
    assert json.loads(response.stdout)["response"]["headers"]["X-Added"] == "yes"

    event = cli(server, "call", "RecordEvent", "--event", '{"Type": "AuthFailure"}')
    assert (event.returncode, json.loads(event.stdout)) == (0, {})


def test_call_reports_an_unknown_hook_and_an_unknown_event_handler_alike(start_server):
    server = start_server("--workers", "1")
    hook = cli(server, "call", "NoSuchHook")
    assert hook.returncode == 5
    assert "answered by tykworker: no_hook (Plugin hook not found" in hook.stderr
    event = cli(server, "call", "NoSuchHandler", "--event", '{"Type": "AuthFailure"}')
    assert event.returncode == 5, event.stderr
    assert "answered by tykworker: no_hook (Plugin hook not found" in event.stderr
    assert json.loads(event.stdout) == {}
    assert "no @Event handler 'NoSuchHandler'" in server.log()


def test_event_metrics_are_labelled_by_handler_name(start_server, workdir):
    path = workdir / "metrics.sock"
    server = start_server("--workers", "1", "--metrics", str(path))
    recorded = {"message": {"Type": "AuthFailure"}, "handler_name": "RecordEvent"}
    for _ in range(2):
        assert server.event(json.dumps(recorded)) == b""
    assert server.event(json.dumps({"handler_name": "NoSuchHandler"})) != b""
    samples = scrape_unix(path)
    assert value(samples, "tykworker_calls_total", hook="RecordEvent", type="event") == 2
    assert value(samples, "tykworker_calls_total", hook="NoSuchHandler", type="event") == 1
    answers = "tykworker_answers_total"
    assert value(samples, answers, hook="NoSuchHandler", type="event", reason="no_hook") == 1
    assert value(samples, "tykworker_calls_total", hook="", type="event") == 0


def test_call_exits_non_zero_on_grpc_errors(workdir):
    nobody = Server.__new__(Server)
    nobody.socket, nobody.workdir = str(workdir / "nobody.sock"), workdir
    done = cli(nobody, "call", "Echo", "--timeout", "5")
    assert done.returncode == 1
    assert "UNAVAILABLE" in done.stderr or "DEADLINE_EXCEEDED" in done.stderr


# --- metrics ------------------------------------------------------------------------
def test_metrics_count_calls_answers_and_restarts_across_worker_churn(start_server, workdir, gate):
    path = workdir / "metrics.sock"
    server = start_server(
        "--workers", "2", "--metrics", str(path), "--hook-timeout-for", "post=0.5"
    )  # fmt: skip
    # serving as soon as one worker is ready: wait for both (the second may still import)
    wait_for(
        lambda: (
            (s := scrape_unix(path))
            and value(s, "tykworker_serving")
            and value(s, "tykworker_workers", state="idle") == 2
            and s
        )
    )
    for _ in range(5):
        server.dispatch("Echo")
    for _ in range(2):
        server.dispatch("Raise")
    server.dispatch("NoSuchHook")
    before = scrape_unix(path)
    server.dispatch("Gate", hook_type="post", headers={"Gate": str(gate)})  # never opened: timeout
    server.dispatch("Exit")  # crash
    after = wait_for(
        lambda: (
            (s := scrape_unix(path))
            and value(s, "tykworker_worker_restarts_total") >= 2
            and value(s, "tykworker_workers", state="idle") == 2
            and s
        ),
        what="both workers replaced",
    )
    assert value(after, "tykworker_calls_total", hook="Echo", type="pre") == 5
    assert value(after, "tykworker_call_duration_seconds_count", hook="Echo", type="pre") == 5
    answers = "tykworker_answers_total"
    assert value(after, answers, hook="Raise", type="pre", reason="hook_error") == 2
    assert value(after, answers, hook="NoSuchHook", type="pre", reason="no_hook") == 1
    assert value(after, answers, hook="Gate", type="post", reason="timeout") == 1
    assert value(after, answers, hook="Exit", type="pre", reason="crash") == 1
    assert value(after, "tykworker_queue_wait_seconds_count") == 10
    assert value(after, "tykworker_generation") == 1
    # Counters and histograms never go backwards, whatever workers came and went.
    for name, series in before.items():
        if name.endswith(("_total", "_count", "_sum", "_bucket")):
            for labels, old in series.items():
                assert after[name][labels] >= old, (name, labels)
    log = status(server)["server"]
    assert (log["errors"], log["timeouts"], log["crashes"]) == (3, 1, 1)


def test_metrics_over_tcp_and_a_bad_path(start_server):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = start_server("--workers", "1", "--metrics", f"127.0.0.1:{port}")
    server.dispatch("Echo")
    url = f"http://127.0.0.1:{port}"
    with urllib.request.urlopen(url + "/metrics", timeout=10) as reply:
        samples = parse_samples(reply.read().decode())
    assert value(samples, "tykworker_calls_total", hook="Echo", type="pre") == 1
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(url + "/nope", timeout=10)
    info.value.close()
    assert info.value.code == 404


# --- status -------------------------------------------------------------------------
def test_status_under_load_and_after_a_worker_kill(start_server, gate):
    server = start_server("--workers", "2")
    calls = [in_thread(lambda: server.dispatch("Gate", headers={"Gate": str(gate)})) for _ in "ab"]
    try:

        def both_busy() -> list[dict[str, Any]] | None:
            busy = [w for w in status(server)["workers"] if w["state"] == "busy"]
            return busy if len(busy) == 2 else None

        busy = wait_for(both_busy, what="both workers busy")
        assert {w["hook"] for w in busy} == {"Gate"} and all(w["call_id"] for w in busy)
        text = cli(server, "status").stdout
        assert "busy" in text and "Gate for" in text
        victim, survivor = busy[0]["pid"], busy[1]["pid"]
        os.kill(victim, signal.SIGKILL)
        doc = wait_for(
            lambda: (
                (d := status(server))
                and victim not in {w["pid"] for w in d["workers"]}
                and len(d["workers"]) == 2
                and d["server"]["restarts"] == 1
                and not d["server"]["degraded"]  # until the new worker has imported
                and d
            ),
            what="victim replaced",
        )
        assert doc["server"]["crashes"] == 1  # the call it held got the crash answer
        still = [w for w in doc["workers"] if w["pid"] == survivor]
        assert [w["state"] for w in still] == ["busy"]  # the other call is still held
    finally:
        gate.touch()
        for thread, _ in calls:
            thread.join(30)
    replies = [result["r"].request for _, result in calls]
    assert sorted(r.return_overrides.response_code for r in replies) == [-1, 502]
    assert [r.set_headers["X-Worker-Pid"] for r in replies if "X-Worker-Pid" in r.set_headers] == [
        str(survivor)
    ]  # the survivor served its call once the gate opened


# --- logs ---------------------------------------------------------------------------
def test_slow_call_log_names_the_call_and_shows_the_stack(start_server, gate):
    server = start_server(
        "--workers", "1", "--slow-call-threshold", "0.3", "--log-format", "json"
    )  # fmt: skip
    (pid,) = server.worker_pids()

    def slow_records() -> list[dict[str, Any]]:
        return [r for r in json_lines(server) if r["logger"] == "tykworker.slow"]

    thread, result = in_thread(lambda: server.dispatch("Gate", headers={"Gate": str(gate)}))
    wait_for(slow_records, what="slow call record")  # logged while the call still runs
    gate.touch()
    thread.join(30)
    assert result["r"].request.set_headers["X-Worker-Pid"] == str(pid)  # answered, not killed
    server.dispatch("Echo")  # fast: no slow record
    (record,) = slow_records()
    assert (record["hook"], record["api_id"]) == ("Gate", "api1")
    assert (record["worker_pid"], record["generation"]) == (pid, 1)
    assert isinstance(record["call_id"], int) and record["elapsed"] >= 0.3
    # The hook's own frame (where in its loop the sample caught it varies: the sleep, or the
    # os.path.exists check, as CI saw once).
    assert "hooks.py" in record["msg"] and "in Gate" in record["msg"]
    assert server.worker_pids() == {pid}


def test_call_path_lines_carry_call_id_hook_api_pid_and_generation(start_server, gate):
    server = start_server("--workers", "1", "--log-format", "json", "--hook-timeout", "1")
    (pid,) = server.worker_pids()
    server.dispatch("Raise", spec={"APIID": "my-api", "OrgID": "o", "bundle_hash": ""})
    server.dispatch("Gate", headers={"Gate": str(gate)})  # never opened: the front times out
    records = wait_for(
        lambda: (r := json_lines(server)) and any(x.get("reason") == "timeout" for x in r) and r
    )
    (failed,) = [r for r in records if r["msg"].startswith("hook failed")]
    assert (failed["hook"], failed["api_id"]) == ("Raise", "my-api")
    assert (failed["worker_pid"], failed["generation"]) == (pid, 1)
    (timeout,) = [r for r in records if r.get("reason") == "timeout"]
    assert timeout["hook"] == "Gate" and timeout["call_id"] == failed["call_id"] + 1
    assert (timeout["worker_pid"], timeout["generation"]) == (pid, 1)


# --- health -------------------------------------------------------------------------
GATE = '''"""Holds the plugin import until the test creates the gate file."""
import os
import time

_gate = os.environ.get("TW_TEST_GATE", "")
while _gate and not os.path.exists(_gate):
    time.sleep(0.01)
'''


def test_health_through_start_reload_and_drain(start_server, workdir, gate):
    shutil.copytree(PLUGINS, workdir / "middleware")
    (workdir / "middleware" / "gate.py").write_text(GATE)
    imports = workdir / "imports-gate"
    server = start_server("--workers", "2", ready=False, env={"TW_TEST_GATE": str(imports)})
    wait_for(lambda: os.path.exists(server.socket), what="socket")
    assert check(server) == NOT_SERVING  # workers still importing
    assert check(server, "coprocess.Dispatcher") == NOT_SERVING
    assert check(server, "other") == grpc.StatusCode.NOT_FOUND
    watch = Watch(server)
    wait_for(lambda: watch.seen, what="first Watch message")
    imports.touch()
    server.wait_ready()
    wait_for(lambda: check(server) == SERVING, what="SERVING")
    wait_for(lambda: watch.seen[-1:] == [SERVING], what="Watch SERVING")
    assert watch.seen[0] == NOT_SERVING

    old = server.worker_pids()
    server.signal(signal.SIGHUP)
    server.wait_notify("RELOADING=1")
    server.wait_notify("READY=1")
    wait_for(lambda: not (server.worker_pids() & old), what="old generation gone")
    assert check(server) == SERVING
    assert NOT_SERVING not in watch.seen[1:]  # SERVING all through the reload

    thread, result = in_thread(lambda: server.dispatch("Gate", headers={"Gate": str(gate)}))
    wait_for(lambda: any(w["state"] == "busy" for w in status(server)["workers"]), what="busy")
    server.signal(signal.SIGTERM)
    assert watch.done.wait(30) and watch.ended == grpc.StatusCode.OK
    assert watch.seen[-1] == NOT_SERVING  # told, then the stream ended
    assert check(server) in (NOT_SERVING, grpc.StatusCode.UNAVAILABLE)
    assert "r" not in result and server.proc.poll() is None  # the held call holds the stop
    gate.touch()
    thread.join(30)
    assert result["r"].request.return_overrides.response_code == -1  # drained, not failed
    assert server.proc.wait(30) == 0


def test_status_after_the_server_stopped_says_nothing_runs(start_server):
    server = start_server("--workers", "1")
    assert cli(server, "status").returncode == 0
    assert server.stop() == 0
    assert list(server.workdir.glob(".*.tykworker/scoreboard"))  # the last one is still there
    done = cli(server, "status")
    assert done.returncode == 2
    assert "no running tykworker found" in done.stderr
    assert done.stdout == ""


def test_status_into_a_closed_pipe_exits_quietly(start_server):
    """``tykworker status | head -0``: no reader left; no traceback, exit 128 + SIGPIPE."""
    server = start_server("--workers", "1")
    read_end, write_end = os.pipe()
    os.close(read_end)  # before the command starts: its first write must fail with EPIPE
    try:
        done = subprocess.run(
            [sys.executable, "-m", "tykworker", "status", "--socket", server.socket],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 128 + signal.SIGPIPE
    assert done.stderr == ""


def test_failed_reload_counts_import_failures_not_restarts(start_server, workdir):
    path = workdir / "metrics.sock"
    server = start_server("--workers", "1", "--metrics", str(path))
    (workdir / "middleware" / "broken.py").write_text("raise ImportError('on purpose')\n")
    server.signal(signal.SIGHUP)
    board = wait_for(
        lambda: (s := status(server)["server"])["reload_failures"] == 1 and s,
        what="the reload failed",
    )
    assert (board["restarts"], board["import_failures"]) == (0, 1)
    text = cli(server, "status").stdout
    assert "restarts 0; import failures 1; reloads 0 (1 failed)" in text
    samples = scrape_unix(path)
    assert value(samples, "tykworker_worker_restarts_total") == 0
    assert value(samples, "tykworker_worker_import_failures_total") == 1
    assert value(samples, "tykworker_reloads_total", outcome="failed") == 1


def test_status_shows_only_this_supervisors_workers_and_checks_the_supervisor(start_server):
    """What status reads could be written by others (a plugin of the same uid can open the
    scoreboard by path): a slot naming a process that is not one of the supervisor's
    children is not shown, and a header naming a process that is not this server's
    supervisor (a recycled pid) reads as nothing running."""
    from tykworker.wire.scoreboard import MAX_SLOTS, Scoreboard, SlotState

    server = start_server("--workers", "1")
    (path,) = server.workdir.glob(".*.tykworker/scoreboard")
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        board = Scoreboard.open(path)
        board.write_slot(MAX_SLOTS - 1, pid=stranger.pid, generation=1, state=SlotState.BUSY)
        shown = {w["pid"] for w in status(server)["workers"]}
        assert shown == server.worker_pids() and stranger.pid not in shown
        real = board.header().supervisor_pid
        board.write_header(supervisor_pid=stranger.pid)
        done = cli(server, "status")
        assert done.returncode == 2 and "no running tykworker found" in done.stderr
        board.write_header(supervisor_pid=real)
        board.close()
    finally:
        stranger.kill()
        stranger.wait()
