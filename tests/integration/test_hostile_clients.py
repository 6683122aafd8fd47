"""Hostile or broken clients against the real server (native front, raw socket): stalled
handshakes, idle connections, incomplete bodies, huge header blocks, clients that never
read their answers or never open their windows. The front must keep its stated memory
bound (README "The front's memory bound") and keep serving the gateway.

Memory is the front process's RSS; each test prints one line of figures (``-s``) for
RELIABILITY.md. Every wait is on a condition (a frame, EOF, a metric), never a sleep.
"""

from __future__ import annotations

import contextlib
import resource
import select
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import hpack
import psutil
import pytest

from tykworker._proto import coprocess_object_pb2 as object_pb2
from tykworker.front.h2 import frames as f
from tykworker.front.h2.frames import ErrorCode, FrameType, Setting
from tykworker.front.h2.heads import literal
from tykworker.wire.frames import FrameDecoder, FrameKind, encode_frame

from .conftest import FRONT, Server, make_object, wait_for
from .test_observability import scrape_unix, value

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(FRONT == "grpcio", reason="bounds of the native front"),
]

MIB = 1024 * 1024
DISPATCH = b"/coprocess.Dispatcher/Dispatch"


@dataclass
class Frame:
    kind: int
    flags: int
    stream_id: int
    payload: bytes
    headers: dict[bytes, bytes] = field(default_factory=dict)

    @property
    def code(self) -> int:
        offset = 4 if self.kind == FrameType.GOAWAY else 0
        return int(struct.unpack_from(">L", self.payload, offset)[0])


class H2Client:
    """A hand-driven h2c client on a Unix socket; a thread reads and parses every frame
    (so the server's writes never block on us unless a test wants that: ``read=False``)."""

    def __init__(self, path: str, read: bool = True) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(path)
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder(max_header_list_size=1 << 24)
        self.frames: list[Frame] = []
        self.eof = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        if read:
            self._thread.start()

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except OSError:
                data = b""
            if not data:
                with self._cond:
                    self.eof = True
                    self._cond.notify_all()
                return
            buf += data
            parsed = []
            while len(buf) >= 9:
                hi, lo, kind, flags, sid = f.FRAME_HEADER.unpack_from(buf)
                end = 9 + (hi << 16 | lo)
                if len(buf) < end:
                    break
                frame = Frame(kind, flags, sid & f.STREAM_MASK, buf[9:end])
                buf = buf[end:]
                if kind == FrameType.HEADERS:
                    frame.headers = dict(self.decoder.decode(frame.payload, raw=True))
                parsed.append(frame)
            with self._cond:
                self.frames += parsed
                self._cond.notify_all()

    def start_reading(self) -> None:
        self._thread.start()

    def wait(self, predicate: Callable[[H2Client], bool], timeout: float = 20.0) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self), timeout):
                raise AssertionError(f"condition not met; frames: {self.kinds()}")

    def kinds(self) -> list[str]:
        return [FrameType(fr.kind).name for fr in self.frames if fr.kind < 10]

    # --- frames -------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def preface(self, **settings: int) -> bytes:
        values = {Setting[name.upper()]: value for name, value in settings.items()}
        return f.PREFACE + f.settings(values)

    def headers(self, sid: int, extra: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
        fields = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", DISPATCH)]
        fields += [(b":authority", b"tyk"), (b"content-type", b"application/grpc"), *extra]
        return f.frame(FrameType.HEADERS, f.END_HEADERS, sid, self.encoder.encode(fields))

    @staticmethod
    def data(sid: int, payload: bytes, end: bool) -> bytes:
        pieces = [payload[i : i + 16384] for i in range(0, len(payload), 16384)] or [b""]
        return b"".join(
            f.frame(FrameType.DATA, f.END_STREAM if end and i == len(pieces) - 1 else 0, sid, p)
            for i, p in enumerate(pieces)
        )

    def call(self, sid: int, payload: bytes) -> bytes:
        return self.headers(sid) + self.data(
            sid, struct.pack(">BL", 0, len(payload)) + payload, True
        )

    # --- answers ------------------------------------------------------------------------
    def status(self, sid: int) -> int | None:
        for fr in self.frames:
            if (
                fr.kind == FrameType.HEADERS
                and fr.stream_id == sid
                and b"grpc-status" in fr.headers
            ):
                return int(fr.headers[b"grpc-status"])
        return None

    def resets(self) -> dict[int, int]:
        return {fr.stream_id: fr.code for fr in self.frames if fr.kind == FrameType.RST_STREAM}

    def goaway(self) -> int | None:
        codes = [fr.code for fr in self.frames if fr.kind == FrameType.GOAWAY]
        return codes[0] if codes else None

    def ping(self, opaque: bytes = b"fencepst") -> None:
        """Send a PING and wait for its ACK: every frame sent before it was processed."""
        self.send(f.frame(FrameType.PING, 0, 0, opaque))
        self.wait(
            lambda c: any(fr.kind == FrameType.PING and fr.payload == opaque for fr in c.frames)
        )

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def limits(**values: float) -> dict[str, str]:
    """The settings under test, as environment variables: a server that does not know
    them still starts (unknown TYKWORKER_* variables are ignored), so each test shows the
    old failure, not a usage error."""
    return {f"TYKWORKER_{name.upper()}": f"{v:g}" for name, v in values.items()}


def rss(server: Server) -> int:
    return int(psutil.Process(server.front_pid()).memory_info().rss)


def echo_payload(size: int = 0) -> bytes:
    return make_object("Inflate", headers={"Size": str(size)}).SerializeToString()


@pytest.fixture
def clients() -> Iterator[list[H2Client]]:
    made: list[H2Client] = []
    yield made
    for client in made:
        client.close()


# --- descriptors and timeouts ---------------------------------------------------------------


def test_stalled_handshakes_never_take_the_gateways_connection(start_server):
    """1,100 partial prefaces once exhausted the front's 1,024 descriptors. Here the front
    has 256 (soft = hard, so it cannot raise them): 400 stalled clients, then the gateway."""

    def low_nofile() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    server = start_server("--workers", "1", env=limits(preface_timeout=600), preexec=low_nofile)
    stalled = []
    for _ in range(400):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(server.socket)
        sock.sendall(f.PREFACE[:10])  # a partial preface, then nothing
        stalled.append(sock)
    try:
        # A new connection: admitted, stalled ones evicted. Like grpc-go, the client may
        # reconnect once (wait_for_ready): the 400 are still being accepted when it connects,
        # and CI on a loaded runner saw one UNAVAILABLE attempt. What broke before the cap
        # was permanent: no descriptor left, every attempt refused.
        payload = make_object("Echo").SerializeToString()
        method = server.channel.unary_unary("/coprocess.Dispatcher/Dispatch", None, None)
        raw = method(payload, timeout=30, wait_for_ready=True)
        reply = object_pb2.Object.FromString(raw)
        assert reply.request.set_headers["X-Version"] == "1"
        cap = 256 - max(64 + 4, 256 // 4)  # guard.default_cap: the bridge's reserve kept
        wait_for(lambda: f"evicted at the cap of {cap}" in server.log(), what="eviction log")
        open_fds = len(psutil.Process(server.front_pid()).open_files())
        evicted = sum(1 for s in stalled if _closed_by_peer(s))
        assert evicted >= 400 - cap
        print(f"\nstalled handshakes: 400 sent, cap {cap}, {evicted} evicted, gateway call ok")
        assert server.dispatch("Echo").request.set_headers["X-Version"] == "1"
        assert open_fds < 256
    finally:
        for sock in stalled:
            sock.close()


def _closed_by_peer(sock: socket.socket) -> bool:
    """EOF already there (what the server sent before closing is read first)."""
    sock.setblocking(False)
    try:
        while sock.recv(65536):
            pass
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    return True


def test_over_the_cap_a_new_connection_is_refused_and_a_freed_slot_is_reused(start_server, clients):
    server = start_server("--workers", "1", env=limits(max_connections=3))
    held = [H2Client(server.socket) for _ in range(3)]
    clients += held
    for client in held:
        client.send(client.preface())
        client.ping()  # handshake done: never evicted
    late = H2Client(server.socket)
    clients.append(late)
    late.wait(lambda c: c.eof)
    assert late.goaway() == ErrorCode.ENHANCE_YOUR_CALM
    assert b"too many connections" in late.frames[-1].payload
    held[0].close()
    payload = echo_payload()

    def admitted_and_answered() -> bool:  # once the server has seen the client leave
        client = H2Client(server.socket)
        clients.append(client)
        client.send(client.preface() + client.call(1, payload))
        client.wait(lambda c: c.eof or c.status(1) is not None)
        return client.status(1) == 0

    wait_for(admitted_and_answered, what="a call on the freed slot")
    wait_for(lambda: "over the cap of 3 connections (refused)" in server.log(), what="log")


def test_preface_idle_and_body_timeouts_close_what_waits_on_the_client(start_server, clients):
    server = start_server(
        "--workers", "1", env=limits(preface_timeout=0.3, idle_timeout=0.6, body_timeout=0.4)
    )
    stalled = H2Client(server.socket)
    idle = H2Client(server.socket)
    slow = H2Client(server.socket)
    clients += [stalled, idle, slow]
    stalled.send(f.PREFACE[:5])
    idle.send(idle.preface())
    slow.send(slow.preface())
    payload = echo_payload()
    message = struct.pack(">BL", 0, len(payload)) + payload
    slow.send(slow.headers(1) + slow.data(1, message[:10], end=False))  # the rest never comes
    stalled.wait(lambda c: c.eof)  # closed: no preface within 0.3 s
    slow.wait(lambda c: 1 in c.resets())
    assert slow.resets()[1] == ErrorCode.CANCEL  # the incomplete request was reset
    slow.send(slow.call(3, payload))  # the connection still serves
    slow.wait(lambda c: c.status(3) is not None)
    assert slow.status(3) == 0
    idle.wait(lambda c: c.eof)  # no call for 0.6 s: GOAWAY(NO_ERROR), closed
    assert idle.goaway() == ErrorCode.NO_ERROR
    slow.wait(lambda c: c.eof)  # idle too once its call was answered
    log = server.log()
    assert "no HTTP/2 preface and SETTINGS within 0.3 s" in log
    assert "requests incomplete after 0.4 s" in log and "idle for 0.6 s" in log
    assert server.dispatch("Echo").request.set_headers["X-Version"] == "1"


# --- memory ------------------------------------------------------------------------------------


def test_many_streams_of_large_incomplete_bodies_are_refused_and_freed(start_server, clients):
    """12 streams x 60 MiB once held +720 MiB, freed only by the cyclic GC. Scaled: 12
    streams x 6 MiB against a bound of 16 MiB per connection."""
    server = start_server(
        "--workers", "1", "--max-message-mb", "8", env=limits(connection_buffer_mb=16)
    )
    client = H2Client(server.socket)
    clients.append(client)
    client.send(client.preface() + f.window_update(0, 1 << 30))
    client.ping()
    before = rss(server)
    sids = list(range(1, 25, 2))
    client.send(b"".join(client.headers(sid) for sid in sids))
    head = struct.pack(">BL", 0, 8 * MIB - 16) + b"b" * (6 * MIB)
    for pos in range(0, len(head), 16384):
        piece = head[pos : pos + 16384]
        client.send(b"".join(client.data(sid, piece, end=False) for sid in sids))
    client.ping()
    peak = rss(server)
    resets = client.resets()
    assert len(resets) >= 12 - 16 // 6 and set(resets.values()) == {ErrorCode.ENHANCE_YOUR_CALM}
    assert peak - before < 16 * MIB + 24 * MIB, (before, peak)
    client.close()
    wait_for(lambda: rss(server) - before < 12 * MIB, what="memory freed after the client left")
    after = rss(server)
    print(
        f"\n12 streams x 6 MiB: {len(resets)} reset ENHANCE_YOUR_CALM; front RSS "
        f"{before >> 20} -> {peak >> 20} MiB, {after >> 20} MiB after close"
    )
    assert "reset (ENHANCE_YOUR_CALM): incomplete requests hold" in server.log()
    assert server.dispatch("Echo").request.set_headers["X-Version"] == "1"


def test_distinct_huge_header_blocks_are_not_all_cached(start_server, clients):
    """256 distinct ~1 MB header blocks per connection once stayed cached."""
    server = start_server("--workers", "1")
    client = H2Client(server.socket)
    clients.append(client)
    client.send(client.preface())
    client.ping()
    before = rss(server)
    for i in range(80):  # literals without indexing: the HPACK table never changes
        block = literal(2, b"POST") + b"\x86" + literal(4, DISPATCH) + literal(1, b"tyk")
        block += literal(31, b"application/grpc") + literal(b"x-pad", b"%05d" % i + b"p" * 900_000)
        sid = 2 * i + 1
        frames = [block[p : p + 16384] for p in range(0, len(block), 16384)]
        wire = f.frame(FrameType.HEADERS, f.END_STREAM, sid, frames[0])
        wire += b"".join(
            f.frame(FrameType.CONTINUATION, f.END_HEADERS if p is frames[-1] else 0, sid, p)
            for p in frames[1:]
        )
        client.send(wire)
    client.ping()
    client.wait(lambda c: all(c.status(2 * i + 1) is not None for i in range(80)))
    grown = rss(server) - before
    print(f"\n80 distinct 0.9 MB header blocks: front RSS +{grown >> 20} MiB")
    assert grown < 24 * MIB
    assert client.goaway() is None


@pytest.mark.parametrize("how", ["window never opened", "answers never read"])
def test_answers_a_client_does_not_take_are_bounded(start_server, workdir, clients, how):
    """300 calls whose answers are never taken once held +300 MiB. Scaled: 100 small calls
    with 1 MiB answers against a bound of 8 MiB per connection."""
    metrics = workdir / "metrics.sock"
    server = start_server(
        "--workers", "2", "--max-message-mb", "4", "--metrics", str(metrics),
        env=limits(connection_buffer_mb=8),
    )  # fmt: skip
    reading = how == "window never opened"
    client = H2Client(server.socket, read=reading)
    clients.append(client)
    if reading:
        client.send(client.preface(initial_window_size=0))
    else:
        client.send(client.preface(initial_window_size=(1 << 31) - 1))
        client.send(f.window_update(0, (1 << 31) - 1 - 65535))
    before = rss(server)
    payload = echo_payload(MIB)
    client.send(b"".join(client.call(sid, payload) for sid in range(1, 201, 2)))

    def answered() -> float:
        return value(scrape_unix(metrics), "tykworker_calls_total", hook="Inflate", type="pre")

    wait_for(lambda: answered() >= 100, what="100 calls answered by the hook", timeout=60)
    if not reading:
        # The front answers the call it got from the worker right away (same loop turn).
        wait_for(lambda: "the client does not read" in server.log(), what="log line")
    else:
        client.ping()
    grown = rss(server) - before
    if not reading:
        client.start_reading()
        client.wait(lambda c: all(c.status(s) is not None for s in range(1, 201, 2)), 60)
    statuses = [client.status(sid) for sid in range(1, 201, 2)]
    held = (
        statuses.count(0)
        if not reading
        else sum(1 for sid in range(1, 201, 2) if client.status(sid) is None)
    )
    refused = statuses.count(8)
    print(
        f"\n{how}: 100 calls x 1 MiB answers: {refused} RESOURCE_EXHAUSTED, {held} held/sent; "
        f"front RSS +{grown >> 20} MiB"
    )
    # 8 answers fit the 8 MiB bound; what the kernel's socket buffer took of the answers
    # written before the client stopped reading is not the front's, so one or two more may
    # get through (CI saw 91 refused once); the memory bound is the promise.
    assert refused >= 100 - 8 - 2 and grown < 8 * MIB + 24 * MIB
    assert server.dispatch("Echo").request.set_headers["X-Version"] == "1"


def test_raw_socket_pauses_reading_a_client_that_pipelines_without_reading(start_server, workdir):
    """One raw connection pipelining 10k calls once held +685 MiB. Here: 64 KiB requests
    with 64 KiB answers, pipelined until the front stops reading (our send blocks)."""
    raw = str(workdir / "raw.sock")
    server = start_server(
        "--workers", "2", "--raw-socket", raw, "--max-message-mb", "4",
        env=limits(connection_buffer_mb=8),
    )  # fmt: skip
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(raw)
    before = rss(server)
    payload = make_object("Echo", body=b"r" * 65536).SerializeToString()
    frame = encode_frame(FrameKind.DISPATCH, 1, payload)
    calls, sent = pipeline(sock, frame, 20000)  # 1.3 GiB if the front never stopped reading
    grown = rss(server) - before
    print(
        f"\nraw pipelining without reading: stopped after {calls} calls ({sent >> 20} MiB); "
        f"front RSS +{grown >> 20} MiB"
    )
    assert calls < 20000 and grown < 8 * MIB + 8 * MIB + 24 * MIB
    sock.settimeout(30)
    decoder = FrameDecoder(8 * MIB)
    answers = 0
    sock.shutdown(socket.SHUT_WR)
    while data := sock.recv(1 << 20):
        decoder.feed(data)
        while decoder.next_frame() is not None:
            answers += 1
    assert answers >= calls - 1  # every call read is answered (the last may be partial)
    sock.close()
    assert server.dispatch("Echo").request.set_headers["X-Version"] == "1"


def pipeline(sock: socket.socket, frame: bytes, most: int) -> tuple[int, int]:
    """Send ``frame`` up to ``most`` times, until the peer stops reading (not writable for
    3 s: the condition is the front's backpressure). Returns (frames started, bytes sent);
    the last frame may be partial.

    Each send is non-blocking by its flag (``MSG_DONTWAIT``), never by the socket's mode:
    a reader thread may share the socket, and on a non-blocking socket its ``recv`` would
    raise instead of waiting (a reader that died that way left the replies unread, the
    front stopped reading as it must, and the test hung in ``sendall``)."""
    sent = calls = 0
    pending = b""
    while calls < most or pending:
        if not pending:
            pending, calls = frame, calls + 1
        try:
            n = sock.send(pending, socket.MSG_DONTWAIT)
        except BlockingIOError:
            _, writable, _ = select.select([], [sock], [], 3.0)
            if not writable:
                if len(pending) == len(frame):  # not one byte of this frame went out
                    calls -= 1
                break
            continue
        sent += n
        pending = pending[n:]
    return calls, sent


def send_all(sock: socket.socket, data: bytes, timeout: float = 60.0) -> None:
    """``sendall`` that fails (instead of hanging) if the peer reads nothing for
    ``timeout`` seconds; leaves the socket's mode alone (see ``pipeline``)."""
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view, socket.MSG_DONTWAIT) :]
        except BlockingIOError:
            _, writable, _ = select.select([], [sock], [], timeout)
            assert writable, f"the front read nothing for {timeout:g} s ({len(view)} bytes left)"


def test_raw_socket_pauses_reading_while_its_calls_in_flight_hold_too_much(
    start_server, workdir, gate
):
    """A client that reads its replies but pipelines faster than the workers answer: its
    calls in flight are bounded (8 MiB here), not the queue (raised to 100,000). The hook
    deadline is raised so that the gate, not a slow machine's clock, decides when the calls
    end (with 504s during the pipelining reading resumes early: still correct, but then
    the figures say nothing)."""
    raw = str(workdir / "raw.sock")
    server = start_server(
        "--workers", "2", "--raw-socket", raw, "--queue-size", "100000", "--max-message-mb", "4",
        "--hook-timeout", "120", env=limits(connection_buffer_mb=8),
    )  # fmt: skip
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(raw)
    replies: list[int] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def read() -> None:  # the socket stays blocking: only the sender uses MSG_DONTWAIT
        decoder = FrameDecoder(8 * MIB)
        try:
            while data := sock.recv(1 << 20):
                decoder.feed(data)
                while (frame := decoder.next_frame()) is not None:
                    replies.append(frame.kind)
        except BaseException as exc:  # seen by the test, not lost with the thread
            errors.append(exc)
        finally:
            done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    before = rss(server)
    payload = make_object("Gate", headers={"Gate": str(gate)}, body=b"g" * 65536)
    frame = encode_frame(FrameKind.DISPATCH, 7, payload.SerializeToString())
    calls, sent = pipeline(sock, frame, 5000)  # 320 MiB if the front never stopped reading
    grown = rss(server) - before
    print(
        f"\nraw pipelining, workers held: reading paused after {calls} calls "
        f"({sent >> 20} MiB); front RSS +{grown >> 20} MiB"
    )
    assert calls < 5000 and grown < 8 * MIB + 24 * MIB
    assert not replies and not errors  # nothing answered while the gate is closed
    gate.touch()  # the workers answer: reading resumes, every call sent is answered
    send_all(sock, b"" if sent % len(frame) == 0 else frame[sent % len(frame) :])
    sock.shutdown(socket.SHUT_WR)
    wait_for(done.is_set, timeout=60, what="every reply, then the front's end of file")
    assert not errors
    assert replies == [FrameKind.REPLY] * calls
    sock.close()


def test_a_gateway_sending_many_large_bodies_at_once_is_not_refused(start_server):
    """The bounds are against hostile clients, not the gateway's real load: it multiplexes
    every call on one connection and interleaves their DATA frames, so many large bodies
    are incomplete at once (each 1 MiB body is ~2 MiB on the wire: ``body`` + ``raw_body``).
    48 streams with 1.5 MiB each received so far (72 MiB held) are all answered with the
    default bounds (a bound of 128 MiB refused new streams past 64 MiB)."""
    server = start_server("--workers", "2")
    client = H2Client(server.socket)
    client.send(client.preface(initial_window_size=f.MAX_WINDOW))  # reads every answer
    client.send(f.window_update(0, f.MAX_WINDOW - f.DEFAULT_WINDOW))
    payload = make_object("Echo", body=b"b" * (1 << 20)).SerializeToString()
    message = struct.pack(">BL", 0, len(payload)) + payload
    half = (3 << 19) - 1  # 1.5 MiB, well inside each message
    sids = list(range(1, 97, 2))
    for sid in sids:  # every stream opened and half sent before any completes
        client.send(client.headers(sid) + client.data(sid, message[:half], False))
    client.ping()
    for sid in sids:
        client.send(client.data(sid, message[half:], True))
    client.wait(lambda c: all(c.status(sid) is not None for sid in sids), timeout=60)
    assert client.resets() == {}
    assert {client.status(sid) for sid in sids} == {0}
    client.close()
