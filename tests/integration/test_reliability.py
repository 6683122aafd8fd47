"""Chaos under steady load: what plugins and operators do to the server, with counts.

Every scenario runs the real server under load from real clients (gRPC threads plus one
raw-socket connection pipelining calls), does something hostile for a few seconds, then
counts. Each call carries a unique ``Call-Id`` header (the raw socket also uses it as the
frame's call id) and every reply is matched back to it:

* ``sent``: calls started by the clients;
* ``answered``: calls that got exactly one reply carrying their own id, by status
  (``ok`` = the hook's own answer, else tykworker's answer: 500 hook error, 502 crash,
  503 overload/unavailable, 504 timeout);
* ``refused``: gRPC calls refused before the server accepted them (only after SIGTERM,
  once the socket is gone: ``UNAVAILABLE``);
* ``lost``: calls with no answer (any other gRPC error, a client deadline, a raw call
  never replied to): must be 0;
* ``duplicated`` / ``misrouted``: a second reply for one id, or a reply carrying another
  call's id: must be 0.

Then: the supervisor is alive (or exited 0 when stopped), the pool is refilled, and no
process of the server's session is a zombie or an orphan (``no_leftovers``). Run with
``-s`` to print one table row per scenario (the table in RELIABILITY.md).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import re
import select
import signal
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tykworker._proto import coprocess_object_pb2 as object_pb2
from tykworker.wire.frames import FrameDecoder, FrameKind, encode_frame

from .conftest import Server, make_object, session_processes, wait_for

pytestmark = pytest.mark.integration

MARKER = ["sleep", "30.25"]  # the child processes the Chaos hook leaves behind
CLIENT_TIMEOUT = 30.0  # far above any hook deadline: a call hitting it is lost


def _status(reply: bytes) -> tuple[str, str]:
    """(status, id) of a Dispatch reply: ``ok`` + X-Call-Id, or tykworker's answer code
    + the Call-Id of the echoed request."""
    obj = object_pb2.Object.FromString(reply)
    code = obj.request.return_overrides.response_code
    if code == -1:
        return "ok", obj.request.set_headers.get("X-Call-Id", "")
    return str(code), obj.request.headers.get("Call-Id", "")


@dataclass
class Tally:
    sent: int = 0
    answers: dict[int, list[str]] = field(default_factory=dict)  # id -> statuses
    refused: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # gRPC errors other than refusal
    misrouted: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, call_id: int, status: str, carried: str) -> None:
        with self.lock:
            if carried != str(call_id):
                self.misrouted += 1
            self.answers.setdefault(call_id, []).append(status)

    @property
    def by_status(self) -> Counter[str]:
        return Counter(s for statuses in self.answers.values() for s in statuses)

    @property
    def duplicated(self) -> int:
        return sum(len(s) - 1 for s in self.answers.values() if len(s) > 1)

    @property
    def lost(self) -> int:
        return self.sent - len(self.answers) - self.refused


class Load:
    """``threads`` gRPC client threads plus one raw-socket client with ``window`` calls in
    flight. ``choose(call_id)`` gives the extra headers of each call (what the hook does)."""

    def __init__(
        self,
        server: Server,
        choose: Callable[[int], dict[str, str]],
        threads: int = 3,
        raw: str | None = None,
        window: int = 4,
    ) -> None:
        self.server = server
        self.choose = choose
        self.tally = Tally()
        self.ids = itertools.count(1)
        self.stop = threading.Event()
        self.refusing = False  # set by the SIGTERM scenario once the server may refuse
        self.chosen: dict[int, str] = {}
        targets: list[Callable[[], None]] = [self._grpc] * threads
        if raw is not None:
            targets.append(lambda: self._raw(raw, window))
        self.threads = [threading.Thread(target=t, daemon=True) for t in targets]
        for t in self.threads:
            t.start()

    def _next(self) -> tuple[int, bytes]:
        with self.tally.lock:
            call_id = next(self.ids)
            self.tally.sent += 1
        headers = {"Call-Id": str(call_id), **self.choose(call_id)}
        self.chosen[call_id] = headers.get("Do", "")
        return call_id, make_object("Chaos", headers=headers).SerializeToString()

    def _grpc(self) -> None:
        method = self.server.channel.unary_unary("/coprocess.Dispatcher/Dispatch", None, None)
        while not self.stop.is_set():
            call_id, payload = self._next()
            try:
                reply = method(payload, timeout=CLIENT_TIMEOUT, wait_for_ready=False)
            except grpc.RpcError as exc:
                code = exc.code()
                with self.tally.lock:
                    if code == grpc.StatusCode.UNAVAILABLE and self.refusing:
                        self.tally.refused += 1
                    else:
                        self.tally.errors[code.name] += 1
                if self.refusing:
                    return
                continue
            self.tally.answer(call_id, *_status(reply))

    def _raw(self, path: str, window: int) -> None:
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(path)
        decoder = FrameDecoder()
        outstanding: set[int] = set()
        deadline = None
        while outstanding or not self.stop.is_set():
            if self.stop.is_set():
                deadline = deadline or time.monotonic() + CLIENT_TIMEOUT
                if time.monotonic() > deadline:
                    break  # whatever is still outstanding counts as lost
            while len(outstanding) < window and not self.stop.is_set():
                call_id, payload = self._next()
                try:
                    sock.sendall(encode_frame(FrameKind.DISPATCH, call_id, payload))
                except OSError:
                    with self.tally.lock:  # never reached the server
                        if self.refusing:
                            self.tally.refused += 1
                        else:
                            self.tally.errors["raw send failed"] += 1
                    self.stop.set()
                    break
                outstanding.add(call_id)
            if not select.select([sock], [], [], 0.2)[0]:
                continue
            try:
                data = sock.recv(1 << 20)
            except ConnectionResetError:  # closed with our last frames unread
                data = b""
            if not data:
                break
            decoder.feed(data)
            while (frame := decoder.next_frame()) is not None:
                if frame.kind == FrameKind.ERROR and frame.call_id == 0:
                    # The server stopped: it answered every call it had read, so the
                    # calls still outstanding never reached it.
                    with self.tally.lock:
                        if self.refusing:
                            self.tally.refused += len(outstanding)
                        else:
                            self.tally.errors[frame.payload.decode()] += 1
                    outstanding.clear()
                    self.stop.set()  # and it reads no more: send nothing else
                    continue
                status, carried = _status(bytes(frame.payload))
                if frame.call_id not in outstanding:
                    carried = "not outstanding"  # a reply nobody waits for: misrouted
                outstanding.discard(frame.call_id)
                self.tally.answer(frame.call_id, status, carried)
        sock.close()

    def wait_calls(self, count: int) -> None:
        start = self.tally.sent
        wait_for(lambda: self.tally.sent >= start + count, what=f"{count} more calls")

    def finish(self) -> Tally:
        self.stop.set()
        for t in self.threads:
            t.join(CLIENT_TIMEOUT + 5)
        return self.tally


def marker_processes() -> list[psutil.Process]:
    """Children left by the Chaos hook, wherever they are (even in another session)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if proc.info["cmdline"] == MARKER:
            found.append(proc)
    return found


def no_leftovers(server: Server, workers: int) -> None:
    """Supervisor alive, ``workers`` workers, nothing else: no zombie, no orphan."""

    assert server.proc.poll() is None, "the supervisor died"

    def clean() -> bool:
        procs = session_processes(server.proc.pid)
        zombies = [
            p for p in psutil.Process(server.proc.pid).children() if _status_of(p) == "zombie"
        ]
        return (
            len(server.worker_pids()) == workers
            and len(procs) == workers + 2  # supervisor + front + workers
            and not zombies
            and not marker_processes()
        )

    wait_for(clean, timeout=15, what="pool refilled, no zombie or orphan")


def _status_of(proc: psutil.Process) -> str:
    try:
        return str(proc.status())
    except psutil.Error:
        return "gone"


def report(name: str, tally: Tally, note: str = "") -> None:
    """One RELIABILITY.md row (visible with ``-s``)."""
    statuses = tally.by_status
    shown = ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()))
    print(
        f"\n| {name} | {tally.sent} | {len(tally.answers)} | {shown} | {tally.refused} | "
        f"{tally.lost} | {tally.duplicated} | {tally.misrouted} | {note} |"
    )


def assert_exact(tally: Tally, allowed: set[str]) -> None:
    assert tally.errors == Counter(), tally.errors
    assert tally.lost == 0
    assert tally.duplicated == 0
    assert tally.misrouted == 0
    assert set(tally.by_status) <= allowed, tally.by_status
    assert tally.by_status["ok"] > 0


def set_version(workdir: Path, version: str) -> None:
    """Deploy a new X-Version of the Echo hook atomically (rename), as a deploy tool would:
    a worker importing during a plain rewrite could read a half-written file."""
    path = workdir / "middleware" / "hooks.py"
    text = re.sub(r'"X-Version", "[^"]*"', f'"X-Version", "{version}"', path.read_text())
    tmp = path.with_name(".hooks.py.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _every(n: int, what: str) -> Callable[[int], dict[str, str]]:
    return lambda call_id: {"Do": what} if call_id % n == 0 else {}


def test_chaos_sigkill_random_workers(start_server, workdir):
    raw = str(workdir / "raw.sock")
    server = start_server("--workers", "3", "--raw-socket", raw)
    load = Load(server, lambda _: {"Sleep": "0.005"}, raw=raw)
    load.wait_calls(50)
    rng = random.Random(4)
    kills = 0
    for _ in range(12):
        pids = sorted(server.worker_pids())
        if pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(rng.choice(pids), signal.SIGKILL)
                kills += 1
        load.wait_calls(10)
    tally = load.finish()
    report("SIGKILL a random worker x12", tally, f"{kills} kills")
    assert_exact(tally, {"ok", "502"})
    assert tally.by_status["502"] <= kills
    assert server.proc.poll() is None
    no_leftovers(server, 3)


def test_chaos_hanging_hooks_time_out(start_server, workdir):
    raw = str(workdir / "raw.sock")
    server = start_server("--workers", "2", "--hook-timeout", "0.5", "--raw-socket", raw)
    stuck = iter(["hang", "spin"] * 2)

    def choose(call_id: int) -> dict[str, str]:
        if call_id % 40 == 0:
            return {"Do": next(stuck, "")}
        return {}

    load = Load(server, choose, raw=raw)
    wait_for(lambda: server.log().count("Fatal Python error: Aborted") >= 4, what="4 dumps")
    load.wait_calls(20)
    tally = load.finish()
    hung = sum(1 for v in load.chosen.values() if v in ("hang", "spin"))
    report("hooks that hang (sleep / C loop holding the GIL)", tally, f"{hung} hung calls")
    assert_exact(tally, {"ok", "504"})
    assert tally.by_status["504"] >= hung
    assert server.log().count("stuck on call") >= hung
    no_leftovers(server, 2)


def test_chaos_hooks_that_raise(start_server, workdir):
    raw = str(workdir / "raw.sock")
    server = start_server("--workers", "2", "--raw-socket", raw)
    before = server.worker_pids()
    load = Load(server, _every(5, "raise"), raw=raw)
    load.wait_calls(300)
    tally = load.finish()
    raised = sum(1 for v in load.chosen.values() if v == "raise")
    report("hooks that raise (1 call in 5)", tally, f"{raised} raised")
    assert_exact(tally, {"ok", "500"})
    assert tally.by_status["500"] == raised
    assert server.worker_pids() == before  # nobody died
    no_leftovers(server, 2)


def test_chaos_exit_and_segfault(start_server, workdir):
    raw = str(workdir / "raw.sock")
    server = start_server("--workers", "2", "--raw-socket", raw)
    crashes = iter(["exit", "segv"] * 5)

    def choose(call_id: int) -> dict[str, str]:
        return {"Do": next(crashes, "")} if call_id % 15 == 0 else {}

    load = Load(server, choose, raw=raw)
    wait_for(lambda: server.log().count("exited with code 7") >= 5, what="5 exits")
    wait_for(lambda: server.log().count("killed by signal SIGSEGV") >= 5, what="5 segfaults")
    load.wait_calls(20)
    tally = load.finish()
    crashed = sum(1 for v in load.chosen.values() if v in ("exit", "segv"))
    report("os._exit / segfault (ctypes)", tally, f"{crashed} crashing calls")
    assert_exact(tally, {"ok", "502"})
    assert tally.by_status["502"] == crashed
    no_leftovers(server, 2)


def test_chaos_leak_past_max_rss(start_server, workdir):
    raw = str(workdir / "raw.sock")
    server = start_server("--workers", "2", "--max-rss-mb", "100", "--raw-socket", raw)
    seen: set[int] = set(server.worker_pids())
    load = Load(server, _every(2, "leak"), raw=raw)

    def recycled() -> bool:
        seen.update(server.worker_pids())
        return len(seen) >= 6

    wait_for(recycled, what="4 recycles")
    tally = load.finish()
    report("leak 8 MiB per call, --max-rss-mb 100", tally, f"{len(seen) - 2} recycles")
    assert_exact(tally, {"ok"})
    assert "over the limit" in server.log()
    no_leftovers(server, 2)


def test_chaos_plugins_leave_children(start_server, workdir):
    raw = str(workdir / "raw.sock")
    server = start_server(
        "--workers", "2", "--max-requests", "15", "--max-requests-jitter", "5", "--raw-socket", raw
    )
    load = Load(
        server, lambda i: {"Do": ("orphan", "daemon")[i % 2]} if i % 5 == 0 else {}, raw=raw
    )
    load.wait_calls(200)
    tally = load.finish()
    left = sum(1 for v in load.chosen.values() if v in ("orphan", "daemon"))
    report("hooks spawn a child and leave it (half setsid)", tally, f"{left} children")
    assert_exact(tally, {"ok"})
    # Recycle what is left so that the children of live workers die with them as well.
    server.signal(signal.SIGHUP)
    server.wait_notify("READY=1")
    no_leftovers(server, 2)


def test_chaos_sighup_storm(start_server, workdir):
    raw = str(workdir / "raw.sock")
    server = start_server("--workers", "2", "--raw-socket", raw)
    load = Load(server, lambda _: {}, raw=raw)
    load.wait_calls(50)
    for version in range(2, 12):
        set_version(workdir, str(version))
        server.signal(signal.SIGHUP)
        time.sleep(0.1)  # the storm itself: 10 reloads in one second
    wait_for(
        lambda: server.dispatch("Echo").request.set_headers["X-Version"] == "11",
        timeout=20,
        what="the last reload's code serving",
    )
    load.wait_calls(50)
    tally = load.finish()
    generations = re.findall(r"generation (\d+) ready", server.log())
    report("SIGHUP storm: 10 reloads in 1 s", tally, f"generations 1 to {generations[-1]}")
    assert_exact(tally, {"ok"})
    no_leftovers(server, 2)


def test_chaos_sigterm_mid_load(start_server, workdir):
    raw = str(workdir / "raw.sock")
    server = start_server("--workers", "2", "--raw-socket", raw)
    load = Load(server, lambda _: {"Sleep": "0.05"}, threads=4, raw=raw)
    load.wait_calls(50)
    load.refusing = True
    server.signal(signal.SIGTERM)
    assert server.proc.wait(30) == 0
    tally = load.finish()
    report("SIGTERM mid-load", tally, "exit code 0")
    print(server.log()[-3000:])
    assert tally.errors == Counter(), tally.errors
    assert tally.lost == 0 and tally.duplicated == 0 and tally.misrouted == 0
    assert set(tally.by_status) <= {"ok", "503"}
    assert not Path(server.socket).exists()
    assert session_processes(server.proc.pid) == []


# --- bad input: each gets a clear answer, and the front and workers keep serving -------


def _answer_code(reply: bytes | object_pb2.Object) -> tuple[int, str]:
    if isinstance(reply, bytes):
        reply = object_pb2.Object.FromString(reply)
    overrides = reply.request.return_overrides
    return overrides.response_code, overrides.headers.get("X-Tykworker-Error", "")


def _string_field(number: int, value: bytes) -> bytes:
    """A length-delimited protobuf field, written by hand (any bytes, even invalid UTF-8)."""
    assert len(value) < 128
    return bytes([number << 3 | 2, len(value)]) + value


def test_bad_grpc_input_gets_clear_answers_and_nothing_dies(start_server):
    server = start_server("--workers", "2", "--max-message-mb", "1")
    workers = server.worker_pids()
    echo = make_object("Echo").SerializeToString()
    # Not an Object at all, or a truncated one: 400 from the worker.
    for garbage in (b"\xff" * 64, echo[:-5], b"\x0a\xff\xff\xff\xff\x0f"):
        assert _answer_code(server.dispatch_raw(garbage)) == (400, "bad_request")
    # A hook name that is not UTF-8 (protobuf strings must be): 400 as well.
    bad_name = _string_field(2, b"Echo\xff\xfe")
    assert _answer_code(server.dispatch_raw(bad_name)) == (400, "bad_request")
    # Unknown and empty hook names: 500 "hook not found", named in the log.
    assert _answer_code(server.dispatch("NoSuchHook")) == (500, "no_hook")
    assert _answer_code(server.dispatch("")) == (500, "no_hook")
    assert "'NoSuchHook' is not defined" in server.log()
    assert '"" (empty hook name)' in server.log()
    # An unknown hook type is served by name like any other (the deadline of `pre`).
    odd_type = object_pb2.Object.FromString(echo)
    odd_type.hook_type = 42  # type: ignore[assignment]
    reply = object_pb2.Object.FromString(server.dispatch_raw(odd_type.SerializeToString()))
    assert reply.request.set_headers["X-Version"] == "1" and reply.hook_type == 42
    # A body that is not UTF-8 passes through untouched.
    body = bytes(range(256))
    reply = server.dispatch("Echo", body=body)
    assert reply.request.raw_body == body and reply.request.set_headers["X-Version"] == "1"
    # 10,000 request headers: served, all echoed.
    many = {f"X-H-{i}": str(i) for i in range(10_000)}
    reply = server.dispatch("Echo", headers=many)
    sent = make_object("Echo", headers=many)
    assert dict(reply.request.headers) == dict(sent.request.headers)
    assert len(reply.request.headers) > 10_000 and reply.request.headers["X-H-9999"] == "9999"
    # 10,000 gRPC metadata entries: refused by the HTTP/2 layer, with a status.
    method = server.channel.unary_unary("/coprocess.Dispatcher/Dispatch")
    with pytest.raises(grpc.RpcError) as info:
        method(echo, timeout=10, metadata=[(f"x-m-{i}", "v") for i in range(10_000)])
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Over --max-message-mb: RESOURCE_EXHAUSTED, nothing reaches a worker.
    with pytest.raises(grpc.RpcError) as info:
        server.dispatch_raw(make_object("Echo", body=b"x" * (1024 * 1024 + 1)).SerializeToString())
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Everything above was answered by the workers we started with: none died.
    assert server.dispatch("Echo").request.set_headers["X-Version"] == "1"
    assert server.worker_pids() == workers
    assert server.proc.poll() is None


# The raw socket, fuzzed: streams of valid calls, frames that are not calls, and one kind
# of damage at the end, sent in arbitrary pieces.

_ECHO = make_object("Echo").SerializeToString()
_DAMAGE = {
    "none": b"",
    "truncated": encode_frame(FrameKind.DISPATCH, 999, _ECHO)[:30],
    "oversized": struct.pack(">2sBBIQ", b"TW", 1, 1, 2 * 1024 * 1024, 998),
    "bad magic": b"GET / HTTP/1.1\r\n\r\n",
    "bad kind": struct.pack(">2sBBIQ", b"TW", 1, 99, 0, 997),
}


@st.composite
def raw_streams(draw: st.DrawFn) -> tuple[list[tuple[int, int]], str, list[bytes]]:
    """(the frames as (kind, call id), the damage, the stream cut in pieces)."""
    kinds = draw(
        st.lists(
            st.sampled_from([FrameKind.DISPATCH, FrameKind.REPLY, FrameKind.HELLO]), max_size=8
        )
    )
    sent = [(int(kind), 1000 + i) for i, kind in enumerate(kinds)]
    payloads = [_ECHO if kind == FrameKind.DISPATCH else b"junk" for kind in kinds]
    damage = draw(st.sampled_from(sorted(_DAMAGE)))
    data = b"".join(
        encode_frame(FrameKind(kind), call_id, payload)
        for (kind, call_id), payload in zip(sent, payloads, strict=True)
    )
    data += _DAMAGE[damage]
    if len(data) < 200 and draw(st.booleans()):
        pieces = [data[i : i + 1] for i in range(len(data))]  # byte by byte
    else:
        points = sorted(draw(st.sets(st.integers(0, len(data)), max_size=6)))
        pieces = [data[a:b] for a, b in itertools.pairwise([0, *points, len(data)])]
    return sent, damage, pieces


def _exchange(path: str, pieces: list[bytes]) -> list[tuple[int, int, bytes]]:
    """Send the pieces, half-close, read every frame until the server closes."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(20)
        sock.connect(path)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for piece in pieces:
                sock.sendall(piece)
            sock.shutdown(socket.SHUT_WR)
        decoder = FrameDecoder()
        frames: list[tuple[int, int, bytes]] = []
        while True:
            try:
                data = sock.recv(1 << 16)
            except ConnectionResetError:
                data = b""
            if not data:
                return frames
            decoder.feed(data)
            while (frame := decoder.next_frame()) is not None:
                frames.append((int(frame.kind), frame.call_id, bytes(frame.payload)))


def test_raw_socket_fuzz_every_frame_answered_server_keeps_serving(start_server, workdir):
    raw = str(workdir / "raw.sock")
    server = start_server("--workers", "2", "--raw-socket", raw, "--max-message-mb", "1")
    workers = server.worker_pids()
    examples = Counter[str]()

    @settings(
        max_examples=200,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(stream=raw_streams())
    def check(stream: tuple[list[tuple[int, int]], str, list[bytes]]) -> None:
        sent, damage, pieces = stream
        examples[damage] += 1
        frames = _exchange(raw, pieces)
        replies = {cid: kind for kind, cid, _ in frames if cid}
        # Every complete frame got exactly one answer with its call id: a REPLY for a
        # call, an ERROR for a frame that is not a call.
        assert sorted(cid for _, cid, _ in frames if cid) == sorted(cid for _, cid in sent)
        for kind, call_id in sent:
            expected = FrameKind.REPLY if kind == FrameKind.DISPATCH else FrameKind.ERROR
            assert replies[call_id] == expected
        # The damage got exactly one ERROR frame with call id 0 (none without damage).
        errors = [payload for kind, cid, payload in frames if cid == 0]
        assert len(errors) == (damage != "none"), errors
        assert all(kind == FrameKind.ERROR for kind, cid, _ in frames if cid == 0)

    check()
    assert server.dispatch("Echo").request.set_headers["X-Version"] == "1"
    assert server.worker_pids() == workers and server.proc.poll() is None
    print(f"\nraw socket fuzz: {sum(examples.values())} streams, {dict(examples)}")
