"""Memory and time bounds of the sans-IO HTTP/2 connection against hostile or broken
clients: incomplete requests per connection and in total, answers held by flow control,
the header-block cache, stalled streams, and no reference cycle holding a connection."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator

import pytest

from tykworker.front.h2 import frames as f
from tykworker.front.h2.conn import H2Connection
from tykworker.front.h2.frames import ErrorCode, FrameType
from tykworker.front.h2.heads import CACHE_BYTES, CACHE_ENTRIES, literal
from tykworker.front.h2.state import BufferPool, Limits

from .test_h2conn import DISPATCH, Client, Frame, grpc_status

KIB = 1024
MESSAGE = 256 * KIB
LIMITS = Limits(max_message=MESSAGE, connection_buffer=700 * KIB)


def resets(frames: list[Frame]) -> dict[int, int]:
    return {fr.stream_id: fr.error_code for fr in frames if fr.kind == FrameType.RST_STREAM}


def partial(client: Client, sid: int, size: int) -> bytes:
    """HEADERS + the first ``size`` bytes of a message of MESSAGE bytes, no END_STREAM."""
    head = client.message(b"x" * MESSAGE)[:size]
    frames = [client.data(sid, head[i : i + 16 * KIB], end=False) for i in range(0, size, 16 * KIB)]
    return client.headers(sid) + b"".join(frames)


def opened(limits: Limits = LIMITS, pool: BufferPool | None = None, **settings: int) -> Client:
    client = Client(limits)
    client.conn = H2Connection(limits, client.clock, pool)
    client.start(**settings)
    return client


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_incomplete_requests_over_the_connection_bound_are_reset_enhance_your_calm():
    client = opened()
    sids = (1, 3, 5, 7)
    client.feed(b"".join(client.headers(sid) for sid in sids))  # opened while all is empty
    head = client.message(b"x" * MESSAGE)[: 200 * KIB]
    for pos in range(0, len(head), 16 * KIB):  # 12 streams x 60 MiB in miniature
        client.feed(
            b"".join(client.data(sid, head[pos : pos + 16 * KIB], end=False) for sid in sids)
        )
    frames = client.read()
    # A message is held at the length its prefix announces, from its first DATA frame: 4 x
    # 256 KiB do not fit in 700 KiB, the two streams that would cross the bound are reset.
    reset = resets(frames)
    assert list(reset.values()) == [ErrorCode.ENHANCE_YOUR_CALM] * 2
    assert client.conn.buffered <= LIMITS.connection_buffer
    assert client.conn.buffered == client.conn.pool.used
    assert "ENHANCE_YOUR_CALM" in client.conn.notices[0]
    assert not client.conn.closed  # the other streams go on and complete
    client.feed(client.headers(9))  # no room for one more whole message: refused
    assert resets(client.read()) == {9: ErrorCode.REFUSED_STREAM}
    done = next(sid for sid in sids if sid not in reset)
    rest = client.message(b"x" * MESSAGE)[len(head) :]
    cut = [rest[i : i + 16 * KIB] for i in range(0, len(rest), 16 * KIB)]
    client.feed(b"".join(client.data(done, p, end=p is cut[-1]) for p in cut))
    assert [e.stream_id for e in client.events] == [done]
    assert len(client.events[0].payload) == MESSAGE
    assert client.conn.buffered == 5 + MESSAGE  # a dispatched message leaves the buffer


def test_the_total_bound_is_shared_by_connections():
    pool = BufferPool(limit=300 * KIB)
    first, second = opened(pool=pool), opened(pool=pool)
    first.feed(first.headers(1))
    second.feed(second.headers(1))
    first.feed(partial(first, 1, 200 * KIB)[len(first.headers(3)) :])
    second.feed(partial(second, 1, 200 * KIB)[len(second.headers(3)) :])
    assert resets(second.read()) == {1: ErrorCode.ENHANCE_YOUR_CALM}
    assert pool.used == 5 + MESSAGE == first.conn.buffered  # held at its announced length
    second.feed(second.headers(3))  # no room in the pool for one more message
    assert resets(second.read()) == {3: ErrorCode.REFUSED_STREAM}
    first.conn.release()  # the client went away: its bytes go back
    assert pool.used == 0
    second.feed(partial(second, 5, 200 * KIB))
    assert resets(second.read()) == {}


def test_every_way_out_of_a_stream_gives_its_bytes_back():
    client = opened()
    client.feed(partial(client, 1, 100 * KIB) + partial(client, 3, 100 * KIB))
    client.feed(f.rst_stream(1, ErrorCode.CANCEL))  # reset by the client
    client.feed(client.data(3, b"\xff" * 10))  # body too long for its prefix: a status
    client.feed(partial(client, 5, 100 * KIB))
    client.conn.expire(0.0, 1.0)
    assert client.conn.expire(1.0, 1.0) == 1  # stalled: reset CANCEL
    assert resets(client.read())[5] == ErrorCode.CANCEL
    assert client.conn.buffered == 0 == client.conn.pool.used


def test_answers_held_by_flow_control_are_bounded_and_block_new_streams():
    client = opened(initial_window_size=0)  # the client never opens its stream windows
    answer = b"a" * (250 * KIB)
    client.feed(b"".join(client.call(sid, b"q") for sid in (1, 3, 5)))
    for sid in (1, 3, 5):
        client.conn.respond(sid, answer)
    frames = client.read()
    assert grpc_status(frames, 5) == 8  # RESOURCE_EXHAUSTED: it would pass 700 KiB
    assert "answers unread" in client.conn.notices[-1]
    assert client.conn.buffered == 2 * (len(answer) + 5) <= LIMITS.connection_buffer
    client.feed(client.call(7, b"q"))  # no room for one more message: refused, retryable
    assert resets(client.read()) == {7: ErrorCode.REFUSED_STREAM}
    assert [e.stream_id for e in client.events] == [1, 3, 5]
    # The client opens its windows: the held answers leave and new calls are taken again.
    client.feed(b"".join(f.window_update(sid, 1 << 20) for sid in (1, 3)))
    client.feed(f.window_update(0, 1 << 24))
    assert client.conn.buffered == 0 == client.conn.pool.used
    client.feed(client.call(9, b"q"))
    assert client.events[-1].stream_id == 9


def test_answers_never_taken_are_reset_after_the_body_timeout():
    client = opened(initial_window_size=0)
    client.feed(client.call(1, b"q") + client.call(3, b"q"))
    client.conn.respond(1, b"a" * 1000)
    assert client.conn.expire(5.0, 10.0) == 0  # stream 3 waits for its worker: not counted
    assert client.conn.expire(14.9, 10.0) == 0
    assert client.conn.expire(15.0, 10.0) == 1
    assert resets(client.read()) == {1: ErrorCode.CANCEL}
    assert client.conn.buffered == 0 and client.conn.is_open(3)


def test_incomplete_request_is_reset_after_the_body_timeout_and_the_connection_goes_on():
    client = opened()
    client.feed(partial(client, 1, 1000))
    client.conn.expire(0.0, 2.0)
    client.feed(client.data(1, b"y" * 10, end=False))  # progress does not restart the wait
    assert client.conn.expire(1.9, 2.0) == 0
    assert client.conn.expire(2.0, 2.0) == 1
    assert "requests incomplete after 2 s" in client.conn.notices[-1]
    client.feed(client.call(3, b"ok"))
    assert [e.stream_id for e in client.events] == [3]


def test_header_block_cache_is_bounded_in_entries_and_bytes():
    client = opened()
    decoder = client.conn._decoder
    for i in range(200):  # distinct blocks, literals without indexing: each cacheable
        block = literal(2, b"POST") + b"\x86" + literal(4, DISPATCH) + literal(1, b"h")
        block += literal(31, b"application/grpc") + literal(b"x-pad", b"%05d" % i + b"p" * 2000)
        client.feed(f.frame(FrameType.HEADERS, f.END_HEADERS | f.END_STREAM, 2 * i + 1, block))
        assert len(decoder._cache) <= CACHE_ENTRIES and decoder.cache_bytes <= CACHE_BYTES
    assert 0 < len(decoder._cache) < 64 and not client.conn.closed


def test_a_connection_is_freed_without_the_cyclic_gc(no_gc):
    client = opened()
    client.feed(b"".join(partial(client, sid, 150 * KIB) for sid in (1, 3, 5)))
    client.feed(client.call(7, b"q"))
    client.conn.respond(7, b"a" * 1000)
    client.read()
    conn = client.conn
    del client.conn
    # Only ``conn`` and getrefcount's argument refer to it: no cycle through it, so
    # reference counting alone frees it with its streams' bodies. (Not a weak reference:
    # the class compiled by mypyc, scripts/compile, takes none.)
    assert sys.getrefcount(conn) == 2
