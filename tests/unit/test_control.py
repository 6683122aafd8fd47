"""Typed control messages (wire/control.py) and the supervisor's channel readers
(supervisor/channels.py) over real SOCK_SEQPACKET socketpairs: any bytes, any msgpack, any
field types raise only ProtocolError or are dropped; one sender cannot disturb another."""

from __future__ import annotations

import contextlib
import selectors
import socket
from collections.abc import Iterator

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tykworker.errors import ProtocolError
from tykworker.supervisor.channels import Channels, Sender, open_pair, refusal
from tykworker.wire import control
from tykworker.wire.frames import FrameKind, encode_frame, encode_header

pids = st.integers(1, 2**31 - 1)
names = st.text(max_size=20)
numbers = st.floats(0, 1e6, allow_nan=False)
messages = st.one_of(
    st.builds(control.Hello, pids, st.integers(1, 2**40), st.integers(0, 1000)),
    st.builds(control.WorkerReady, pids, st.integers(1, 2**40)),
    st.builds(control.FrontReady, pids),
    st.builds(control.Stuck, pids, pids, st.integers(0, 2**64 - 1), names, numbers),
    st.builds(control.Failed, names),
    st.builds(control.Handler, names),
    st.builds(control.Generation, st.integers(1, 2**40)),
    st.builds(
        control.LiveSettings,
        st.floats(0.001, 1e4),
        st.dictionaries(names, st.floats(0.001, 1e4), max_size=3),
        st.lists(names, max_size=3).map(tuple),
        st.integers(0, 10000),
    ),
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(max_size=8),
    st.binary(max_size=8),
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@given(messages)
def test_round_trip(message: control.Message) -> None:
    assert control.decode(control.encode(message)) == message
    assert control.decode_frame(control.encode_frame_of(message)) == message


@given(st.binary(max_size=200))
def test_random_bytes_raise_only_protocol_error(data: bytes) -> None:
    for decode in (control.decode, control.decode_frame):
        with contextlib.suppress(ProtocolError):
            decode(data)


@given(values)
def test_random_msgpack_raises_only_protocol_error(value: object) -> None:
    with contextlib.suppress(ProtocolError):
        control.decode(msgpack.packb(value))


@given(messages, st.data())
def test_valid_op_with_wrong_or_missing_fields(
    message: control.Message, data: st.DataObject
) -> None:
    """Every field replaced by a value of another type, or dropped: ProtocolError, or a
    message whose fields all have their declared types."""
    body = msgpack.unpackb(control.encode(message))
    field = data.draw(st.sampled_from([k for k in body if k != "op"]))
    if data.draw(st.booleans()):
        del body[field]
    else:
        body[field] = data.draw(values)
    try:
        decoded = control.decode(msgpack.packb(body))
    except ProtocolError:
        return
    assert type(decoded) is type(message)
    assert type(getattr(decoded, field)) is type(getattr(message, field)) or isinstance(
        getattr(decoded, field), dict
    )


@pytest.mark.parametrize(
    "body",
    [
        {"op": "stuck"},
        {"op": "stuck", "pid": 5, "worker": None, "call_id": 1, "hook": "", "elapsed": 0.0},
        {"op": "ready", "pid": [1]},
        {"op": "ready", "pid": True, "generation": 1},
        {"op": "ready", "pid": 0, "generation": 1},
        {"op": "config", "hook_timeout": float("nan"), "hook_timeout_for": {},
         "fail_open": [], "queue_size": 1},
        {"op": 7},
        [1, 2],
    ],
)  # fmt: skip
def test_frames_from_the_issue_are_refused(body: object) -> None:
    with pytest.raises(ProtocolError):
        control.decode(msgpack.packb(body))


def test_report_never_raises() -> None:
    mine, theirs = open_pair()
    fd = theirs.detach()
    assert control.report(fd, control.FrontReady(1))
    socket.close(fd)
    assert not control.report(fd, control.FrontReady(1))  # EBADF
    mine.close()


# --- the supervisor's channel readers -------------------------------------------------
@pytest.fixture
def channels() -> Iterator[Channels]:
    selector = selectors.DefaultSelector()
    chans = Channels(selector)
    yield chans
    for pid in list(chans.senders):
        chans.close(pid)
    selector.close()


_ENDS: list[socket.socket] = []  # the children's ends, closed after each test


@pytest.fixture(autouse=True)
def _close_ends() -> Iterator[None]:
    yield
    while _ENDS:
        _ENDS.pop().close()


def _child(chans: Channels, pid: int, is_front: bool, generation: int = 0) -> socket.socket:
    mine, theirs = open_pair()
    chans.attach(Sender(mine, is_front, generation), pid)
    theirs.setblocking(False)
    _ENDS.append(theirs)
    return theirs


def _live(pid: int) -> bool:
    return pid in (20, 21)


def test_refusals() -> None:
    front, worker = Sender(None, True, 0, 10), Sender(None, False, 3, 20)  # type: ignore[arg-type]
    assert refusal(worker, control.WorkerReady(20, 3), _live) == ""
    assert refusal(worker, control.WorkerReady(21, 3), _live)  # a sibling's pid
    assert refusal(worker, control.WorkerReady(20, 4), _live)  # another generation
    assert refusal(worker, control.Stuck(20, 21, 1, "h", 1.0), _live)  # only the front
    assert refusal(worker, control.FrontReady(20), _live)
    assert refusal(front, control.Stuck(10, 21, 1, "h", 1.0), _live) == ""
    assert refusal(front, control.Stuck(10, 10, 1, "h", 1.0), _live)  # not a worker
    assert refusal(front, control.Stuck(10, 99, 1, "h", 1.0), _live)  # not alive
    assert refusal(front, control.WorkerReady(10, 1), _live)
    assert refusal(front, control.LiveSettings(1.0, {}, (), 1), _live)


def test_partial_frame_does_not_swallow_the_next_senders_message(channels: Channels) -> None:
    """The issue's case: a header announcing 4,000 bytes that never come."""
    worker = _child(channels, 20, False, 1)
    front = _child(channels, 10, True)
    worker.send(encode_header(FrameKind.CONTROL, 0, 4000))
    front.send(control.encode_frame_of(control.Stuck(10, 21, 7, "h", 5.0)))
    assert channels.receive(channels.senders[20], _live) == []
    got = channels.receive(channels.senders[10], _live)
    assert got == [control.Stuck(10, 21, 7, "h", 5.0)]


def test_front_bad_message_is_dropped_not_closed(channels: Channels) -> None:
    front = _child(channels, 10, True)
    front.send(b"garbage")
    front.send(control.encode_frame_of(control.WorkerReady(10, 1)))
    front.send(control.encode_frame_of(control.Stuck(10, 99, 7, "h", 5.0)))  # not alive
    front.send(control.encode_frame_of(control.FrontReady(10)))
    assert channels.receive(channels.senders[10], _live) == [control.FrontReady(10)]
    assert 10 in channels.senders


def test_flood_is_read_in_batches(channels: Channels) -> None:
    worker = _child(channels, 20, False, 1)
    ready = control.encode_frame_of(control.WorkerReady(21, 1))  # a sibling's: refused
    with pytest.raises(BlockingIOError):
        while True:
            worker.send(ready)
    assert channels.receive(channels.senders[20], _live) == []
    assert channels.senders[20].bad == 64  # one batch, then the loop serves the others


def test_a_workers_channel_closes_once_ready(channels: Channels) -> None:
    worker = _child(channels, 20, False, 1)
    worker.send(control.encode_frame_of(control.WorkerReady(20, 1)))
    worker.send(control.encode_frame_of(control.WorkerReady(20, 1)))
    assert channels.receive(channels.senders[20], _live) == [control.WorkerReady(20, 1)]
    assert 20 not in channels.senders


def test_eof_closes_the_channel(channels: Channels) -> None:
    _child(channels, 20, False, 1).shutdown(socket.SHUT_WR)
    assert channels.receive(channels.senders[20], _live) == []
    assert channels.senders == {}


@settings(max_examples=200)
@given(st.lists(st.one_of(st.binary(max_size=64), messages.map(control.encode_frame_of),
                          st.builds(encode_frame, st.sampled_from(FrameKind), st.integers(0, 9),
                                    st.binary(max_size=32))), max_size=8))  # fmt: skip
def test_any_datagrams_from_a_worker(datagrams: list[bytes]) -> None:
    """Whatever a worker (plugin code) sends: no exception, only its own valid ready is
    accepted, and the front's channel next to it still works."""
    selector = selectors.DefaultSelector()
    chans = Channels(selector)
    try:
        worker, front = _child(chans, 20, False, 1), _child(chans, 10, True)
        for datagram in datagrams:
            worker.send(datagram)
        worker.shutdown(socket.SHUT_WR)
        sender = chans.senders[20]
        accepted = []
        while 20 in chans.senders:
            accepted += chans.receive(sender, _live)
        assert accepted in ([], [control.WorkerReady(20, 1)])
        front.send(control.encode_frame_of(control.FrontReady(10)))
        assert chans.receive(chans.senders[10], _live) == [control.FrontReady(10)]
    finally:
        for pid in list(chans.senders):
            chans.close(pid)
        selector.close()
        while _ENDS:
            _ENDS.pop().close()
