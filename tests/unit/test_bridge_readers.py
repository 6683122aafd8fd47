"""The bridge readers survive any bytes (act layer, no server): the front's ``_WorkerLink``
over a fake transport, and the worker loop over a real socketpair. A malformed frame closes
that one connection; nothing is raised out of the reader."""

from __future__ import annotations

import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tykworker.config import Settings
from tykworker.front.core import Front, _WorkerLink
from tykworker.wire import control
from tykworker.wire.frames import FrameKind, encode_frame
from tykworker.wire.handoff import FrontSpec, WorkerSpec
from tykworker.wire.scoreboard import Scoreboard
from tykworker.worker.loop import Worker, _Signals

_SIGNALS = (signal.SIGTERM, signal.SIGQUIT, signal.SIGINT, signal.SIGHUP, signal.SIGTTIN,
            signal.SIGTTOU, signal.SIGUSR1, signal.SIGCHLD)  # fmt: skip
kinds = st.sampled_from(FrameKind)
hello = encode_frame(FrameKind.HELLO, 0, control.encode(control.Hello(os.getpid(), 1, 0)))
frames = st.one_of(
    st.binary(max_size=40),
    st.builds(encode_frame, kinds, st.integers(0, 5), st.binary(max_size=24)),
    st.builds(
        encode_frame,
        st.just(FrameKind.CONTROL),
        st.integers(0, 5),
        st.sampled_from([b"\x80", b"\xc1", control.encode(control.Failed("x"))]),
    ),
    st.just(hello),
)


class FakeTransport:
    def __init__(self) -> None:
        self.closed = False
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def writelines(self, data: list[bytes]) -> None:
        self.written.extend(data)

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> Any:
        return None


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("board") / "scoreboard"
    Scoreboard.create(path).close()
    return path


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(frames, max_size=6), st.booleans())
def test_front_bridge_reader_survives_any_bytes(
    board: Path, chunks: list[bytes], split: bool
) -> None:
    mine, theirs = socket.socketpair()
    try:
        front = Front(Settings(), FrontSpec(mine, theirs.fileno(), board))
        link = _WorkerLink(front)
        transport = FakeTransport()
        link.connection_made(transport)  # type: ignore[arg-type]
        data = b"".join([hello, *chunks])
        for piece in [data[i : i + 7] for i in range(0, len(data), 7)] if split else [data]:
            link.data_received(piece)  # never raises
        link.connection_lost(None)
        assert front.router.workers == {} and front.members == {}
    finally:
        mine.close()
        theirs.close()


class _NoRuntime:
    def __init__(self) -> None:
        self.calls = 0

    def start_dispatch(self, payload: bytes | bytearray) -> bytes:
        self.calls += 1
        return b""

    def start_event(self, payload: bytes | bytearray) -> bytes:
        self.calls += 1
        return b""

    def close(self) -> None:
        pass


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(frames, max_size=6))
def test_worker_bridge_reader_survives_any_bytes(board: Path, chunks: list[bytes]) -> None:
    """Whatever the front sends, the loop answers or exits with a code; it never raises."""
    front, bridge = socket.socketpair()
    spec = WorkerSpec(1, 0, 0, Path("/nonexistent"), -1, board)
    worker = Worker(Settings(), spec)
    outcome: list[object] = []

    def serve() -> None:
        try:
            outcome.append(worker._serve(bridge, _NoRuntime(), signals))
        except BaseException as exc:
            outcome.append(exc)

    saved = {n: signal.getsignal(n) for n in _SIGNALS}
    signals = _Signals()
    thread = threading.Thread(target=serve)
    thread.start()
    try:
        front.sendall(b"".join(chunks))
        front.shutdown(socket.SHUT_WR)
        thread.join(10)
        assert not thread.is_alive()
        assert len(outcome) == 1 and isinstance(outcome[0], int), outcome
    finally:
        front.close()
        bridge.close()
        signal.set_wakeup_fd(-1)
        for signum, handler in saved.items():
            signal.signal(signum, handler)
        signals.wake_r.close()
        signals.wake_w.close()


class _PeerTransport(FakeTransport):
    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock

    def get_extra_info(self, name: str) -> Any:
        return self.sock if name == "socket" else None


@pytest.mark.parametrize("claimed", [os.getpid(), os.getpid() + 1])
def test_a_hello_must_name_the_connected_process(board: Path, claimed: int) -> None:
    """Plugin code could send its own HELLO naming a sibling's pid, so that the front's
    stuck report would name the sibling: the pid is checked with SO_PEERCRED."""
    mine, theirs = socket.socketpair()
    try:
        front = Front(Settings(), FrontSpec(mine, theirs.fileno(), board))
        link = _WorkerLink(front)
        transport = _PeerTransport(mine)
        link.connection_made(transport)  # type: ignore[arg-type]
        link.data_received(
            encode_frame(FrameKind.HELLO, 0, control.encode(control.Hello(claimed, 1, 0)))
        )
        assert transport.closed is (claimed != os.getpid())
        assert [w.pid for w in front.members.values()] == (
            [claimed] if claimed == os.getpid() else []
        )
    finally:
        mine.close()
        theirs.close()
