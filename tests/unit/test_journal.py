"""The reply journal (wire/journal.py): what the front reads of a worker's unwritten bytes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tykworker.wire.journal import JournalReader, JournalWriter, journal_path


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[JournalWriter, JournalReader]]:
    path = journal_path(tmp_path, 1234)
    writer = JournalWriter(path, capacity=64)
    reader = JournalReader(path)
    yield writer, reader
    writer.close()
    reader.close()


def test_tail_is_what_follows_the_bytes_read(pair: tuple[JournalWriter, JournalReader]) -> None:
    writer, reader = pair
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


def test_the_file_is_the_workers_own(tmp_path: Path) -> None:
    path = journal_path(tmp_path, 7)
    writer = JournalWriter(path)
    try:
        assert path.name == "journal.7"
        assert path.stat().st_mode & 0o777 == 0o600
        with pytest.raises(FileExistsError):  # never another process's file
            JournalWriter(path)
    finally:
        writer.close()


def test_a_file_too_short_is_no_journal(tmp_path: Path) -> None:
    path = tmp_path / "journal.9"
    path.write_bytes(b"short")
    with pytest.raises(ValueError, match="not a journal"):
        JournalReader(path)
