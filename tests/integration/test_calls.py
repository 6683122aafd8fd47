"""Dispatch and DispatchEvent through the real server, as a gateway calls them."""

from __future__ import annotations

import json
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from tykworker._proto import coprocess_object_pb2 as object_pb2

from .conftest import Server, busy_with, make_object, wait_for

pytestmark = pytest.mark.integration


def test_dispatch_runs_the_hook_and_echoes_the_object(start_server):
    server = start_server("--workers", "2")
    sent = make_object("Echo", body=b'{"a": 1}', method="POST")
    reply = object_pb2.Object.FromString(server.dispatch_raw(sent.SerializeToString()))
    assert reply.request.set_headers["X-Version"] == "1"
    assert int(reply.request.set_headers["X-Worker-Pid"]) in server.worker_pids()
    # Everything the gateway reads back is echoed unchanged.
    assert reply.request.raw_body == b'{"a": 1}'
    assert reply.request.url == sent.request.url
    assert reply.request.method == "POST"
    assert reply.request.return_overrides.response_code == -1
    assert reply.spec == sent.spec


def test_calls_spread_over_workers_concurrently(start_server, gate):
    """N blocking calls at once are served by N different workers (no shared lock): all
    three are held inside their hooks at the same time, then released."""
    server = start_server("--workers", "3")

    def call(_: int) -> int:
        reply = server.dispatch("Gate", headers={"Gate": str(gate)})
        return int(reply.request.set_headers["X-Worker-Pid"])

    with ThreadPoolExecutor(3) as pool:
        replies = pool.map(call, range(3))
        wait_for(lambda: busy_with(server, "Gate") == server.worker_pids(), what="all held")
        gate.touch()
        pids = set(replies)
    assert len(pids) == 3
    assert pids == server.worker_pids()


def test_hook_that_raises_gets_a_defined_answer_and_worker_survives(start_server):
    server = start_server("--workers", "1")
    before = server.worker_pids()
    reply = server.dispatch("Raise")
    assert reply.request.return_overrides.response_code == 500
    assert server.dispatch("Echo").request.set_headers["X-Version"] == "1"
    assert server.worker_pids() == before


def test_twenty_mib_body_round_trips(start_server):
    server = start_server("--workers", "1")
    body = bytes(range(256)) * (20 * 4096)
    assert len(body) == 20 * 1024 * 1024
    reply = server.dispatch("BigBody", body=body)
    assert reply.request.raw_body == body[::-1]


def test_message_over_the_limit_is_rejected_and_server_keeps_serving(start_server):
    server = start_server("--workers", "1", "--max-message-mb", "1")
    with pytest.raises(grpc.RpcError) as info:
        server.dispatch("Echo", body=b"x" * (2 * 1024 * 1024))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert server.dispatch("Echo").request.set_headers["X-Version"] == "1"


def test_dispatch_event_reaches_the_event_handler(start_server):
    server = start_server("--workers", "2")
    payload = (
        '{"message": {"Type": "AuthFailure", "Meta": {"Key": "k"}, "TimeStamp": "t"},'
        ' "handler_name": "RecordEvent", "spec": {"APIID": "api1", "OrgID": "org1"}}'
    )
    assert server.event(payload) == b""
    # The handler stored the spec; read it back through a hook in (maybe) another worker.
    reply = wait_for(
        lambda: (
            (
                r := server.dispatch("Store", headers={"Key": "event:AuthFailure"})
            ).request.set_headers["X-Value"]
            and r
        ),
        what="event handler side effect",
    )
    assert '"APIID": "api1"' in reply.request.set_headers["X-Value"]


def test_unknown_method_is_unimplemented(start_server):
    server = start_server("--workers", "1")
    method = server.channel.unary_unary("/coprocess.Dispatcher/Nope")
    with pytest.raises(grpc.RpcError) as info:
        method(b"", timeout=10)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_tcp_socket(start_server, workdir):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = start_server("--workers", "1", "--socket", f"tcp://127.0.0.1:{port}")
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    method = channel.unary_unary("/coprocess.Dispatcher/Dispatch", None, None)
    reply = object_pb2.Object.FromString(
        method(make_object("Echo").SerializeToString(), timeout=30)
    )
    channel.close()
    assert reply.request.set_headers["X-Version"] == "1"
    assert server.proc.poll() is None
    # The runtime directory of a tcp:// server is where the README says, the server's alone
    # (a second server on that address is refused before touching it), gone once it stops.
    runtime = Path(tempfile.gettempdir()) / f"tykworker-tcp-127.0.0.1_{port}"
    assert (runtime / "scoreboard").is_file()
    second_dir = Path(tempfile.mkdtemp(prefix="tw-", dir="/tmp"))
    try:
        second = Server(second_dir, ["--socket", f"tcp://127.0.0.1:{port}", "--workers", "1"])
        assert second.proc.wait(30) == 2
        assert second.stop() == 2
        assert "another server is already listening" in second.log()
    finally:
        shutil.rmtree(second_dir, ignore_errors=True)
    assert server.proc.poll() is None
    board = subprocess.run(
        [sys.executable, "-m", "tykworker", "status", "--json", "--socket", f"tcp://127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert board.returncode == 0, board.stderr
    assert json.loads(board.stdout)["server"]["supervisor_pid"] == server.proc.pid
    assert server.stop() == 0
    assert not runtime.exists()


def _raw_call(
    sock: socket.socket, kind: int, call_id: int, payload: bytes
) -> tuple[int, int, bytes]:
    sock.sendall(struct.pack(">2sBBIQ", b"TW", 1, kind, len(payload), call_id) + payload)
    header = b""
    while len(header) < 16:
        header += sock.recv(16 - len(header))
    magic, version, rkind, length, rid = struct.unpack(">2sBBIQ", header)
    assert (magic, version) == (b"TW", 1)
    body = b""
    while len(body) < length:
        body += sock.recv(length - len(body))
    return rkind, rid, body


def test_raw_socket_serves_the_same_calls(start_server, workdir):
    raw = str(workdir / "raw.sock")
    start_server("--workers", "1", "--raw-socket", raw)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(raw)
        kind, call_id, body = _raw_call(sock, 1, 77, make_object("Echo").SerializeToString())
        assert (kind, call_id) == (3, 77)
        assert object_pb2.Object.FromString(body).request.set_headers["X-Version"] == "1"
        kind, call_id, body = _raw_call(sock, 1, 78, make_object("Exit").SerializeToString())
        assert (kind, call_id) == (3, 78)
        assert object_pb2.Object.FromString(body).request.return_overrides.response_code == 502


def test_raw_socket_garbage_gets_an_error_frame(start_server, workdir):
    raw = str(workdir / "raw.sock")
    server = start_server("--workers", "1", "--raw-socket", raw)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(raw)
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    assert data[:2] == b"TW" and data[3] == 4  # ERROR frame, then close
    assert b"magic" in data[16:]
    assert server.dispatch("Echo").request.set_headers["X-Version"] == "1"
