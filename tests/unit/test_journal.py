"""The reply journal (wire/journal.py): what the front reads of a worker's unwritten bytes,
and the first frame that hands it over."""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator

import pytest

from tykworker.wire import journal
from tykworker.wire.frames import FrameKind, encode_frame
from tykworker.wire.journal import FIRST_FRAME, JournalReader, JournalWriter
from tykworker.worker.loop import receive_journal


@pytest.fixture
def pair() -> Iterator[tuple[JournalWriter, JournalReader]]:
    fd = journal.create(capacity=64)
    writer = JournalWriter(fd)
    reader = JournalReader(fd)
    os.close(fd)  # both mapped: the memory lives on
    yield writer, reader
    writer.close()
    reader.close()


def test_tail_is_what_follows_the_bytes_read(pair: tuple[JournalWriter, JournalReader]) -> None:
    writer, reader = pair
    assert reader.tail(0) == b""  # a new journal: nothing committed
    writer.reset(100)  # 100 bytes of the stream written to the socket
    assert writer.append((b"head", b"reply"))
    assert writer.append((b"next",))
    assert reader.tail(100) == b"headreplynext"
    assert reader.tail(104) == b"replynext"  # the front read part of it already
    assert reader.tail(113) == b""  # all of it
    assert reader.tail(99) == b""  # a gap (bytes still in the socket): nothing


def test_reset_empties_it_and_moves_its_start(pair: tuple[JournalWriter, JournalReader]) -> None:
    writer, reader = pair
    writer.reset(10)
    writer.append((b"abc",))
    writer.reset(13)  # written to the socket
    assert reader.tail(10) == b""  # those bytes come through the socket
    assert reader.tail(13) == b""
    writer.append((b"de",))
    assert reader.tail(13) == b"de"


def test_committed_is_the_bytes_held_in_place(pair: tuple[JournalWriter, JournalReader]) -> None:
    """What the worker writes to the socket: the committed bytes, read from the journal's
    memory; a released view leaves the journal free to change and to close."""
    writer, _reader = pair
    with writer.committed() as view:
        assert view.nbytes == 0
    writer.append((b"head", b"reply"))
    with writer.committed() as view:
        assert bytes(view) == b"headreply"
    writer.reset(9)
    writer.append((b"next",))
    with writer.committed() as view:
        assert bytes(view) == b"next"
    writer.close()  # no view left exported (the fixture's second close does nothing)


def test_a_group_that_does_not_fit_is_refused_whole(
    pair: tuple[JournalWriter, JournalReader],
) -> None:
    writer, reader = pair
    writer.reset(0)
    assert writer.append((b"x" * 40,))
    assert not writer.append((b"y" * 10, b"z" * 20))  # 70 > 64: nothing of it copied
    assert reader.tail(0) == b"x" * 40
    assert writer.append((b"y" * 24,))  # exactly full
    assert reader.tail(40) == b"y" * 24


def test_its_size_is_sealed() -> None:
    """A plugin that found the memory cannot shrink it under the front's mapping."""
    fd = journal.create(capacity=64)
    try:
        with pytest.raises(PermissionError):
            os.ftruncate(fd, 0)
        with pytest.raises(PermissionError):
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, 0)  # and the seals cannot change
    finally:
        os.close(fd)


def test_the_first_frame_carries_the_journal() -> None:
    front, worker = socket.socketpair()
    with front, worker:
        fd = journal.create(capacity=64)
        reader = JournalReader(fd)
        socket.send_fds(front, [FIRST_FRAME], [fd])  # as the front does
        os.close(fd)
        got = receive_journal(worker)
        assert got is not None
        writer = JournalWriter(got)
        os.close(got)
        writer.append((b"frame",))
        assert reader.tail(0) == b"frame"  # the same memory
        writer.close()
        reader.close()
        front.sendall(FIRST_FRAME)  # the front could not make one
        assert receive_journal(worker) is None


def test_a_first_frame_that_is_not_a_journal_is_refused() -> None:
    front, worker = socket.socketpair()
    with front, worker:
        front.sendall(encode_frame(FrameKind.DISPATCH, 1))
        with pytest.raises(ValueError, match="not a JOURNAL frame"):
            receive_journal(worker)
        front.close()
        with pytest.raises(ValueError, match="closed in its first frame"):
            receive_journal(worker)


def test_a_descriptor_too_short_is_no_journal() -> None:
    fd = os.memfd_create("short")
    try:
        os.write(fd, b"short")
        with pytest.raises(ValueError, match="not a journal"):
            JournalReader(fd)
    finally:
        os.close(fd)
