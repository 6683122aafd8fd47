"""Timeouts, crashes and overload: every call gets exactly one defined answer.

Calls that must outlive their deadline hold on a ``gate`` the test never opens (the hook
never returns by itself); calls that only need to keep a worker busy hold on a gate the
test opens once it has seen what it came for.
"""

from __future__ import annotations

import os
import signal
import socket
import threading

import grpc
import psutil
import pytest

from tykworker._proto import coprocess_object_pb2 as object_pb2
from tykworker.wire.frames import FrameDecoder, FrameKind, encode_frame

from .conftest import FRONT, make_object, wait_for

pytestmark = pytest.mark.integration


def test_timeout_answers_504_dumps_stack_and_replaces_worker(start_server, gate):
    server = start_server("--workers", "1", "--hook-timeout", "1")
    (stuck,) = server.worker_pids()
    reply = server.dispatch("Gate", headers={"Gate": str(gate)})  # never opened
    overrides = reply.request.return_overrides
    assert (overrides.response_code, overrides.response_error) == (504, "Plugin timeout")
    assert overrides.headers["X-Tykworker-Error"] == "timeout"
    wait_for(lambda: server.worker_pids() and stuck not in server.worker_pids(), what="respawn")
    log = wait_for(lambda: "Fatal Python error: Aborted" in server.log() and server.log())
    assert f"worker pid {stuck} stuck on call" in log and "hook 'Gate'" in log
    assert "in Gate" in log  # the plugin frame is in the dumped stack
    # One record attributes the dump to the call the worker was stuck on.
    assert f"worker pid {stuck} died during call " in log
    attributed = log[log.index(f"worker pid {stuck} died during call ") :]
    assert attributed.splitlines()[0].endswith("hook 'Gate'; stacks of all its threads:")
    assert "Fatal Python error: Aborted" in attributed
    assert server.dispatch("Echo").request.set_headers["X-Version"] == "1"


def test_per_hook_type_timeout_and_fail_open(start_server, gate):
    server = start_server(
        "--workers",
        "2",
        "--hook-timeout",
        "30",
        "--hook-timeout-for",
        "post=0.5",
        "--fail-open",
        "post",
    )
    reply = server.dispatch("Gate", hook_type="post", headers={"Gate": str(gate)})  # never opened
    # Fail open: the original object comes back untouched.
    assert reply.request.return_overrides.response_code == -1
    assert "X-Worker-Pid" not in reply.request.set_headers


def test_response_hook_timeout_sets_the_response(start_server, gate):
    server = start_server("--workers", "1", "--hook-timeout", "0.5")
    reply = server.dispatch("Gate", hook_type="response", headers={"Gate": str(gate)})
    assert reply.response.status_code == 504
    assert b"Plugin timeout" in reply.response.raw_body


@pytest.mark.parametrize("hook", ["Exit", "Segfault"])
def test_worker_dying_mid_call_answers_502_and_is_refilled(start_server, hook):
    server = start_server("--workers", "1")
    (before,) = server.worker_pids()
    reply = server.dispatch(hook)
    assert reply.request.return_overrides.response_code == 502
    wait_for(lambda: server.worker_pids() - {before}, what="refill")
    if hook == "Segfault":  # a crash in C: its stack, attributed to the call
        log = wait_for(lambda: "Segmentation fault" in server.log() and server.log())
        assert f"worker pid {before} died during call " in log
        assert "hook 'Segfault'; stacks of all its threads:" in log
        assert "in Segfault" in log
    assert server.dispatch("Echo").request.set_headers["X-Version"] == "1"


def test_sigkill_of_a_busy_worker_answers_crash(start_server, gate):
    server = start_server("--workers", "1")
    (pid,) = server.worker_pids()
    result: dict[str, object_pb2.Object] = {}
    thread = threading.Thread(  # held until the kill: the gate is never opened
        target=lambda: result.setdefault("r", server.dispatch("Gate", headers={"Gate": str(gate)}))
    )
    thread.start()
    wait_for(lambda: "running Gate" in " ".join(_cmdline(pid)), what="worker busy")
    os.kill(pid, signal.SIGKILL)
    thread.join(30)
    assert result["r"].request.return_overrides.response_code == 502
    wait_for(lambda: server.worker_pids() - {pid}, what="refill")


def test_full_queue_gets_immediate_overload_answer(start_server, gate):
    server = start_server("--workers", "1", "--queue-size", "0")
    (pid,) = server.worker_pids()
    held: dict[str, object_pb2.Object] = {}
    thread = threading.Thread(
        target=lambda: held.setdefault("r", server.dispatch("Gate", headers={"Gate": str(gate)}))
    )
    thread.start()
    wait_for(lambda: "running Gate" in " ".join(_cmdline(pid)), what="worker busy")
    reply = server.dispatch("Echo")
    assert reply.request.return_overrides.response_code == 503
    assert reply.request.return_overrides.headers["X-Tykworker-Error"] == "overload"
    assert "r" not in held  # the overload answer came while the worker was still busy
    gate.touch()
    thread.join(30)
    assert held["r"].request.set_headers["X-Worker-Pid"] == str(pid)  # it was served


def test_auth_hook_timeout_fails_closed(start_server, gate):
    server = start_server("--workers", "1", "--hook-timeout-for", "auth=0.5")
    reply = server.dispatch("Gate", hook_type="auth", headers={"Gate": str(gate)})
    assert reply.request.return_overrides.response_code == 504
    assert not reply.HasField("session") or "token" not in reply.session.metadata


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().decode().split("\0")
    except OSError:
        return []


def test_worker_stuck_on_a_call_the_client_abandoned_is_still_replaced(start_server, gate):
    server = start_server("--workers", "1", "--hook-timeout", "1.5")
    (stuck,) = server.worker_pids()
    payload = make_object("Gate", headers={"Gate": str(gate)}).SerializeToString()
    method = server.channel.unary_unary("/coprocess.Dispatcher/Dispatch")
    future = method.future(payload)  # no deadline, like the gateway
    wait_for(lambda: "running Gate" in " ".join(_cmdline(stuck)), what="worker busy")
    future.cancel()  # the gateway's client went away
    with pytest.raises(grpc.FutureCancelledError):
        future.result()
    wait_for(lambda: server.worker_pids() and stuck not in server.worker_pids(), what="replace")
    assert f"worker pid {stuck} stuck on call" in server.log()
    assert server.dispatch("Echo").request.set_headers["X-Version"] == "1"


@pytest.mark.parametrize("hook_type", ["pre", "response"])
def test_reply_over_max_message_gets_500_and_keeps_the_worker(start_server, hook_type):
    """A hook whose reply is over ``max_message_mb`` gets the plugin-error answer (the
    original request echoed) from the worker that ran it, which keeps serving: no crash,
    no restart, no crash backoff for the next call."""
    server = start_server("--workers", "1", "--max-message-mb", "1")
    (pid,) = server.worker_pids()
    size = str(2 * 1024 * 1024)
    if hook_type == "pre":
        reply = server.dispatch("Inflate", headers={"Size": size}, body=b"original")
        overrides = reply.request.return_overrides
        assert (overrides.response_code, overrides.response_error) == (500, "Plugin error")
        assert overrides.headers["X-Tykworker-Error"] == "hook_error"
        assert reply.request.raw_body == b"original"  # the request, not the hook's reply
        assert "X-Worker-Pid" not in reply.request.set_headers
    else:
        reply = server.dispatch("Inflate", "response", headers={"Size": size})
        assert reply.response.status_code == 500
        assert reply.response.headers["X-Tykworker-Error"] == "hook_error"
    log = wait_for(lambda: "over max_message_mb" in server.log() and server.log())
    assert "hook Inflate built a reply of 2" in log  # 2 MiB and a few bytes
    small = server.dispatch("Inflate", headers={"Size": "10"})
    assert small.request.raw_body == b"x" * 10
    assert small.request.set_headers["X-Worker-Pid"] == str(pid)
    assert server.worker_pids() == {pid}
    assert "exited with code" not in server.log()


@pytest.mark.parametrize("which", ["grpc", "raw"])
def test_a_front_crash_keeps_the_sockets_listening(start_server, workdir, which):
    """The supervisor owns the public sockets: while no front runs (the old one SIGKILLed,
    the supervisor stopped so that none is started yet) a new connection waits in the
    backlog instead of being refused, and its call is served by the next front."""
    if which == "grpc" and FRONT == "grpcio":
        pytest.skip("the grpcio front binds its own socket")
    raw_path = str(workdir / "raw.sock")
    server = start_server("--workers", "1", "--raw-socket", raw_path)
    front = server.front_pid()
    payload = make_object("Echo").SerializeToString()
    channel = grpc.insecure_channel("unix://" + server.socket)
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        os.kill(front, signal.SIGKILL)
        wait_for(lambda: psutil.Process(front).status() == psutil.STATUS_ZOMBIE, what="front dead")
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(server.socket if which == "grpc" else raw_path)  # not refused
        if which == "grpc":  # and a gateway's call made now is served by the next front
            future = channel.unary_unary("/coprocess.Dispatcher/Dispatch", None, None).future(
                payload, timeout=30
            )
        else:
            client.sendall(encode_frame(FrameKind.DISPATCH, 7, payload))
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    with client, channel:
        if which == "grpc":
            reply = future.result()
        else:
            decoder = FrameDecoder()
            while (frame := decoder.next_frame()) is None:
                data = client.recv(65536)
                assert data, "raw connection closed without an answer"
                decoder.feed(data)
            assert (frame.kind, frame.call_id) == (FrameKind.REPLY, 7)
            reply = frame.payload
    assert object_pb2.Object.FromString(reply).request.set_headers["X-Version"] == "1"
