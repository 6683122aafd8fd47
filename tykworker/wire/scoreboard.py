"""Shared-memory scoreboard: what every process is doing, readable by ``tykworker status``.

A file ``<runtime_dir>/scoreboard`` mapped with ``mmap`` by the supervisor (creator) and
the front, read-only by the status command; each worker maps only the page of its own slot
(``Scoreboard.open_slot``). Layout: the header record in the first page, then
``MAX_SLOTS`` worker slots, one per page (the unit a mapping can be limited to), so plugin
code, which runs in workers, can write nothing of the scoreboard but its own worker's slot:
not the header (health, counters, pids), not another worker's slot.

Single-writer rule (so no locks are needed):
* header "supervisor" fields (pid, generation, target, restarts, degraded, started_at,
  reloads, reload failures, import failures):
  written only by the supervisor;
* header "front" fields (queue depth, call/timeout/crash/overload counters, ``errors`` =
  plugin errors the workers reported): written only by the front;
* slot *i*: cleared and assigned by the supervisor before it forks the worker that owns it,
  then written only by that worker until it exits; the supervisor clears it after reaping.
Readers may see a record mid-update; every slot carries a sequence number that the writer
makes odd while writing, so readers retry (seqlock).
"""

from __future__ import annotations

import enum
import mmap
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

MAGIC: Final = b"TWSB0002"
MAX_SLOTS: Final = 256
# magic, sup pid, front pid, generation, target workers, restarts, degraded, started_at,
# queue depth, calls, timeouts, crashes, overloads, errors, reloads, reload failures,
# import failures (appended: older readers read the prefix)
_HEADER: Final = struct.Struct("<8sIIIIQBdIQQQQQIIQ")
HEADER_SIZE: Final = 128
_HEADER_NAMES: Final = [
    "supervisor_pid",
    "front_pid",
    "generation",
    "target_workers",
    "restarts",
    "degraded",
    "started_at",
    "queue_depth",
    "calls",
    "timeouts",
    "crashes",
    "overloads",
    "errors",
    "reloads",
    "reload_failures",
    "import_failures",
]


def _field_offsets(fmt: str, names: list[str]) -> dict[str, tuple[str, int]]:
    out, offset = {}, 0
    for code, name in zip(fmt, ["magic", *names], strict=True):
        size = struct.calcsize("<" + ("8s" if code == "8" else code))
        if name != "magic":
            out[name] = ("<" + code, offset)
        offset += size
    return out


_HEADER_FIELDS: Final = _field_offsets("8IIIIQBdIQQQQQIIQ", _HEADER_NAMES)
# seq, pid, generation, state, call_id, started_at, calls, rss, hook name (48 bytes),
# calls in flight (appended)
_SLOT: Final = struct.Struct("<IIIBQdQQ48sI")
_SEQ: Final = struct.Struct("<I")  # a slot's first field, its seqlock
SLOT_SIZE: Final = 128
PAGE: Final = mmap.ALLOCATIONGRANULARITY  # mmap offsets are multiples of it
FILE_SIZE: Final = PAGE * (1 + MAX_SLOTS)  # sparse: only pages in use take memory


def slot_offset(index: int) -> int:
    """Where slot ``index`` starts in the file: its own page."""
    return PAGE * (1 + index)


class SlotState(enum.IntEnum):
    FREE = 0
    STARTING = 1  # forked, importing plugins
    IDLE = 2
    BUSY = 3
    DRAINING = 4  # finishing its last call before exit


@dataclass(frozen=True, slots=True)
class SlotView:
    index: int
    pid: int
    generation: int
    state: SlotState
    call_id: int
    started_at: float
    calls: int
    rss: int
    hook: str
    #: Calls the worker runs now: 0 or 1 for sync hooks, up to ``async_concurrency`` more
    #: for async ones (then ``hook``/``started_at`` are the oldest's).
    in_flight: int = 0


@dataclass(frozen=True, slots=True)
class HeaderView:
    supervisor_pid: int
    front_pid: int
    generation: int
    target_workers: int
    restarts: int
    degraded: bool
    started_at: float
    queue_depth: int
    calls: int
    timeouts: int
    crashes: int
    overloads: int
    errors: int
    reloads: int
    reload_failures: int
    #: Workers that exited because their plugins failed to import (a failed reload, or a
    #: replacement started after the code on disk broke); not in ``restarts``.
    import_failures: int


class Scoreboard:
    """A mapping of the scoreboard file. ``create`` truncates; ``open`` attaches."""

    def __init__(self, path: Path, mm: mmap.mmap, origin: int = 0) -> None:
        self.path = path
        self._mm = mm
        self._origin = origin  # the file offset where ``mm`` starts (0: the whole file)

    @classmethod
    def create(cls, path: Path) -> Scoreboard:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            os.ftruncate(fd, FILE_SIZE)
            mm = mmap.mmap(fd, FILE_SIZE)
        finally:
            os.close(fd)
        board = cls(path, mm)
        board.write_header(supervisor_pid=os.getpid(), started_at=time.time())
        return board

    @classmethod
    def open(cls, path: Path, writable: bool = True) -> Scoreboard:
        fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        try:
            access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
            mm = mmap.mmap(fd, FILE_SIZE, access=access)
        finally:
            os.close(fd)
        if mm[:8] != MAGIC and mm[:8] != b"\0" * 8:
            mm.close()
            raise ValueError(f"{path} is not a tykworker scoreboard")
        return cls(path, mm)

    @classmethod
    def open_slot(cls, path: Path, index: int) -> Scoreboard:
        """Map only the page of slot ``index`` (what a worker may write): the header and
        every other slot are out of reach. The descriptor is closed before this returns."""
        fd = os.open(path, os.O_RDWR)
        try:
            mm = mmap.mmap(fd, PAGE, offset=slot_offset(index))
        finally:
            os.close(fd)
        return cls(path, mm, origin=slot_offset(index))

    def close(self) -> None:
        self._mm.close()

    # --- header ---------------------------------------------------------------------
    def header(self) -> HeaderView:
        self._require_header()
        values = list(_HEADER.unpack_from(self._mm, 0)[1:])
        values[5] = bool(values[5])
        return HeaderView(*values)

    def write_header(self, **fields: int | float | bool) -> None:
        """Update named header fields in place, each alone (the caller respects the
        single-writer rule; fields owned by other processes are never rewritten)."""
        self._require_header()
        self._mm[:8] = MAGIC
        for name, value in fields.items():
            fmt, offset = _HEADER_FIELDS[name]
            struct.pack_into(fmt, self._mm, offset, value)

    # --- slots ----------------------------------------------------------------------
    def free_index(self, taken: set[int]) -> int:
        for index in range(MAX_SLOTS):
            if index not in taken:
                return index
        raise RuntimeError("scoreboard full")

    def write_slot(
        self,
        index: int,
        *,
        pid: int,
        generation: int,
        state: SlotState,
        call_id: int = 0,
        started_at: float = 0.0,
        calls: int = 0,
        rss: int = 0,
        hook: str = "",
        in_flight: int = 0,
    ) -> None:
        offset = self._local(index)
        # even, and past a write another process left half done (an odd seq)
        seq = ((_SEQ.unpack_from(self._mm, offset)[0] + 1) | 1) - 1
        _write_record(
            self._mm, offset, seq, pid, generation, state, call_id, started_at, calls, rss,
            slot_name(hook), in_flight,
        )  # fmt: skip

    def clear_slot(self, index: int) -> None:
        self.write_slot(index, pid=0, generation=0, state=SlotState.FREE)

    def slot(self, index: int) -> SlotView:
        offset = self._local(index)
        for _ in range(100):
            values = _SLOT.unpack_from(self._mm, offset)
            if values[0] & 1:
                continue
            if struct.unpack_from("<I", self._mm, offset)[0] == values[0]:
                break
        _, pid, gen, state, call_id, started, calls, rss, hook, in_flight = values
        return SlotView(
            index,
            pid,
            gen,
            SlotState(state),
            call_id,
            started,
            calls,
            rss,
            hook.rstrip(b"\0").decode("utf-8", "replace"),
            in_flight,
        )

    def slots(self) -> list[SlotView]:
        """Every non-free slot."""
        views = (self.slot(i) for i in range(MAX_SLOTS))
        return [v for v in views if v.state != SlotState.FREE]

    def _local(self, index: int) -> int:
        """Where slot ``index`` is in this mapping (ValueError if it is not mapped)."""
        offset = slot_offset(index) - self._origin
        self._require(offset)
        return offset

    def _require_header(self) -> None:
        if self._origin:  # a worker's mapping of its own slot
            raise ValueError(f"{self.path}: the header is not mapped here")

    def _require(self, offset: int) -> None:
        if not 0 <= offset < len(self._mm):
            raise ValueError(f"{self.path}: offset {offset + self._origin} is not mapped here")


def slot_name(hook: str) -> bytes:
    """A hook name as a slot holds it: UTF-8, cut at 48 bytes."""
    return hook.encode("utf-8", "replace")[:48]


def _write_record(
    mm: mmap.mmap,
    offset: int,
    seq: int,
    pid: int,
    generation: int,
    state: int,
    call_id: int,
    started_at: float,
    calls: int,
    rss: int,
    hook: bytes,
    in_flight: int,
) -> int:
    """Write one slot record under its seqlock: the sequence number ``seq + 1`` (odd:
    mid-write), the record, then ``seq + 2`` (even), which is returned. ``seq`` is even."""
    writing = (seq + 1) & 0xFFFFFFFF
    _SEQ.pack_into(mm, offset, writing)
    _SLOT.pack_into(
        mm, offset, writing, pid, generation, state, call_id, started_at, calls, rss, hook,
        in_flight,
    )  # fmt: skip
    done = (writing + 1) & 0xFFFFFFFF
    _SEQ.pack_into(mm, offset, done)
    return done


class SlotWriter:
    """A worker's writes to its own slot: two per call (busy before the hook, idle after),
    so the per-call form of ``Scoreboard.write_slot``: the slot's place, pid and generation
    fixed when it is made, the fields positional, the hook name already ``slot_name``'d.

    Invariant: made by the slot's one writer (the worker that owns it, single-writer
    rule), which keeps the sequence number here instead of reading it back."""

    __slots__ = ("_generation", "_mm", "_offset", "_pid", "_seq")

    def __init__(self, board: Scoreboard, index: int, pid: int, generation: int) -> None:
        self._mm = board._mm
        self._offset = board._local(index)
        self._pid = pid
        self._generation = generation
        self._seq = _SEQ.unpack_from(board._mm, self._offset)[0] & 0xFFFFFFFE

    def write(
        self,
        state: int,
        call_id: int,
        started_at: float,
        calls: int,
        rss: int,
        hook: bytes,
        in_flight: int,
    ) -> None:
        self._seq = _write_record(
            self._mm, self._offset, self._seq, self._pid, self._generation, state, call_id,
            started_at, calls, rss, hook, in_flight,
        )  # fmt: skip
