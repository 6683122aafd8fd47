"""Scoreboard layout: a worker's mapping reaches its own slot only."""

from __future__ import annotations

from pathlib import Path

import pytest

from tykworker.wire.scoreboard import Scoreboard, SlotState


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
