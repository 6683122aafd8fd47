"""Pipelining (front/router.py, worker/loop.py ``_run_batch``) against the real server:
calls sent ahead to a busy worker never wait behind a slow call, every reply still
belongs to its call, and calls sent ahead to a worker that hangs are routed again."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from tykworker._proto import coprocess_object_pb2 as object_pb2

from .conftest import Server, busy_with, make_object, wait_for
from .test_observability import scrape_unix, value

pytestmark = pytest.mark.integration


def _echo(server: Server, n: int) -> tuple[int, object_pb2.Object]:
    reply = server.dispatch("Echo", headers={"X-Id": str(n)})
    return n, reply


def _warm(server: Server, hook: str, calls: int = 50, **kw: object) -> None:
    """Serve ``hook`` enough times that the front's average of its service time is its
    real one (well under ``pipeline_fast_ms``, whatever the first call cost)."""
    for _ in range(calls):
        server.dispatch(hook, **kw)  # type: ignore[arg-type]


def test_fast_calls_never_wait_behind_a_slow_call(start_server, gate: Path):
    server = start_server("--workers", "2", "--pipeline-depth", "4")
    _warm(server, "Echo")
    with ThreadPoolExecutor(max_workers=24) as pool:
        held = pool.submit(server.dispatch, "Gate", headers={"Gate": str(gate)})
        (slow_pid,) = wait_for(lambda: busy_with(server, "Gate"), what="Gate running")
        echoes = [pool.submit(_echo, server, n) for n in range(200)]
        # The gate stays shut until every fast call is answered: one sent behind the
        # Gate call would never be, and this wait would fail.
        wait_for(lambda: all(f.done() for f in echoes), what="fast calls answered")
        assert not held.done()
        replies = [f.result()[1] for f in echoes]
        pids = {reply.request.set_headers["X-Worker-Pid"] for reply in replies}
        assert pids and str(slow_pid) not in pids
        gate.touch()
        assert held.result(timeout=30).request.set_headers["X-Worker-Pid"] == str(slow_pid)


def test_every_reply_belongs_to_its_call_under_concurrency(start_server):
    server = start_server("--workers", "2", "--pipeline-depth", "8")
    _warm(server, "Echo")
    with ThreadPoolExecutor(max_workers=48) as pool:
        results = list(pool.map(lambda n: _echo(server, n), range(2000)))
    assert all(reply.request.headers["X-Id"] == str(n) for n, reply in results)


def test_calls_sent_ahead_to_a_hung_worker_are_routed_again(start_server, gate: Path, workdir):
    server = start_server("--workers", "2", "--pipeline-depth", "4", "--hook-timeout", "30")
    open_gate = workdir  # exists: Gate returns at once, and is known as a fast hook
    _warm(server, "Gate", headers={"Gate": str(open_gate)})
    hang = make_object("Gate", headers={"Gate": str(workdir / "never")}).SerializeToString()
    with ThreadPoolExecutor(max_workers=16) as pool:
        # One worker holds a call until the gate opens, the other hangs for good; the
        # hanging call's own deadline (grpc-timeout 1 s) marks its worker lost.
        held = pool.submit(server.dispatch, "Gate", headers={"Gate": str(gate)})
        wait_for(lambda: busy_with(server, "Gate"), what="first Gate running")
        hung: Future[bytes] = pool.submit(server.dispatch_raw, hang, 1.0)
        wait_for(lambda: len(busy_with(server, "Gate")) == 2, what="both workers busy")
        ahead = [
            pool.submit(server.dispatch, "Gate", headers={"Gate": str(open_gate)}) for _ in range(6)
        ]
        # Both deadlines are 1 s: the client's own, or tykworker's timeout answer first.
        try:
            answer = object_pb2.Object.FromString(hung.result(timeout=30))
            assert answer.request.return_overrides.response_code == 504
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        gate.touch()
        held.result(timeout=30)
        replies = [f.result(timeout=30) for f in ahead]
    # Answered by a worker (its pid added), not by tykworker's timeout or crash answer.
    assert all(r.request.set_headers["X-Worker-Pid"] for r in replies)
    assert all(r.request.return_overrides.response_code <= 0 for r in replies)


def _held_by_worker(metrics: Path) -> float:
    return value(scrape_unix(metrics), "tykworker_worker_calls_in_flight", slot="0")


@pytest.mark.parametrize("then", ["exit", "hang"])
def test_a_reply_made_before_a_call_that_kills_or_hangs_its_worker_reaches_its_caller(
    start_server, gate: Path, workdir: Path, then: str
):
    """A worker writes the replies of the calls it read together once they are all done
    (worker/loop.py); the front takes those of calls that ran from the worker's journal
    (wire/journal.py): at once when the next call hangs, before the crash answer when it
    kills the worker."""
    metrics = workdir / "metrics.sock"
    server = start_server(
        "--workers", "1", "--pipeline-depth", "4", "--hook-timeout", "30", "--metrics", str(metrics)
    )  # fmt: skip
    _warm(server, "Gate", headers={"Gate": str(workdir)})
    _warm(server, "Chaos", headers={"Call-Id": "warm"})  # both fast: sent ahead
    doomed = make_object("Chaos", headers={"Do": then, "Call-Id": "doomed"}).SerializeToString()
    pool = ThreadPoolExecutor(max_workers=3)
    try:
        held = pool.submit(server.dispatch, "Gate", headers={"Gate": str(gate)})
        wait_for(lambda: busy_with(server, "Gate"), what="Gate running")
        first = pool.submit(server.dispatch, "Chaos", headers={"Call-Id": "first"})
        wait_for(lambda: _held_by_worker(metrics) == 2, what="first call sent ahead")
        last = pool.submit(server.dispatch_raw, doomed, 25.0)
        wait_for(lambda: _held_by_worker(metrics) == 3, what="doomed call sent ahead")
        # The worker reads both at once when Gate returns, runs the first, then the doomed.
        gate.touch()
        assert held.result(timeout=30).request.set_headers["X-Worker-Pid"]
        # Well before any deadline (30 s, the client's 25 s): not a timeout answer.
        reply = first.result(timeout=10)
        assert reply.request.set_headers["X-Call-Id"] == "first"
        assert reply.request.return_overrides.response_code <= 0
        if then == "exit":
            crashed = object_pb2.Object.FromString(last.result(timeout=30))
            assert crashed.request.return_overrides.response_code == 502  # the crash answer
        else:
            assert not last.done()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
