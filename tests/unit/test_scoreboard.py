"""Scoreboard layout: a worker's mapping reaches its own slot only."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from tykworker.wire.scoreboard import Scoreboard, SlotState, SlotWriter, slot_offset


def test_a_slot_mapping_writes_its_slot_and_nothing_else(tmp_path: Path) -> None:
    board = Scoreboard.create(tmp_path / "scoreboard")
    own = Scoreboard.open_slot(tmp_path / "scoreboard", 3)
    own.write_slot(3, pid=42, generation=2, state=SlotState.BUSY, call_id=7, hook="H")
    seen = board.slot(3)
    assert (seen.pid, seen.generation, seen.state, seen.call_id, seen.hook) == (
        42, 2, SlotState.BUSY, 7, "H"
    )  # fmt: skip
    for other in (2, 4):
        with pytest.raises(ValueError, match="not mapped"):
            own.write_slot(other, pid=1, generation=1, state=SlotState.IDLE)
    with pytest.raises(ValueError, match="header is not mapped"):
        own.write_header(calls=1)
    with pytest.raises(ValueError, match="header is not mapped"):
        own.header()
    own.close()
    board.close()


def test_a_slot_writer_writes_what_readers_see_and_leaves_the_sequence_even(
    tmp_path: Path,
) -> None:
    board = Scoreboard.create(tmp_path / "scoreboard")
    board.write_slot(5, pid=0, generation=0, state=SlotState.FREE)  # seq 2, as cleared
    own = Scoreboard.open_slot(tmp_path / "scoreboard", 5)
    writer = SlotWriter(own, 5, pid=42, generation=3)
    writer.write(SlotState.BUSY, 9, 1.5, 11, 4096, "Ä".encode() * 30, 1)
    seen = board.slot(5)
    assert (seen.pid, seen.generation, seen.state, seen.call_id, seen.calls, seen.rss) == (
        42, 3, SlotState.BUSY, 9, 11, 4096
    )  # fmt: skip
    assert (seen.started_at, seen.in_flight) == (1.5, 1)
    assert seen.hook == "Ä" * 24  # cut at 48 bytes, on a character boundary here
    assert _seq(board, 5) == 4  # odd while writing, even after: 2 -> 3 -> 4
    writer._seq = 0xFFFFFFFE  # the sequence wraps and stays even
    writer.write(SlotState.IDLE, 0, 0.0, 12, 4096, b"", 0)
    assert _seq(board, 5) == 0 and board.slot(5).state == SlotState.IDLE
    own.close()
    board.close()


def _seq(board: Scoreboard, index: int) -> int:
    return int(struct.unpack_from("<I", board._mm, slot_offset(index))[0])
